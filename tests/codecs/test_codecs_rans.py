"""The grouped rANS coder behind the ec{NN}g presets: exact, smaller than zstd where it is used, and
every truncated / corrupted / mismatched part of its message is a CodecError."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import CodecError, EncodedTensor, build_codec, decode_any, rans
from splitinfer.codecs.base import checksum


def _hidden(rows: int = 64, cols: int = 128, seed: int = 0) -> torch.Tensor:
    """Hidden-state-like: channels with very different spreads, a per-channel offset, drifting tokens."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-1, 1, cols)[torch.randperm(cols, generator=g)]
    noise = torch.randn(rows, cols, generator=g)
    drift = torch.cumsum(torch.randn(rows, cols, generator=g), 0) * 0.3
    return (noise + drift) * spread + torch.randn(cols, generator=g) * 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 40), cols=st.integers(1, 200), scale=st.sampled_from([0.0, 0.3, 3.0, 40.0, 500.0]),
       groups=st.integers(1, 51), seed=st.integers(0, 2**31 - 1))
def test_rans_round_trip_is_exact(rows, cols, scale, groups, seed):
    rng = np.random.default_rng(seed)
    q = np.clip(np.rint(rng.laplace(0, scale, (rows, cols)) * rng.uniform(0.1, 1, cols)), -128, 127).astype(np.int8)
    if seed % 3 == 0:
        q[rng.integers(0, rows), rng.integers(0, cols)] = -128  # extremes of int8
        q[rng.integers(0, rows), rng.integers(0, cols)] = 127
    side, tables, stream, info = rans.encode(q, groups)
    assert len(stream) == rans.stream_nbytes(q.size, info[2])
    assert np.array_equal(rans.decode(side, tables, stream, rows, cols, groups, *info), q)


def test_frequencies_are_normalized_with_every_present_symbol_kept():
    counts = np.array([[0, 1, 5, 100000, 3, 0], [1, 1, 1, 1, 1, 1]])
    f = rans.frequencies(rans.quantize_counts(counts))
    assert (f.sum(1) == 2**rans.SCALE_BITS).all()
    assert ((f > 0) == (counts > 0)).all()


@pytest.mark.parametrize("name", ["ec37g", "ec38g", "ec40g"])
def test_g_presets_decode_exactly_like_their_zstd_twin_and_are_smaller(name):
    x = _hidden()
    codec = build_codec(name)
    twin = build_codec({**codec.params.as_dict(), "rans_groups": 0})
    enc, enc_twin = codec.encode(x), twin.encode(x)
    assert "rans" in enc.header["meta"]
    assert torch.equal(decode_any(EncodedTensor.from_frames(enc.to_frames())), twin.decode(enc_twin))
    assert enc.nbytes < enc_twin.nbytes


def test_zstd_is_kept_where_it_is_smaller():
    row = _hidden(1, 128)
    x = row.repeat(64, 1)  # identical tokens: zstd's matcher beats any per-symbol coder
    enc = build_codec("ec40g").encode(x)
    assert "rans" not in enc.header["meta"]
    assert torch.allclose(build_codec("ec40g").decode(enc), x, atol=float(x.abs().max()) * 0.5)
    small = build_codec("ec40g").encode(_hidden(8, 64))  # 512 values: below rans.MIN_VALUES
    assert "rans" not in small.header["meta"]


def _resealed(header: dict, buffers: list) -> EncodedTensor:
    header = dict(header)
    header["crc"] = checksum(header, buffers)
    return EncodedTensor(header, buffers)


def _rans_buffers(enc: EncodedTensor) -> dict[str, int]:
    n = len(enc.buffers)
    return {"rans_side": n - 3, "rans_tables": n - 2, "codes": n - 1}


