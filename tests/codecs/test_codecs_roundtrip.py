"""Round-trip error bounds for every codec (property-based), and exactness of the lossless stages."""

from __future__ import annotations

import math

import pytest
import torch
from codec_bounds import WIRE, error_bound, tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitinfer.codecs import (
    EncodedTensor,
    PipelineCodec,
    available_codecs,
    build_codec,
    decode_any,
)

ALL = available_codecs()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _is_plain_cast(codec) -> bool:
    return isinstance(codec, PipelineCodec) and codec.plain_cast


def check_round_trip(codec, x: torch.Tensor) -> torch.Tensor:
    enc = codec.encode(x)
    y = decode_any(EncodedTensor.from_frames(enc.to_frames()))  # through the wire form
    assert y.shape == x.shape and y.dtype == x.dtype
    if _is_plain_cast(codec):  # a cast is exactly torch's cast, NaN/Inf kept ...
        expected = x.to(WIRE[codec.params.float_dtype]).to(x.dtype)
        if int(expected.isinf().sum()) != int(x.isinf().sum()):
            expected = x  # ... unless a finite value would overflow: then the values go as float32
        assert torch.equal(y.isnan(), expected.isnan())
        assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(expected))
        return y
    # NaN and +-Inf come back exactly where they were
    assert torch.equal(y.isnan(), x.isnan())
    assert torch.equal(y == math.inf, x == math.inf) and torch.equal(y == -math.inf, x == -math.inf)
    finite = torch.isfinite(x)
    err = (y.double() - x.double()).abs()[finite]
    bound = error_bound(codec, x)[finite]
    worst = int((err - bound).argmax()) if err.numel() else 0
    assert bool((err <= bound).all()), (
        f"{codec!r}: error {float(err[worst]):.3g} > bound {float(bound[worst]):.3g} "
        f"at {worst} (x={float(x[finite][worst]):.6g})")
    return y


@SETTINGS
@given(name=st.sampled_from(ALL), x=tensors())
def test_every_codec_stays_within_its_error_bound(name, x):
    check_round_trip(build_codec(name), x)


PIPELINES = st.fixed_dictionaries({}, optional={
    "bits": st.sampled_from([None, 2, 3, 4, 5, 6, 7, 8]),
    "granularity": st.sampled_from(["tensor", "token", "block"]),
    "block": st.sampled_from([1, 3, 16, 32, 64, 100]),
    "scale_format": st.sampled_from(["fp16", "log8"]),
    "outliers": st.integers(0, 10),
    "rotate": st.booleans(),
    "seed": st.integers(0, 2**40),
    "rot_block": st.sampled_from([2, 16, 64, 256]),
    "topk": st.sampled_from([None, 0.05, 0.3, 1.0]),
    "outlier_token_ratio": st.sampled_from([None, 1.0, 8.0]),
    "center": st.booleans(),
    "float_dtype": st.sampled_from(["fp32", "fp16", "bf16"]),
    "pack": st.booleans(),
    "lossless": st.sampled_from([None, "lz4", "zstd"]),
})


@SETTINGS
@given(params=PIPELINES, step=st.sampled_from([None, 0.05, 0.4, 2.0]), x=tensors())
def test_any_composed_pipeline_stays_within_its_error_bound(params, step, x):
    if step is not None:
        params = {**params, "bits": None, "step": step}
    check_round_trip(build_codec(params), x)


@pytest.mark.parametrize("name", ALL)
def test_every_codec_on_hidden_state_like_input(name):
    """Massive first token, outlier channels, a NaN and both infinities, a row width of 576."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 24, 576, generator=g) * 3
    x[:, 0, 7] = 25000.0
    x[:, :, 100] += 80.0
    x[1, 5, 9], x[1, 6, 10], x[0, 7, 11] = float("nan"), float("inf"), float("-inf")
    y = check_round_trip(build_codec(name), x)
    if name in SANE:  # a sanity floor on quality for the codecs we recommend, far looser than the benchmark's
        f = torch.isfinite(x)
        assert float((y - x)[f].norm() / x[f].norm()) < SANE[name]


# Without outlier handling, a block holding one massive value quantizes its other values to +-s/2
# (the mid-rise grid has no zero level); the recommended codecs all handle outliers.
SANE = {"int8": 1e-3, "int8_token": 0.1, "fp16": 1e-3, "bf16": 0.01, "petals_blockwise8": 0.01,
        "int6_b64_tc": 0.01, "int4_b32_outlier_lz4": 0.02, "int4_b64_outlier_rot_log8_tc": 0.02,
        "int3_b64_outlier_rot_log8_tc": 0.03, "ec25": 0.02, "ec40": 0.03}


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.float16, "fp32"), (torch.bfloat16, "fp32"),
                                        (torch.float16, "fp16"), (torch.bfloat16, "bf16"),
                                        (torch.float16, "fp16_lz4")])
def test_lossless_casts_are_bit_exact(dtype, name):
    x = (torch.randn(3, 17, 33) * 100).to(dtype)
    x[0, 0, 0], x[0, 0, 1], x[0, 0, 2] = float("nan"), float("-inf"), 0.0
    x[0, 0, 3] = -0.0
    codec = build_codec(name)
    y = codec.decode(codec.encode(x))
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(y.isnan(), x.isnan())
    keep = ~x.isnan()
    assert torch.equal(y.view(bits)[keep], x.view(bits)[keep])  # signed zeros and infinities included


@settings(max_examples=60, deadline=None)
@given(x=tensors(), base=st.sampled_from(["int8_b32_outlier", "int4_b32_outlier", "int4_token", "ec40",
                                            "fp16", "int3_b32_outlier_rot"]),
       method=st.sampled_from(["lz4", "zstd"]))
def test_lossless_stage_changes_bytes_never_values(x, base, method):
    plain, packed = build_codec(base, lossless=None), build_codec(base, lossless=method)
    a, b = plain.decode(plain.encode(x)), packed.decode(packed.encode(x))
    assert torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


@settings(max_examples=60, deadline=None)
@given(x=tensors(), bits=st.integers(2, 8))
def test_bit_packing_changes_bytes_never_values(x, bits):
    packed, loose = build_codec({"bits": bits}), build_codec({"bits": bits, "pack": False})
    a, b = packed.decode(packed.encode(x)), loose.decode(loose.encode(x))
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def test_decode_dtype_override_and_default():
    x = torch.randn(4, 64)
    codec = build_codec("int8")
    enc = codec.encode(x.half())
    assert codec.decode(enc).dtype == torch.float16  # the dtype recorded in the header
    assert codec.decode(enc, dtype=torch.float32).dtype == torch.float32


def test_encode_does_not_modify_its_input():
    x = torch.randn(2, 40, 64)
    x[0, 0] *= 500
    x[1, 3, 4] = float("nan")
    before = x.clone()
    for name in ("int4_b32_outlier_rot_log8_tc", "ec40", "int8", "top25_int8_token", "petals_blockwise8"):
        build_codec(name).encode(x)
        assert torch.equal(x.isnan(), before.isnan()) and torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))


def test_non_contiguous_and_sliced_inputs():
    base = torch.randn(8, 96)
    x = base.t()[::2]  # non-contiguous view
    for name in ("int8", "ec40", "fp16", "int4_b32_outlier_rot"):
        codec = build_codec(name)
        y = codec.decode(codec.encode(x))
        assert float((y - x).abs().max()) <= float(error_bound(codec, x).max())
