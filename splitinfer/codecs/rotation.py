"""Seeded random Hadamard rotation along the channel dimension (as in QuaRot / QuIP#).

A random sign flip followed by an orthonormal Walsh-Hadamard transform spreads each outlier's energy
over a whole block of channels, so per-block scales stop being dominated by one huge value. The
rotation is orthonormal, so the quantization error keeps its L2 norm when rotated back.

Hadamard matrices are built for powers of two; a row of C channels is cut into blocks of the largest
power of two that divides C, capped at `max_block` (C = 576 -> blocks of 64).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def rotation_block(cols: int, max_block: int) -> int:
    """Largest power of two dividing `cols`, at most `max_block`."""
    if cols <= 0:
        return 1
    return min(cols & -cols, max_block)


@lru_cache(maxsize=16)
def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


@lru_cache(maxsize=64)
def _signs(cols: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (cols,), generator=g, dtype=torch.int8).to(torch.float32).mul_(2).sub_(1)


def rotate(v: torch.Tensor, seed: int, max_block: int) -> torch.Tensor:
    """(rows, cols) float32 -> rotated copy, same shape."""
    rows, cols = v.shape
    b = rotation_block(cols, max_block)
    return _block_transform(v * _signs(cols, seed), b).reshape(rows, cols)


def unrotate(v: torch.Tensor, seed: int, max_block: int) -> torch.Tensor:
    """Inverse of `rotate` (the normalised Hadamard matrix is its own inverse)."""
    rows, cols = v.shape
    b = rotation_block(cols, max_block)
    return _block_transform(v, b).reshape(rows, cols).mul_(_signs(cols, seed))


def _block_transform(v: torch.Tensor, b: int) -> torch.Tensor:
    out = v.reshape(-1, b) @ _hadamard(b)
    if not math.isfinite(float(out.sum())):
        # partial sums of values near the float32 limit overflow: redo at an exact power-of-two scale
        out = (v.reshape(-1, b) * 2.0**-64) @ _hadamard(b)
        out = out.mul_(2.0**64)
    return out
