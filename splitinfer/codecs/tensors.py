"""The one dtype table and the wire limits every codec shares, and the tensor <-> bytes helpers.

A leaf module (it imports only errors.py), so that framing, encoded, base, the stages and the raw codec
can all use it without an import cycle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.codecs.errors import CodecError

Buffer = bytes | bytearray | memoryview

# Input dtypes a codec accepts; decode() returns the same dtype unless told otherwise. The order is the
# session head's 2-bit dtype code (framing.py): never reorder, only append.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}  # numpy has no bfloat16
WIRE_FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # param float_dtype's names

# Refuse headers that announce absurd tensors before allocating anything (2**30 fp32 values = 4 GiB).
MAX_NUMEL = 2**30
MAX_NDIM = 16
# A hostile peer must not make us parse megabytes of JSON; real headers are ~150 bytes.
MAX_HEADER_BYTES = 64 * 1024


def check_input(x: Any) -> None:
    """What every encoder accepts: a float tensor of a wire dtype, not absurdly large."""
    if not isinstance(x, torch.Tensor):
        raise CodecError(f"codecs encode torch.Tensor, got {type(x).__name__}")
    if x.dtype not in DTYPE_NAMES:
        raise CodecError(
            f"cannot encode dtype {x.dtype}; supported: {sorted(DTYPES)}. Cast first, e.g. x.float()"
        )
    if x.numel() > MAX_NUMEL:
        raise CodecError(f"tensor has {x.numel()} elements, over the codec limit of {MAX_NUMEL}")


def read_dtype(header: dict[str, Any]) -> torch.dtype:
    name = header.get("dtype")
    if name not in DTYPES:
        raise CodecError(f"header dtype {name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def read_shape(header: dict[str, Any]) -> tuple[int, ...]:
    shape = header.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise CodecError(f"header shape must be a list of at most {MAX_NDIM} ints, got {shape!r}")
    for d in shape:
        if type(d) is not int or d < 0:
            raise CodecError(f"header shape {shape!r} must hold non-negative ints")
    if math.prod(shape) > MAX_NUMEL:
        raise CodecError(f"header shape {shape} has more than {MAX_NUMEL} elements; refusing to decode")
    return tuple(shape)


def rows_cols(shape: tuple[int, ...] | list[int] | torch.Size) -> tuple[int, int]:
    """The (tokens, channels) view every stage works on: all leading dims flattened into rows."""
    if len(shape) == 0:
        return 1, 1
    cols = shape[-1]
    return (math.prod(shape) // cols if cols else 0), cols


def saturate_for(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Clamp finite float32 values into `dtype`'s finite range before casting to it: a reconstruction
    may overshoot an input that sat at the edge of float16's range, and must not become inf."""
    if dtype == torch.float32:
        return v
    big = torch.finfo(dtype).max
    return v.clamp(-big, big)


def to_bytes(t: torch.Tensor) -> bytes:
    """A tensor's raw little-endian bytes (row-major)."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def from_bytes(buf: Buffer, dtype: torch.dtype, n: int | None = None, what: str = "buffer") -> torch.Tensor:
    """A flat tensor of `dtype` over a copy of `buf`; with `n`, the buffer must hold exactly n values."""
    raw = memoryview(buf).cast("B")
    if n is not None and raw.nbytes != n * dtype.itemsize:
        raise CodecError(f"buffer {what!r} has {raw.nbytes} bytes, the header implies {n * dtype.itemsize}")
    if raw.nbytes == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
