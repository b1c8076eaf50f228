"""What "no codec" means on the wire, and how a codec is named and built for the split path.

`"none"` is the raw tensor bytes (its dtype kept) behind a small JSON header, so every payload is a
codec message and every link counts bytes the same way (header + buffers), compressed or not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.codecs.errors import CodecError

NONE = "none"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}
_NP_DTYPES = {torch.float32: np.float32, torch.float16: np.float16}


class RawCodec:
    """No compression: the tensor's own bytes (its dtype kept), plus a small JSON header."""

    name = NONE
    overrides: dict[str, Any] = {}

    def spec(self) -> dict[str, Any]:
        return {"name": NONE}

    def encode(self, x: torch.Tensor):
        from splitinfer.codecs.encoded import EncodedTensor

        if x.dtype not in _DTYPE_NAMES:
            x = x.float()
        if x.requires_grad or x.device.type != "cpu" or not x.is_contiguous():
            x = x.detach().contiguous().cpu()
        header = {"codec": NONE, "v": 1, "params": {}, "dtype": _DTYPE_NAMES[x.dtype], "shape": list(x.shape),
                  "meta": {}}
        if not x.numel():
            return EncodedTensor(header, [b""])
        if x.dtype in _NP_DTYPES:  # one numpy view, no torch dispatches: this runs on every decode step
            return EncodedTensor(header, [memoryview(x.numpy()).cast("B")])
        return EncodedTensor(header, [x.reshape(-1).view(torch.uint8).numpy().data])

    def decode(self, enc, dtype: torch.dtype | None = None) -> torch.Tensor:
        h = enc.header
        if h.get("codec") != NONE or h.get("params") != {} or h.get("v") != 1:
            raise CodecError(f"header is not a '{NONE}' codec header: {str(h)[:120]}")
        dt = _DTYPES.get(h.get("dtype"))
        shape = h.get("shape")
        if dt is None:
            raise CodecError(f"dtype {h.get('dtype')!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or any(type(d) is not int or d < 0 for d in shape):
            raise CodecError(f"shape {shape!r} must be a list of at most 8 non-negative ints")
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
            t = torch.from_numpy(np.frombuffer(buf, dtype=_NP_DTYPES[dt]).reshape(shape).copy())
        return t if dtype is None else t.to(dtype)


def resolve_codec(spec: Any):
    """A codec object from None / "none" (raw bytes), a codec object, a name or a dict spec."""
    if spec is None or spec == NONE or (isinstance(spec, dict) and spec.get("name") == NONE and len(spec) == 1):
        return RawCodec()
    if hasattr(spec, "encode") and hasattr(spec, "decode"):
        return spec
    from splitinfer.codecs import build_codec

    return build_codec(spec)


def default_codec():
    """The project's default activation codec (what `splitinfer generate --server` sends)."""
    from splitinfer.codecs import DEFAULT_CODEC, build_codec

    return build_codec(DEFAULT_CODEC)


def codec_spec(codec) -> dict[str, Any]:
    """The JSON-able spec that rebuilds `codec` on the other side (sent once when a session opens)."""
    spec = codec.spec() if hasattr(codec, "spec") else {"name": codec.name}
    return dict(spec)
