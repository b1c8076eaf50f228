"""Truncated, corrupted or mismatched messages raise CodecError with a clear message, never crash."""

from __future__ import annotations

import json
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import CodecError, EncodedTensor, build_codec, codec_from_header, decode_any
from splitinfer.codecs.base import checksum

NAMES = ["fp32", "fp16", "int8", "int8_token_lz4", "int4_b32_outlier_lz4", "int3_b32_outlier_rot_lz4",
         "int3_b64_outlier_rot_log8_tc", "int4_b32_outlier_unpacked_zstd", "ec40", "top25_int8_token",
         "top10_fp16", "petals_blockwise8"]


def _x() -> torch.Tensor:
    x = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(1))
    x[:, 0] *= 200  # an outlier token
    x[1, 2, 3] = float("nan")
    return x


def _resealed(header: dict, buffers: list) -> EncodedTensor:
    """A tampered message whose checksum was recomputed, so the structural checks must catch it."""
    header = dict(header)
    header["crc"] = checksum(header, buffers)
    return EncodedTensor(header, buffers)


@pytest.fixture(params=NAMES)
def encoded(request):
    codec = build_codec(request.param)
    return codec, codec.encode(_x())


def test_truncated_buffer(encoded):
    codec, enc = encoded
    i = max(range(len(enc.buffers)), key=lambda j: len(enc.buffers[j]))
    cut = [bytes(b) for b in enc.buffers]
    cut[i] = cut[i][:-1]
    with pytest.raises(CodecError, match="checksum|truncated"):
        codec.decode(EncodedTensor(enc.header, cut))
    with pytest.raises(CodecError, match="bytes|buffer|truncated|lz4|zstd"):  # even with a recomputed crc
        codec.decode(_resealed(enc.header, cut))


def test_missing_and_extra_buffers(encoded):
    codec, enc = encoded
    for buffers in (enc.buffers[:-1], [*enc.buffers, b"extra"]):
        with pytest.raises(CodecError):
            codec.decode(EncodedTensor(enc.header, buffers))
        with pytest.raises(CodecError, match="buffer"):
            codec.decode(_resealed(enc.header, buffers))


def test_flipped_bit_anywhere_is_caught(encoded):
    codec, enc = encoded
    for i, buf in enumerate(enc.buffers):
        if not len(buf):
            continue
        bad = bytearray(buf)
        bad[len(bad) // 2] ^= 0x10
        buffers = list(enc.buffers)
        buffers[i] = bytes(bad)
        with pytest.raises(CodecError, match="checksum"):
            codec.decode(EncodedTensor(enc.header, buffers))


@pytest.mark.parametrize("change", [
    {"shape": [2, 24, 80]}, {"shape": [2, 24]}, {"shape": [48, 64]}, {"dtype": "float16"},
    {"meta": {"nonfinite": 5}}, {"v": 2},
])
def test_header_that_does_not_match_its_buffers(encoded, change):
    codec, enc = encoded
    header = {**enc.header, **change}
    with pytest.raises(CodecError, match="checksum|version"):  # as received
        codec.decode(EncodedTensor(header, enc.buffers))
    if change in ({"dtype": "float16"}, {"shape": [48, 64]}):
        return  # a consistent relabelling (same rows x columns): only the checksum can catch it
    with pytest.raises(CodecError):  # with a forged checksum the layout checks still catch it
        codec.decode(_resealed(header, enc.buffers))


@pytest.mark.parametrize("header, message", [
    ({"codec": "nope"}, r"unknown codec 'nope'\. Names: .*fp16"),
    ({"codec": 3}, "no codec name"),
    ({"codec": "int8", "params": {"bits": "4"}}, r"bits='4' is invalid: must be null or an int in 2..8"),
    ({"codec": "int8", "params": {"bits": True}}, "bits=True is invalid"),
    ({"codec": "int8", "params": {"bits": 9}}, "bits=9 is invalid"),
    ({"codec": "int8", "params": {"block": 0}}, "block=0 is invalid"),
    ({"codec": "int8", "params": {"lossless": "gzip"}}, "lossless='gzip' is invalid"),
    ({"codec": "int8", "params": {"evil": 1}}, r"unknown codec params \['evil'\]"),
    ({"codec": "int8", "params": {"bits": 8}}, "not in canonical form"),
    ({"codec": "int8", "params": ["bits"]}, "params must be a dict"),
    ({"codec": "int8", "params": {"bits": 4, "step": 0.3}}, "exclusive"),
    ({"codec": "petals_blockwise8", "params": {"bits": 4}}, "takes no params"),
])
def test_header_params_are_validated(header, message):
    with pytest.raises(CodecError, match=message):
        codec_from_header(header)


@pytest.mark.parametrize("field, value, message", [
    ("shape", "abc", "shape"), ("shape", [-1, 4], "non-negative"), ("shape", [2**20, 2**20], "refusing"),
    ("shape", [1.5], "non-negative ints"), ("dtype", "int64", "dtype 'int64'"), ("meta", [], "meta must be"),
    ("meta", {"evil": 1}, "unknown key"), ("meta", {"nonfinite": "3"}, "must be a int"),
    ("meta", {"compressed": [1, 1]}, "compressed"), ("meta", {"centered": True}, "not possible"),
    ("crc", "x", "crc"),
])
def test_malformed_header_fields(field, value, message):
    codec = build_codec("int8")
    enc = codec.encode(torch.randn(4, 64))
    header = {**enc.header, field: value}
    msg = _resealed(header, enc.buffers) if field != "crc" else EncodedTensor(header, enc.buffers)
    with pytest.raises(CodecError, match=message):
        decode_any(msg)


def test_index_out_of_range_with_a_valid_checksum():
    codec = build_codec("int4_b32_outlier")
    enc = codec.encode(torch.randn(4, 64))
    idx = bytearray(enc.buffers[0])
    idx[0:2] = (1000).to_bytes(2, "little")
    with pytest.raises(CodecError, match="outlier indices fall outside 0..63"):
        codec.decode(_resealed(enc.header, [bytes(idx), *enc.buffers[1:]]))


def test_decoding_with_the_wrong_codec():
    enc = build_codec("int4_b32").encode(torch.randn(4, 64))
    with pytest.raises(CodecError, match="decode_any"):
        build_codec("int8").decode(enc)
    with pytest.raises(CodecError, match="params"):
        build_codec("int4_b32", block=64).decode(enc)


@pytest.mark.parametrize("frames, message", [
    ([], "no frames"), ([b"\xff\xfe"], "UTF-8 JSON"), ([b"[1, 2]"], "JSON object"), ([b"{"], "UTF-8 JSON"),
    ([b" " * 70000], "over the"), ([b"{}", 3], "bytes-like"),
])
def test_bad_frames(frames, message):
    with pytest.raises(CodecError, match=message):
        EncodedTensor.from_frames(frames)


def test_bad_inputs_to_encode():
    codec = build_codec("int8")
    for bad, message in ((torch.arange(4), "int64"), (torch.randn(3, dtype=torch.float64), "float64"),
                         ([1.0, 2.0], "torch.Tensor")):
        with pytest.raises(CodecError, match=message):
            codec.encode(bad)


def test_unknown_codec_name_is_short_and_points_at_the_list():
    with pytest.raises(CodecError, match=r"unknown codec 'int9'\. Did you mean int8\?.*int\{2\.\.8\}_") as e:
        build_codec("int9")
    assert len(str(e.value)) < 600 and "available_codecs()" in str(e.value)
    with pytest.raises(ValueError):  # CodecError is a ValueError
        build_codec({"name": "int8", "bits": 99})


MUTATIONS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(NAMES), frame=st.integers(0, 10), flips=MUTATIONS, trunc=st.integers(-1, 10**6),
       reseal=st.booleans())
