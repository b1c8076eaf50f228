"""The hostile messages, as hypothesis strategies: a plan is a small tuple saying what to send (see
`hostile`'s docstring), plus the value helpers that turn a plan's numbers into frames.
"""

from __future__ import annotations

import math
import struct

from hypothesis import strategies as st

from splitinfer.transport import protocol as p

NAN, INF = float("nan"), float("inf")

# -- strategies ------------------------------------------------------------------------------------

_small = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=12),
                   st.binary(max_size=12))
WRONG = st.one_of(
    _small,
    st.sampled_from([-1, 0, 1, 2**31, 2**62, 2**62 + 1, 2**63 - 1, 2**64 - 1, -(2**63), NAN, INF, -INF, 1e308,
                     -0.0, True, False, "", "1", "none", "x" * 300]),
    st.lists(_small, max_size=4),
    st.dictionaries(st.text(max_size=8), _small, max_size=4),
)
ANY_VALUE = st.recursive(_small, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c,
                                                                                     max_size=4), max_leaves=10)
ALL_KEYS = sorted({*p.OPEN_KEYS, *p.STEP_KEYS, *p.SAMPLING_KEYS, "ok", "code", "msg", "tok"})
KEY = st.one_of(st.sampled_from(ALL_KEYS), st.text(max_size=10))
MUTATION = st.one_of(st.tuples(st.just("set"), KEY, WRONG), st.tuples(st.just("del"), st.sampled_from(ALL_KEYS)),
                     st.tuples(st.just("add"), st.text(min_size=1, max_size=10), WRONG))
HEADER_KEYS = ["codec", "v", "params", "dtype", "shape", "meta"]
HEADER_MUTATION = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(HEADER_KEYS), WRONG),
    st.tuples(st.just("del"), st.sampled_from(HEADER_KEYS)),
    st.tuples(st.just("add"), st.text(min_size=1, max_size=10), WRONG),
    st.tuples(st.just("dtype"), st.sampled_from(["float16", "bfloat16", "float64", "int8", "int32", "uint8", "bool",
                                                 "complex64", ""])),
    st.tuples(st.just("shape"), st.lists(st.one_of(st.integers(-3, 5), st.sampled_from([2**31, 2**63 - 1, 10**9]),
                                                   st.floats(0, 4), st.text(max_size=3)), max_size=5)),
    st.tuples(st.just("hidden_delta"), st.sampled_from([-64, -1, 1, 64])),
    st.tuples(st.just("codec_name"), st.sampled_from(["fp16", "int8", "NONE", "none ", "../none", "", "pickle"])),
)


# Real codecs (the client's default is int8): their encodings, corrupted and then re-signed with a valid
# CRC, as an attacker would, so the decoders' parsing is reached, not only the checksum.
REAL_CODECS = ["int8", "int4_b32_outlier_lz4", "int8_b32_outlier_zstd", "int3_b32_outlier_rot_log8_tc",
               "petals_blockwise8", "ec30", "top10_fp16", "int4_token_lz4", "fp16_lz4", "top25_int8_token"]
BUFFER_OP = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 7), st.integers(0, 2**16), st.integers(0, 7)),
    st.tuples(st.just("trunc"), st.integers(0, 7), st.integers(1, 64)),
    st.tuples(st.just("extend"), st.integers(0, 7), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("drop"), st.integers(0, 7)),
    st.tuples(st.just("dup"), st.integers(0, 7)),
    st.tuples(st.just("fill"), st.integers(0, 7), st.sampled_from([0x00, 0xFF, 0x7F, 0x80])),
    st.tuples(st.just("bomb"), st.integers(0, 7), st.sampled_from(["lz4", "zstd"])),
)
CODED_HEADER_OP = st.one_of(
    st.tuples(st.just("meta"), st.integers(0, 7), WRONG),
    st.tuples(st.just("meta_del"), st.integers(0, 7)),
    st.tuples(st.just("meta_add"), st.text(min_size=1, max_size=10), WRONG),
    st.tuples(st.just("top"), st.sampled_from([*HEADER_KEYS, "crc"]), WRONG),
    st.tuples(st.just("compressed"), st.lists(st.sampled_from([0, 1, 2, -1, True]), max_size=6)),
)


