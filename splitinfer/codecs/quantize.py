"""Uniform symmetric quantization of a (rows, cols) float32 matrix at per-tensor, per-token (row) or
per-block scales.

Mid-rise grid: code c in [0, 2**bits - 1] decodes to s * (c - L) with L = (2**bits - 1) / 2, so all
2**bits levels are used symmetrically (a 3-bit code has 8 levels, not 7) and the largest |x| of each
group maps exactly onto the outermost level. Worst-case error per element is s / 2.

Scales are stored as:
- "fp16": s rounded to float16 (falls back to float32 for the whole tensor if any scale would
  overflow or lose precision to underflow);
- "log8": one float32 reference scale per tensor plus one byte per group, s = s_max * 2**(-e/16),
  e rounded *down* so the stored scale never clips (costs at most 2**(1/16) = 4.4 % more step);
  e = 255 marks an all-zero group. Halves the scale overhead of small blocks.
Per-tensor granularity always stores a single float32 scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from splitinfer.codecs.errors import CodecError

GRANULARITIES = ("tensor", "token", "block")
SCALE_FORMATS = ("fp16", "log8")
_LOG8_STEPS = 16  # e/16 octaves: 254 usable steps span ~2**-15.9 of the largest scale
_FP16_TINY = 6.103515625e-05  # smallest normal float16


@dataclass
class QuantSpec:
    bits: int
    granularity: str
    block: int

    @property
    def half_range(self) -> float:
        return ((1 << self.bits) - 1) / 2

    def group_shape(self, rows: int, cols: int) -> tuple[int, int]:
        """(groups, group_size) after padding cols up to a whole number of blocks."""
        if self.granularity == "tensor":
            return 1, rows * cols
        if self.granularity == "token":
            return rows, cols
        nblocks = -(-cols // self.block)
        return rows * nblocks, self.block

    def num_scales(self, rows: int, cols: int) -> int:
        return self.group_shape(rows, cols)[0]


def scales_nbytes(spec: QuantSpec, rows: int, cols: int, scale_dtype: str) -> int:
    """Bytes of the scale buffer; scale_dtype is the *stored* format: float16, float32 or log8."""
    n = spec.num_scales(rows, cols)
    if spec.granularity == "tensor":
        return 4
    return {"float16": 2 * n, "float32": 4 * n, "log8": 4 + n}[scale_dtype]


def quantize(v: torch.Tensor, spec: QuantSpec, scale_format: str) -> tuple[np.ndarray, bytes, str]:
    """(rows, cols) float32 finite -> (codes uint8 (rows*cols,), scale bytes, stored scale dtype)."""
    rows, cols = v.shape
    if spec.granularity != "tensor" and scale_format == "fp16":
        return _quantize_np(np.ascontiguousarray(v.numpy()), spec)
    groups = _grouped(v, spec)
    absmax = groups.abs().amax(dim=1)
    scale, payload, stored = _store_scales(absmax / spec.half_range, spec, scale_format)
    # divide (not multiply by 1/s): 1/s overflows for subnormal scales; an all-zero group divides by 1
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = (groups / safe[:, None]).add_(spec.half_range).round_().clamp_(0, (1 << spec.bits) - 1)
    # numpy's float -> uint8 cast is ~6x faster than torch's on one core
    codes = _ungrouped(scaled, spec, rows, cols).numpy().astype(np.uint8, order="C")
    return codes.reshape(-1), payload, stored


def dequantize(codes: np.ndarray, scale_bytes: bytes, spec: QuantSpec, scale_dtype: str,
               rows: int, cols: int) -> torch.Tensor:
    """Inverse of quantize: codes uint8 (rows*cols,) -> (rows, cols) float32."""
    if spec.granularity != "tensor" and scale_dtype in ("float16", "float32"):
        scale = _load_scales_np(scale_bytes, spec, scale_dtype, rows, cols)
        g = _grouped_np(codes.reshape(rows, cols).astype(np.float32), spec)
        g -= np.float32(spec.half_range)
        g *= scale[:, None]
        return torch.from_numpy(_ungrouped_np(g, spec, rows, cols))
    scale = _load_scales(scale_bytes, spec, scale_dtype, rows, cols)
    groups = _grouped(torch.from_numpy(codes.reshape(rows, cols).astype(np.float32)), spec)
    out = groups.sub_(spec.half_range).mul_(scale[:, None])
    return _ungrouped(out, spec, rows, cols)


# -- the same arithmetic in numpy (float32 throughout, round half to even, IEEE division: bit-identical
# to the torch path) for per-token / per-block groups with float16 scales, the presets on every decode
# step: a one-token message costs a few numpy calls instead of ~20 torch dispatches.

def _grouped_np(a: np.ndarray, spec: QuantSpec) -> np.ndarray:
    rows, cols = a.shape
    if spec.granularity == "token":
        return a
    pad = -cols % spec.block
    if pad:
        a = np.concatenate([a, np.zeros((rows, pad), dtype=a.dtype)], axis=1)
    return a.reshape(-1, spec.block)


def _ungrouped_np(g: np.ndarray, spec: QuantSpec, rows: int, cols: int) -> np.ndarray:
    if spec.granularity == "block" and cols % spec.block:
        return np.ascontiguousarray(g.reshape(rows, -1)[:, :cols])
    return g.reshape(rows, cols)


def _quantize_np(a: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, bytes, str]:
    rows, cols = a.shape
    groups = _grouped_np(a, spec)
    scale = np.abs(groups).max(axis=1) / np.float32(spec.half_range) if groups.size else np.zeros(
        groups.shape[0], np.float32)
    with np.errstate(over="ignore"):  # overflow to inf is the signal for the float32 fallback below
        s16 = scale.astype(np.float16)
    if bool(((s16 < _FP16_TINY) & (scale > 0)).any()) or not bool(np.isfinite(s16).all()):
        payload, stored = scale.tobytes(), "float32"  # float16 over/underflow: keep float32 scales
    else:
        payload, stored, scale = s16.tobytes(), "float16", s16.astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    scaled = groups / safe[:, None]
    scaled += np.float32(spec.half_range)
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, (1 << spec.bits) - 1, out=scaled)
    codes = _ungrouped_np(scaled, spec, rows, cols).astype(np.uint8, order="C")
    return codes.reshape(-1), payload, stored


def _load_scales_np(buf: bytes, spec: QuantSpec, scale_dtype: str, rows: int, cols: int) -> np.ndarray:
    _check_scale_bytes(buf, spec, scale_dtype, rows, cols)
    s = np.frombuffer(buf, dtype=np.float16 if scale_dtype == "float16" else np.float32).astype(np.float32)
    if not bool(np.isfinite(s).all()) or bool((s < 0).any()):
        raise CodecError("scale buffer holds negative or non-finite scales: corrupted data")
    return s


def _grouped(v: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    rows, cols = v.shape
    if spec.granularity == "tensor":
        return v.reshape(1, -1)
    if spec.granularity == "token":
        return v
    pad = -cols % spec.block
    if pad:
        v = torch.nn.functional.pad(v, (0, pad))
    return v.reshape(-1, spec.block)


def _ungrouped(g: torch.Tensor, spec: QuantSpec, rows: int, cols: int) -> torch.Tensor:
    if spec.granularity == "block" and cols % spec.block:
        return g.reshape(rows, -1)[:, :cols]
    return g.reshape(rows, cols)


def _store_scales(scale: torch.Tensor, spec: QuantSpec, fmt: str) -> tuple[torch.Tensor, bytes, str]:
    """Round scales to their wire format; return (the scales the decoder will see, bytes, dtype name)."""
    if spec.granularity == "tensor":
        return scale, scale.numpy().tobytes(), "float32"
    if fmt == "log8":  # per-token / per-block fp16 scales take the numpy path (_quantize_np)
        smax = scale.max().reshape(1) if scale.numel() else scale.new_zeros(1)
        with torch.no_grad():
            ratio = scale / torch.where(smax > 0, smax, torch.ones_like(smax))
            e = torch.floor(-_LOG8_STEPS * torch.log2(ratio)).clamp_(0, 254)
        e = torch.where(scale > 0, e, torch.full_like(e, 255)).to(torch.uint8)
        return _log8_scales(smax, e), smax.numpy().tobytes() + e.numpy().tobytes(), "log8"
    raise CodecError(f"unknown scale_format {fmt!r}; choose one of {SCALE_FORMATS}")


def _log8_scales(smax: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    s = smax * torch.exp2(e.to(torch.float32) * (-1.0 / _LOG8_STEPS))
    # a float-rounding hair below the true scale would clip the largest value: nudge up one ulp
    s = torch.nextafter(s, torch.full_like(s, float("inf")))
    return torch.where(e == 255, torch.zeros_like(s), s)


def _check_scale_bytes(buf: bytes, spec: QuantSpec, scale_dtype: str, rows: int, cols: int) -> None:
    want = scales_nbytes(spec, rows, cols, scale_dtype)
    if len(buf) != want:
        raise CodecError(f"scale buffer has {len(buf)} bytes, expected {want} for {spec.num_scales(rows, cols)} "
                         f"{scale_dtype} scales")


def _load_scales(buf: bytes, spec: QuantSpec, scale_dtype: str, rows: int, cols: int) -> torch.Tensor:
    """Per-tensor and log8 scales (per-token / per-block float16 and float32 ones: _load_scales_np)."""
    _check_scale_bytes(buf, spec, scale_dtype, rows, cols)
    raw = torch.frombuffer(bytearray(buf), dtype=torch.uint8)
    if spec.granularity == "tensor" or scale_dtype == "float32":
        s = raw.view(torch.float32).clone()
    elif scale_dtype == "log8":
        s = _log8_scales(raw[:4].view(torch.float32), raw[4:])
    else:
        raise CodecError(f"unknown scale dtype {scale_dtype!r} in header")
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise CodecError("scale buffer holds negative or non-finite scales: corrupted data")
    return s