def test_random_corruption_never_crashes(name, frame, flips, trunc, reseal):
    """Random byte changes / truncation of any frame: CodecError, or (only when the checksum was forged)
    a tensor of the announced shape and dtype. Never another exception."""
    frames = [bytearray(f) for f in build_codec(name).encode(_x()).to_frames()]
    f = frames[frame % len(frames)]
    for pos, val in flips:
        if len(f):
            f[pos % len(f)] = val
    if trunc >= 0 and len(f):
        del f[trunc % len(f):]
    try:
        enc = EncodedTensor.from_frames([bytes(b) for b in frames])
        if reseal and isinstance(enc.header, dict):
            enc = _resealed(enc.header, enc.buffers)
        y = decode_any(enc)
    except CodecError:
        return
    assert reseal or frames == [bytearray(b) for b in build_codec(name).encode(_x()).to_frames()]
    assert list(y.shape) == enc.header["shape"]


def test_nan_and_inf_are_defined_for_every_kind_of_codec():
    x = torch.randn(3, 20, 40)
    x[0, 0, 0], x[1, 2, 3], x[2, 19, 39] = float("nan"), float("inf"), float("-inf")
    for name in NAMES:
        codec = build_codec(name)
        y = codec.decode(codec.encode(x))
        assert torch.isnan(y[0, 0, 0]) and y[1, 2, 3] == float("inf") and y[2, 19, 39] == float("-inf"), name
        mask = torch.isfinite(x)
        assert torch.isfinite(y[mask]).all(), name


def test_all_nonfinite_and_empty_tensors():
    for name in NAMES:
        codec = build_codec(name)
        x = torch.full((2, 8), float("nan"))
        assert torch.isnan(codec.decode(codec.encode(x))).all()
        for shape in ((0,), (3, 0), (0, 576), ()):
            x = torch.randn(shape)
            y = codec.decode(codec.encode(x))
            assert y.shape == x.shape


def test_header_crc_covers_the_header():
    enc = build_codec("int8").encode(torch.randn(4, 64))
    body = {k: v for k, v in enc.header.items() if k != "crc"}
    crc = zlib.crc32(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    for b in enc.buffers:
        crc = zlib.crc32(b, crc)
    assert enc.header["crc"] == crc