@pytest.mark.parametrize("part", ["rans_side", "rans_tables", "codes"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupted_rans_buffers_raise(part, how):
    codec = build_codec("ec38g")
    enc = codec.encode(_hidden())
    i = _rans_buffers(enc)[part]
    buffers = [bytes(b) for b in enc.buffers]
    if how == "truncate":
        buffers[i] = buffers[i][:-2]
    else:
        b = bytearray(buffers[i])
        b[len(b) // 2] ^= 0x5A
        buffers[i] = bytes(b)
    with pytest.raises(CodecError, match="checksum"):
        codec.decode(EncodedTensor(enc.header, buffers))
    with pytest.raises(CodecError):  # the structural checks catch it even with a recomputed checksum
        codec.decode(_resealed(enc.header, buffers))


@pytest.mark.parametrize("info", [[5, 4, 10], [-300, 3, 10], [-3, 3, -1], [-3, 3, 10**9], [-3, 3], "x",
                                  [-3.0, 3, 10], [True, 3, 10]])
def test_impossible_rans_meta_raises(info):
    codec = build_codec("ec38g")
    enc = codec.encode(_hidden())
    header = {**enc.header, "meta": {**enc.header["meta"], "rans": info}}
    with pytest.raises(CodecError, match="meta"):
        codec.decode(_resealed(header, enc.buffers))


def test_mismatched_rans_meta_raises():
    codec = build_codec("ec38g")
    enc = codec.encode(_hidden())
    lo, hi, n_words = enc.header["meta"]["rans"]
    for info in ([lo - 1, hi, n_words], [lo, hi, n_words + 1], [lo, hi, n_words - 1]):
        header = {**enc.header, "meta": {**enc.header["meta"], "rans": info}}
        with pytest.raises(CodecError):
            codec.decode(_resealed(header, enc.buffers))


def test_rans_meta_on_a_codec_without_rans_raises():
    ec38g = build_codec("ec38g")
    enc = ec38g.encode(_hidden())
    plain = build_codec("ec40", step=0.38)
    header = {**enc.header, "codec": "ec40", "params": {"step": 0.38}}
    with pytest.raises(CodecError, match="rans"):
        plain.decode(_resealed(header, enc.buffers))
    with pytest.raises(CodecError, match="rans"):
        decode_any(_resealed(header, enc.buffers))


def test_rans_groups_needs_step():
    with pytest.raises(CodecError, match="rans_groups"):
        build_codec("int4_b32", rans_groups=8)
    with pytest.raises(CodecError, match="rans_groups"):
        build_codec("ec40g", rans_groups=99)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_tampered_rans_message_decodes_or_raises_codec_error(data):
    codec = build_codec("ec37g")
    enc = codec.encode(_hidden(40, 128, seed=3))
    buffers = [bytearray(b) for b in enc.buffers]
    i = data.draw(st.integers(0, len(buffers) - 1))
    if buffers[i]:
        for _ in range(data.draw(st.integers(1, 4))):
            j = data.draw(st.integers(0, len(buffers[i]) - 1))
            buffers[i][j] = data.draw(st.integers(0, 255))
    try:
        y = codec.decode(_resealed(enc.header, [bytes(b) for b in buffers]))
    except CodecError:
        return
    assert y.shape == (40, 128)  # a tampered fp16 mean or sink row may decode to anything, but no crash


def _unpredict_by_definition(res: np.ndarray, ks: np.ndarray) -> np.ndarray | None:
    """q[t] = r[t] + round(k/4 x q[t-1]) in Python integers, row by row; None if a code leaves int8."""
    q, last = np.zeros(res.shape, dtype=np.int64), [0] * res.shape[1]
    for t in range(res.shape[0]):
        for c in range(res.shape[1]):
            last[c] = int(res[t, c]) + ((int(ks[c]) * last[c] + 2) >> 2)
            if not -128 <= last[c] <= 127:
                return None
        q[t] = last
    return q


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 30), cols=st.integers(1, 40), span=st.sampled_from([0, 3, 40, 255]),
       seed=st.integers(0, 2**31 - 1))
def test_unpredict_is_the_sequential_definition_in_any_column_order(rows, cols, span, seed):
    """The table-driven unpredict (one lookup and one add per row, every k at once) decodes what the
    definition does, raises exactly where a code leaves int8, and does not depend on the column order."""
    rng = np.random.default_rng(seed)
    ks = rng.integers(0, 5, cols)
    if seed % 2:  # residuals of real codes: every decode stays in int8
        q = rng.integers(-128, 128, (rows, cols))
        prev = np.vstack([np.zeros((1, cols), np.int64), q[:-1]])
        res = q - ((ks * prev + 2) >> 2)
    else:  # any residuals in -span..span: may leave int8 (corrupted data)
        res = rng.integers(-span, span + 1, (rows, cols))
    want = _unpredict_by_definition(res, ks)
    perm = rng.permutation(cols)
    if want is None:
        with pytest.raises(CodecError, match="outside int8"):
            rans.unpredict(res, ks)
        return
    got = rans.unpredict(res.copy(), ks)
    assert got.dtype == np.int8 and np.array_equal(got, want)
    assert np.array_equal(rans.unpredict(res[:, perm].copy(), ks[perm]), want[:, perm])
