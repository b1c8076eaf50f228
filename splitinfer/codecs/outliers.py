"""Outlier channels: the few hidden-state channels with "massive activations" (|h| ~ 25,000 where the
mean |h| is ~3 in SmolLM2) are sent separately at 16 bits and zeroed before quantization, so they no
longer set the scale of their blocks.

Channels are chosen per tensor by their largest |value|; their indices travel as int16 (int32 when the
row is wider than 32767) and their values as float16 (relative error <= 2**-11, absolute <= 2**-25 for
values in float16's subnormal range), or float32 when a value does not fit float16.
"""

from __future__ import annotations

import torch

_FP16_MAX = 65504.0


def index_dtype(cols: int) -> torch.dtype:
    return torch.int16 if cols <= 32767 else torch.int32


def num_outliers(requested: int, cols: int) -> int:
    return min(requested, cols)


def split_outliers(v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zero the k channels with the largest |value| in `v` (in place) and return
    (channel indices (k,), their values (rows, k) float32, v)."""
    peak = v.abs().amax(dim=0)
    idx = torch.topk(peak, k, sorted=False).indices.sort().values
    values = v[:, idx]
    v[:, idx] = 0.0
    return idx, values, v


def outlier_value_dtype(values: torch.Tensor) -> torch.dtype:
    return torch.float16 if values.numel() == 0 or float(values.abs().max()) <= _FP16_MAX else torch.float32


def merge_outliers(v: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    v[:, idx.long()] = values.to(torch.float32)
    return v
