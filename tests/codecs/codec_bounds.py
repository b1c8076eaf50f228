"""Test oracle: a worst-case error bound for every codec, derived from the codec's params alone.

The bound is deliberately simple (row maxima and norms, not the codec's own scales), so it checks the
implementation instead of repeating it.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from splitinfer.codecs import PetalsBlockwise8Codec, PipelineCodec
from splitinfer.codecs.sparsify import kept_per_row

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
WIRE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY = 1e-30  # values this small may be flushed to zero by subnormal scales


def error_bound(codec, x: torch.Tensor) -> torch.Tensor:
    """Per-element bound on |decode(encode(x)) - x| for finite x (float64, shape of x)."""
    xf = x.double()
    finite = torch.isfinite(xf)
    v = torch.where(finite, xf, torch.zeros((), dtype=torch.float64))
    if isinstance(codec, PetalsBlockwise8Codec):
        bound = _petals_bound(v)
    else:
        bound = _pipeline_bound(codec, v)
    # decode() casts back to the input dtype
    floor = 2.0**-25 if x.dtype == torch.float16 else 0.0  # float16 subnormal spacing
    bound = bound + (v.abs() + bound) * UNIT_ROUNDOFF[x.dtype] + floor + TINY
    return torch.where(finite, bound, torch.zeros((), dtype=torch.float64))


def _rows(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, 1) if v.dim() == 0 else v.reshape(-1, v.shape[-1])


def _pipeline_bound(codec: PipelineCodec, v: torch.Tensor) -> torch.Tensor:
    p = codec.params
    if v.numel() == 0:
        return v.abs()
    m = _rows(v)
    rows, cols = m.shape
    if rows == 0 or cols == 0:
        return v.abs()
    out_rows = torch.zeros(rows, 1, dtype=torch.bool)
    if p.outlier_token_ratio is not None and rows >= 2:  # whole rows in fp16 (exact when sent as fp32)
        peak = m.float().abs().amax(dim=1, keepdim=True)  # the codec's selection rule, in float32 like it
        out_rows = peak > p.outlier_token_ratio * peak.median()
    rest = m[~out_rows[:, 0]]
    mean = torch.zeros(cols, dtype=torch.float64)
    if p.center and rest.shape[0] >= 16:
        mean = rest.mean(0).float().clamp(-65504, 65504).half().double()
    r = m - mean  # what the quantizer sees (outlier rows excluded below)
    a = r.abs().amax(dim=1, keepdim=True)
    n2 = r.norm(dim=1, keepdim=True)
    width = kept_per_row(p.topk, cols) if p.topk is not None else cols
    g = n2 * (1 + 1e-5) if p.rotate else a  # any (rotated) coordinate is at most this
    keep = ~out_rows[:, 0]
    if p.bits is not None:
        # float32 rounding of x/s + L can push a value a hair past its level's midpoint: 2**-14 slack
        half = ((1 << p.bits) - 1) / 2 / (1 + 2**-14)
        slack = 2 ** (1 / 16) if p.scale_format == "log8" else 1 + 2**-10
        if p.granularity == "tensor":
            g_group = g[keep].max() if bool(keep.any()) else g.new_zeros(())
            e = torch.full_like(g, float(g_group) * (1 + 1e-6) / (2 * half))
        else:
            e = g * slack / (2 * half)
            if p.scale_format == "log8":  # scales below 2**-15.9 x the largest are floored there
                gmax = float(g[keep].max()) if bool(keep.any()) else 0.0
                e = e.clamp(min=gmax * (1 + 2**-10) * 2**-15.8 / (2 * half))
    elif p.step is not None:
        e = p.step * (n2 / math.sqrt(width)) * (1 + 2**-10) / 2
    else:
        e = g * UNIT_ROUNDOFF[WIRE[p.float_dtype]] + (2.0**-25 if p.float_dtype == "fp16" else 0.0)
    if p.topk is not None:  # dropped values decode to 0
        kth = torch.topk(r.abs(), width, dim=1).values[:, -1:] if not p.rotate else g
        e = torch.maximum(e, kth)
    if p.rotate:
        e = e * math.sqrt(cols) + 1e-5 * n2
    if p.outliers:  # outlier channels travel in fp16: relative 2**-11, absolute 2**-25 in the subnormals
        e = torch.maximum(e, a * 2.0**-11 + 2.0**-25)
    bound = e.expand(rows, cols).clone()
    bound = bound + 2.0**-22 * (m.abs() + mean.abs())  # centering's subtract-then-add rounding
    bound[out_rows[:, 0]] = m[out_rows[:, 0]].abs() * 2.0**-11 + 2.0**-25  # outlier tokens: fp16
    return bound.reshape(v.shape)


def _petals_bound(v: torch.Tensor) -> torch.Tensor:
    """bitsandbytes rounds to (about) the nearest entry of its dynamic map, scaled by each 4096-block's absmax."""
    import bitsandbytes.functional as F

    code = F.create_dynamic_map(signed=True).double().sort().values
    half_gap = float((code[1:] - code[:-1]).max()) / 2
    flat = v.reshape(-1)
    pad = -flat.numel() % 4096
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 4096)
    bmax = blocks.abs().amax(dim=1, keepdim=True).expand_as(blocks).reshape(-1)[: flat.numel()]
    # nearest entry, except that bitsandbytes' CPU search misses it by up to 3e-5 x absmax for 0.2 % of values
    return (bmax * (half_gap + 1e-4)).reshape(v.shape)


# ----------------------------------------------------------------------------- strategies
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KINDS = ("normal", "heavy", "constant", "zeros", "channel_outliers", "sink", "tiny", "huge")


@st.composite
def tensors(draw, allow_nonfinite: bool = True, max_side: int = 24, max_cols: int = 130) -> torch.Tensor:
    """Random shapes (0-d to 3-d, empty included), dtypes and value patterns: Gaussian, heavy-tailed,
    constant, zeros, outlier channels, a massive first token, tiny and huge magnitudes, NaN/Inf."""
    ndim = draw(st.integers(0, 3))
    shape = draw(st.lists(st.integers(0, max_side), min_size=max(ndim - 1, 0), max_size=max(ndim - 1, 0)))
    if ndim:
        shape.append(draw(st.integers(0, max_cols)))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(KINDS))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 10.0 ** draw(st.integers(-2, 2))
    if kind == "heavy":
        x = x**3
    elif kind == "constant":
        x = torch.full(shape, draw(st.floats(-1e3, 1e3)), dtype=torch.float64)
    elif kind == "zeros":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "channel_outliers" and x.dim() and x.shape[-1]:
        x[..., :: max(1, x.shape[-1] // 3)] *= 1000.0
    elif kind == "sink" and x.dim() >= 2 and x.numel():
        x[..., 0, :] *= 300.0
        x[..., 0, 0] = 20000.0
    elif kind == "tiny":
        x = x * 1e-20
    elif kind == "huge":
        x = x * (1e4 if dtype == torch.float16 else 1e30)
    if dtype == torch.float16:
        x = x.clamp(-60000, 60000)
    x = x.to(dtype)
    if allow_nonfinite and x.numel() and draw(st.booleans()):
        flat = x.reshape(-1)
        for value in draw(st.lists(st.sampled_from([float("nan"), float("inf"), float("-inf")]), min_size=1,
                                   max_size=4)):
            flat[draw(st.integers(0, flat.numel() - 1))] = value
    return x
