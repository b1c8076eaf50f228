"""Unit properties of the stages: bit-packing, lossless back ends, quantizer, rotation, outlier tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitinfer.codecs import CodecError
from splitinfer.codecs.bitpack import pack_bits, packed_nbytes, unpack_bits
from splitinfer.codecs.lossless import compress, decompress
from splitinfer.codecs.quantize import QuantSpec, dequantize, quantize
from splitinfer.codecs.rotation import rotate, rotation_block, unrotate
from splitinfer.codecs.tokens import find_outlier_rows, with_rows, without_rows


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_bitpack_round_trip_is_exact_and_tight(bits, data):
    n = data.draw(st.integers(0, 300))
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n)), dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_nbytes(n, bits)
    assert packed.size <= (n * bits + 7) // 8 + 2  # real packing: at most one spare byte per bit plane
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_single_plane_bit_order_is_little_endian(bits):
    codes = np.arange(16, dtype=np.uint8) % (1 << bits)
    word = sum(int(c) << (bits * i) for i, c in enumerate(codes))
    assert pack_bits(codes, bits).tobytes() == word.to_bytes(packed_nbytes(16, bits), "little")


def test_two_4bit_values_per_byte():
    assert pack_bits(np.array([1, 2, 15, 0, 7], dtype=np.uint8), 4).tolist() == [0x21, 0x0F, 0x07]


def test_unpack_rejects_wrong_length():
    with pytest.raises(CodecError, match="need"):
        unpack_bits(np.zeros(3, dtype=np.uint8), 4, 8)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), method=st.sampled_from(["lz4", "zstd"]))
def test_lossless_round_trip_is_exact(data, method):
    assert decompress(compress(data, method, 1), method, len(data)) == data


@pytest.mark.parametrize("method", ["lz4", "zstd"])
def test_lossless_rejects_garbage_and_wrong_sizes(method):
    blob = compress(bytes(range(256)) * 20, method, 1)
    with pytest.raises(CodecError):
        decompress(blob, method, 5119)
    with pytest.raises(CodecError):
        decompress(blob[: len(blob) // 2], method, 5120)
    with pytest.raises(CodecError):
        decompress(b"\xff" * 40, method, 5120)
    if method == "lz4":  # a header cannot make lz4 allocate more than 255x its input
        with pytest.raises(CodecError, match="cannot hold"):
            decompress(blob, method, 10**9)


@settings(max_examples=150, deadline=None)
@given(bits=st.integers(2, 8), gran=st.sampled_from(["tensor", "token", "block"]), block=st.integers(1, 70),
       fmt=st.sampled_from(["fp16", "log8"]), rows=st.integers(1, 9), cols=st.integers(1, 90),
       seed=st.integers(0, 1000), spread=st.integers(0, 8))
def test_quantizer_error_is_at_most_half_a_step_of_its_group(bits, gran, block, fmt, rows, cols, seed, spread):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, cols, generator=g) * torch.logspace(0, spread, cols)[torch.randperm(cols, generator=g)]
    spec = QuantSpec(bits, gran, block)
    codes, scale_bytes, stored = quantize(v, spec, fmt)
    assert codes.dtype == np.uint8 and int(codes.max()) < 1 << bits
    out = dequantize(codes, scale_bytes, spec, stored, rows, cols)
    # recompute each element's group max; the stored scale may exceed max/L by the format's rounding
    if gran == "tensor":
        gmax = v.abs().max().expand(rows, cols)
    elif gran == "token":
        gmax = v.abs().amax(1, keepdim=True).expand(rows, cols)
    else:
        pad = torch.nn.functional.pad(v.abs(), (0, -cols % block)).reshape(rows, -1, block)
        gmax = pad.amax(-1, keepdim=True).expand_as(pad).reshape(rows, -1)[:, :cols]
    half = ((1 << bits) - 1) / 2
    slack = 2 ** (1 / 16) if (fmt == "log8" and gran != "tensor") else 1 + 2**-10
    floor = v.abs().max() * 2**-15.8 / half if (fmt == "log8" and gran != "tensor") else 0
    bound = torch.maximum(gmax * slack / half, torch.as_tensor(floor)) / 2 * (1 + 2**-14) + 1e-30
    assert bool(((out - v).abs() <= bound).all())


def test_all_zero_groups_decode_to_exact_zero():
    v = torch.zeros(3, 64)
    v[1, :32] = torch.randn(32)
    for fmt in ("fp16", "log8"):
        spec = QuantSpec(3, "block", 32)
        out = dequantize(*quantize(v, spec, fmt)[:2], spec, quantize(v, spec, fmt)[2], 3, 64)
        assert torch.equal(out[0], torch.zeros(64)) and torch.equal(out[1, 32:], torch.zeros(32))


def test_fp16_scales_fall_back_to_fp32_when_out_of_range():
    spec = QuantSpec(8, "token", 0)
    for v in (torch.full((2, 4), 1e30), torch.full((2, 4), 1e-30)):
        codes, sb, stored = quantize(v, spec, "fp16")
        assert stored == "float32"
        assert torch.allclose(dequantize(codes, sb, spec, stored, 2, 4), v, rtol=1e-2)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 6), cols=st.sampled_from([1, 2, 6, 64, 96, 576, 1000]), seed=st.integers(0, 2**40),
       max_block=st.sampled_from([2, 64, 256]), scale=st.sampled_from([1e-20, 1.0, 1e36]))
def test_rotation_is_orthonormal_and_seeded(rows, cols, seed, max_block, scale):
    v = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed % 2**31)) * scale
    r = rotate(v, seed, max_block)
    assert torch.isfinite(r).all()
    assert torch.allclose(r.double().norm(dim=1), v.double().norm(dim=1), rtol=1e-5, atol=0)
    assert torch.allclose(unrotate(r, seed, max_block), v, rtol=1e-5, atol=1e-6 * scale)
    assert torch.equal(rotate(v, seed, max_block), r)


def test_rotation_block_divides_the_row():
    assert rotation_block(576, 256) == 64 and rotation_block(4096, 256) == 256 and rotation_block(7, 256) == 1


def test_outlier_tokens_are_found_and_put_back():
    v = torch.randn(10, 8)
    v[3] *= 100
    idx = find_outlier_rows(v, 8.0)
    assert idx.tolist() == [3]
    assert torch.equal(with_rows(without_rows(v, idx), idx, v[idx]), v)
    assert find_outlier_rows(v[:1] * 1000, 8.0).numel() == 0  # one row: nothing to compare with
