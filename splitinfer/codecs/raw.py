"""RawCodec: what "no codec" means on the wire (codec name "none").

The raw tensor bytes (its dtype kept) behind a small JSON header, so every payload is a codec message and
every link counts bytes the same way (header + buffers), compressed or not. It uses the codecs' one dtype
table and shape limits (tensors.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.codecs.base import Codec
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.tensors import DTYPE_NAMES, NP_DTYPES, read_dtype, read_shape

NONE = "none"


class RawCodec(Codec):
    """No compression: the tensor's own bytes (its dtype kept; other dtypes are sent as float32), plus a
    small JSON header. No checksum: the transport's frames are already checked end to end."""

    name = NONE
    overrides: dict[str, Any] = {}

    def spec(self) -> dict[str, Any]:
        return {"name": NONE}

    def encode(self, x: torch.Tensor) -> EncodedTensor:
        if x.dtype not in DTYPE_NAMES:
            x = x.float()
        if x.requires_grad or x.device.type != "cpu" or not x.is_contiguous():
            x = x.detach().contiguous().cpu()
        header = {"codec": NONE, "v": 1, "params": {}, "dtype": DTYPE_NAMES[x.dtype], "shape": list(x.shape),
                  "meta": {}}
        if not x.numel():
            return EncodedTensor(header, [b""])
        if x.dtype in NP_DTYPES:  # one numpy view, no torch dispatches: this runs on every decode step
            return EncodedTensor(header, [memoryview(x.numpy()).cast("B")])
        return EncodedTensor(header, [x.reshape(-1).view(torch.uint8).numpy().data])

    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        h = enc.header
        if h.get("codec") != NONE or h.get("params") != {} or h.get("v") != 1:
            raise CodecError(f"header is not a '{NONE}' codec header: {str(h)[:120]}")
        dt, shape = read_dtype(h), list(read_shape(h))
        if len(enc.buffers) != 1:
            raise CodecError(f"expected 1 buffer, got {len(enc.buffers)}")
        want = math.prod(shape) * dt.itemsize
        buf = memoryview(enc.buffers[0]).cast("B")
        if buf.nbytes != want:
            raise CodecError(f"buffer has {buf.nbytes} bytes but shape {shape} of {h['dtype']} needs {want}")
        if want == 0:
            return torch.empty(shape, dtype=dtype or dt)
        # One copy into memory we own (zmq frames are read-only); numpy keeps this cheap for the
        # one-token decode steps, where every torch dispatch would be on the critical path.
        if dt is torch.bfloat16:
            t = torch.frombuffer(bytearray(buf), dtype=torch.int16).view(torch.bfloat16).view(shape)
        else:
            t = torch.from_numpy(np.frombuffer(buf, dtype=NP_DTYPES[dt]).reshape(shape).copy())
        return t if dtype is None else t.to(dtype)
