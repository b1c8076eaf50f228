"""Top-k sparsification: keep the k = ceil(fraction * C) largest-|value| channels of each row.

Kept values come out sorted by magnitude, so a later per-block quantizer sees blocks of similar size.
Dropped values decode to 0; their error is at most the k-th largest |value| of their row.
"""

from __future__ import annotations

import math

import torch


def kept_per_row(fraction: float, cols: int) -> int:
    return min(cols, max(1, math.ceil(fraction * cols))) if cols else 0


def topk_split(v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) -> (values (rows, k), column indices (rows, k) int64)."""
    idx = torch.topk(v.abs(), k, dim=1, sorted=True).indices
    return torch.gather(v, 1, idx), idx


def topk_merge(values: torch.Tensor, idx: torch.Tensor, cols: int) -> torch.Tensor:
    out = values.new_zeros(values.shape[0], cols)
    return out.scatter_(1, idx.long(), values)
