"""Hidden states on the wire: the codec a session uses, and the checks on what the server decodes.

A session names its codec at open as a spec (`{"name": ..., **params}`, what `Codec.spec()` gives).
`"none"` is built in here: the raw tensor bytes with a JSON header, for fp32 baselines and for
checkouts without `splitinfer.codecs`. Every other name goes to `splitinfer.codecs.build_codec`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.transport.protocol import BAD_CODEC, BAD_TENSOR, ProtocolError

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
            raise ValueError(f"header is not a '{NONE}' codec header: {str(h)[:120]}")
        dt = _DTYPES.get(h.get("dtype"))
        shape = h.get("shape")
        if dt is None:
            raise ValueError(f"dtype {h.get('dtype')!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 8 or any(type(d) is not int or d < 0 for d in shape):
            raise ValueError(f"shape {shape!r} must be a list of at most 8 non-negative ints")
        if len(enc.buffers) != 1:
            raise ValueError(f"expected 1 buffer, got {len(enc.buffers)}")
        want = math.prod(shape) * dt.itemsize
        buf = memoryview(enc.buffers[0]).cast("B")
        if buf.nbytes != want:
            raise ValueError(f"buffer has {buf.nbytes} bytes but shape {shape} of {h['dtype']} needs {want}")
        if want == 0:
            return torch.empty(shape, dtype=dtype or dt)
        # One copy into memory we own (zmq frames are read-only); numpy keeps this cheap for the
        # one-token decode steps, where every torch dispatch would be on the critical path.
        if dt is torch.bfloat16:
            t = torch.frombuffer(bytearray(buf), dtype=torch.int16).view(torch.bfloat16).view(shape)
        else:
            t = torch.from_numpy(np.frombuffer(buf, dtype=_NP_DTYPES[dt]).reshape(shape).copy())
        return t if dtype is None else t.to(dtype)


def build_session_codec(spec: Any):
    """A codec from a wire/user spec: None or "none" -> RawCodec, a name or dict -> splitinfer.codecs."""
    if spec is None or spec == NONE or (isinstance(spec, dict) and spec.get("name") == NONE and len(spec) == 1):
        return RawCodec()
    if hasattr(spec, "encode") and hasattr(spec, "decode"):
        return spec
    try:
        from splitinfer.codecs import build_codec
    except ImportError as e:
        raise ProtocolError(BAD_CODEC, f"codec {spec!r} needs splitinfer.codecs, which is not available here "
                                       f"({e}); use codec 'none'") from None
    try:
        return build_codec(spec)
    except Exception as e:  # CodecError, KeyError, TypeError from a hostile spec
        raise ProtocolError(BAD_CODEC, f"codec spec {str(spec)[:120]} is not usable: {e}") from None


def default_codec():
    """The project's default activation codec, or RawCodec when splitinfer.codecs is not built yet."""
    try:
        from splitinfer.codecs import DEFAULT_CODEC, build_codec
    except ImportError:
        return RawCodec()
    return build_codec(DEFAULT_CODEC)


def codec_spec(codec) -> dict[str, Any]:
    spec = codec.spec() if hasattr(codec, "spec") else {"name": codec.name}
    return dict(spec)


def decode_hidden(codec, frames, hidden_size: int, max_tokens: int) -> torch.Tensor:
    """Decode a step's payload frames (codec header + buffers) into a (1, T, hidden) float tensor.

    The shape in the header is checked before decoding (so a header cannot make us allocate much),
    and the result must be finite.
    """
    from splitinfer.codecs.encoded import EncodedTensor

    if not frames:
        raise ProtocolError(BAD_TENSOR, "a step carries no payload; send the codec's frames after the envelope")
    try:
        enc = EncodedTensor.from_frames(frames)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested ~1000 deep
        raise ProtocolError(BAD_TENSOR, f"payload is not a codec message: {e}") from None
    h = enc.header
    if h.get("codec") != codec.name or h.get("params", {}) != dict(getattr(codec, "overrides", {}) or {}):
        raise ProtocolError(BAD_CODEC, f"payload is encoded with codec {str(h.get('codec'))[:60]!r} params "
                                       f"{str(h.get('params'))[:80]} but this session uses {codec_spec(codec)}; "
                                       "encode with the codec named at open, or open a new session")
    shape = h.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3 or any(type(d) is not int for d in shape)
            or shape[0] != 1 or shape[2] != hidden_size or not 1 <= shape[1] <= max_tokens):
        raise ProtocolError(BAD_TENSOR, f"payload shape {str(shape)[:60]} must be [1, T, {hidden_size}] with "
                                        f"1 <= T <= {max_tokens}")
    try:
        x = codec.decode(enc)
    except Exception as e:  # CodecError and anything a corrupted buffer provokes
        raise ProtocolError(BAD_TENSOR, f"payload does not decode with {codec.name!r}: {str(e)[:300]}") from None
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape) or not x.is_floating_point():
        raise ProtocolError(BAD_TENSOR, f"payload decoded to {type(x).__name__} {getattr(x, 'shape', '')} "
                                        f"{getattr(x, 'dtype', '')}, expected float {tuple(shape)}")
    if not _all_finite(x):
        raise ProtocolError(BAD_TENSOR, "payload holds NaN or infinite values; the server only accepts finite "
                                        "hidden states")
    return x if x.dtype is torch.float32 else x.to(torch.float32)


def _all_finite(x: torch.Tensor) -> bool:
    """torch.isfinite(x).all(), through numpy where it can (a tenth of the cost for one decode token)."""
    if x.dtype in _NP_DTYPES and x.device.type == "cpu" and not x.requires_grad:
        return bool(np.isfinite(x.numpy()).all())
    return bool(torch.isfinite(x).all())
