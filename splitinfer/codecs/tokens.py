"""Outlier tokens: rows whose largest |value| towers over the other rows' are sent whole in float16.

In SmolLM2 the first token of a sequence (the attention sink) carries "massive activations" from
layer ~4 on: its max |h| is 15-300x the median token's. Every later token attends to it, so its
quantization error costs far more perplexity than its share of the bytes (1 token in 256 at 16 bits
= 0.06 bits per value). Rows above `ratio` x the median row max are taken out before quantization.
A message of one token (a decode step) never has an outlier row: the median is the row itself.
"""

from __future__ import annotations

import torch

_FP16_MAX = 65504.0


def find_outlier_rows(v: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (int64, sorted) of rows with max |value| > ratio * median row max |value|."""
    if v.shape[0] < 2:
        return torch.empty(0, dtype=torch.int64)
    peak = v.abs().amax(dim=1)
    return (peak > ratio * peak.median()).nonzero().reshape(-1)


def row_value_dtype(rows: torch.Tensor) -> torch.dtype:
    return torch.float16 if rows.numel() == 0 or float(rows.abs().max()) <= _FP16_MAX else torch.float32


def _kept(n: int, idx: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    return keep.nonzero().reshape(-1)


def without_rows(v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return v.index_select(0, _kept(v.shape[0], idx))


def with_rows(rest: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Inverse of without_rows: put `rows` back at positions `idx` (distinct, in range)."""
    n = rest.shape[0] + idx.numel()
    out = rest.new_empty(n, rest.shape[1])
    out.index_copy_(0, _kept(n, idx), rest)
    return out.index_copy_(0, idx, rows.to(out.dtype))