@st.composite
def plans(draw):
    kind = draw(st.sampled_from(["frames"] * 3 + ["msgpack"] * 3 + ["envelope"] * 6 + ["codec"] * 8
                                + ["coded"] * 6 + ["deep", "deep_json", "many_frames", "too_large", "req",
                                                   "oversize"]))
    if kind == "frames":
        return kind, draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
    if kind == "msgpack":
        value = draw(st.one_of(ANY_VALUE, st.dictionaries(KEY, WRONG, max_size=6)))
        return kind, value, draw(st.lists(st.binary(max_size=40), max_size=2))
    if kind == "envelope":
        op = draw(st.one_of(st.sampled_from(p.OPS), st.text(max_size=12)))
        return kind, op, draw(st.lists(MUTATION, min_size=1, max_size=3))
    if kind == "codec":
        return (kind, draw(st.sampled_from(["next"] * 6 + ["retry", "skip", "zero", "huge"])),
                draw(st.sampled_from(["right"] * 3 + ["wrong"])), draw(st.integers(1, 4)),
                draw(st.sampled_from(["float32"] * 3 + ["float16", "bfloat16"])),
                draw(st.lists(HEADER_MUTATION, max_size=2)),
                draw(st.sampled_from(["exact"] * 6 + ["truncate", "extend", "empty", "extra", "none", "garbage_header",
                                                     "json_array", "header_nan"])),
                draw(st.integers(1, 64)),
                draw(st.sampled_from(["normal"] * 4 + ["nan", "inf", "huge", "subnormal", "zeros", "neg_huge"])))
    if kind == "coded":
        return (kind, draw(st.sampled_from(REAL_CODECS)), draw(st.integers(1, 3)),
                draw(st.sampled_from(["normal"] * 4 + ["nan", "inf", "huge", "zeros"])),
                draw(st.lists(CODED_HEADER_OP, max_size=2)), draw(st.lists(BUFFER_OP, max_size=2)),
                draw(st.sampled_from([True] * 4 + [False])),  # re-sign the CRC
                draw(st.sampled_from(["right"] * 4 + ["wrong"])), draw(st.integers(1, 64)))
    if kind == "deep":
        return kind, draw(st.sampled_from(["v", "op", "rid", "sid", "codec", "sampling", "cuts", "x"])), \
            draw(st.one_of(st.integers(1, 2000), st.integers(990, 1030))), draw(st.sampled_from(["list", "map"]))
    if kind == "deep_json":
        return kind, draw(st.sampled_from(["shape", "params", "codec", "meta", "dtype"])), \
            draw(st.one_of(st.integers(1, 30000), st.integers(980, 1030)))
    if kind == "many_frames":
        return kind, draw(st.integers(p.MAX_FRAMES + 1, p.MAX_FRAMES + 40))
    if kind == "too_large":
        return kind, draw(st.integers(2, 4))
    if kind == "req":
        return kind, draw(st.lists(st.binary(max_size=60), min_size=0, max_size=2))
    return kind, draw(st.integers(1, 4096))  # oversize: bytes over the per-frame cap


def json_value(v):
    """A hostile value as JSON data (bytes become text; NaN/inf stay, json.dumps writes them)."""
    if isinstance(v, bytes):
        return v.decode("latin-1")
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): json_value(x) for k, x in v.items()}
    return v


def float_values(n: int, mode: str, seed: int) -> list[float]:
    special = {"nan": NAN, "inf": INF, "huge": 3.0e38, "neg_huge": -3.0e38, "subnormal": 1e-45, "zeros": 0.0}
    vals = [math.sin(seed * 7.1 + i * 0.37) for i in range(n)]
    if mode in ("huge", "neg_huge", "zeros", "subnormal"):
        return [special[mode]] * n
    if mode in special:
        vals[seed % n] = special[mode]
    return vals


def to_bytes(vals: list[float], dtype: str) -> bytes:
    if dtype == "float32":
        return struct.pack(f"<{len(vals)}f", *vals)
    if dtype == "float16":
        out = []
        for v in vals:
            try:
                out.append(struct.pack("<e", v))
            except OverflowError:
                out.append(struct.pack("<e", math.copysign(INF, v)))
        return b"".join(out)
    # bfloat16: the top two bytes of the float32
    return b"".join(struct.pack("<f", v)[2:] for v in vals)


_BOMBS: dict[str, bytes] = {}


def bomb(method: str) -> bytes:
    if method not in _BOMBS:
        data = b"\0" * 64 * 2**20
        if method == "lz4":
            import lz4.block

            _BOMBS[method] = lz4.block.compress(data, store_size=False)[: 60 * 1024]
        else:
            import zstandard

            _BOMBS[method] = zstandard.ZstdCompressor().compress(data)
    return _BOMBS[method]
