"""Hidden states on the wire, server side: the checks on what a session decodes.

A session names its codec at open as a spec (`{"name": ..., **params}`, what `Codec.spec()` gives);
`splitinfer.split.wire` builds it (`"none"` = raw tensor bytes). Here every payload is validated
before use: header, codec, shape, finiteness. Session codecs (`<preset>_s`, codecs/session.py) send a
binary head instead of a JSON header; the shape in it is checked the same way before decoding, and an
adaptive codec's instance (one per session, built at open) keeps the session's state: steps must be
decoded once each, in order (a replay into a new session rebuilds the state from the same frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from splitinfer.codecs.errors import CodecFormatError
from splitinfer.codecs.session import AdaptiveStepCodec, SessionCodec
from splitinfer.split.wire import _NP_DTYPES, NONE, RawCodec, codec_spec, default_codec, resolve_codec
from splitinfer.transport.protocol import BAD_CODEC, BAD_TENSOR, ProtocolError

SESSION_TYPES = (SessionCodec, AdaptiveStepCodec)

__all__ = ["NONE", "RawCodec", "build_session_codec", "codec_spec", "decode_hidden", "default_codec"]


def build_session_codec(spec: Any):
    """`resolve_codec` for a spec that came over the network: any failure is a `bad_codec` reply."""
    try:
        return resolve_codec(spec)
    except Exception as e:  # CodecError, KeyError, TypeError from a hostile spec
        raise ProtocolError(BAD_CODEC, f"codec spec {str(spec)[:120]} is not usable: {e}") from None


def decode_hidden(codec, frames, hidden_size: int, max_tokens: int, decode=None) -> torch.Tensor:
    """Decode a step's payload frames (codec header + buffers) into a (1, T, hidden) float tensor.

    The shape in the header is checked before decoding (so a header cannot make us allocate much),
    and the result must be finite. `decode(enc, codec)` is the engine's decode (`ServerHalf.decode`:
    the session's codec, float32 on the CPU; the engine places it on its device and dtype when the
    step runs); by default the codec's own.
    """
    from splitinfer.codecs.encoded import EncodedTensor

    if not frames:
        raise ProtocolError(BAD_TENSOR, "a step carries no payload; send the codec's frames after the envelope")
    try:
        enc = EncodedTensor.from_frames(frames)
    except CodecFormatError as e:  # a peer of another version: agree on a codec, resending will not help
        raise ProtocolError(BAD_CODEC, f"payload is in a wire format this server does not read: {e}") from None
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested ~1000 deep
        raise ProtocolError(BAD_TENSOR, f"payload is not a codec message: {e}") from None
    h = enc.header
    if h.get("session") or isinstance(codec, SESSION_TYPES):
        # session format (codecs/framing.py): codec and params were agreed at open, the head has no names
        if not (h.get("session") and isinstance(codec, SESSION_TYPES)):
            raise ProtocolError(BAD_CODEC, f"payload is in the {'session' if h.get('session') else 'self-describing'} "
                                           f"format but this session's codec {codec_spec(codec)} expects the "
                                           f"{'session' if isinstance(codec, SESSION_TYPES) else 'self-describing'} "
                                           "one; encode with the codec named at open")
    elif h.get("codec") != codec.name or h.get("params", {}) != dict(getattr(codec, "overrides", {}) or {}):
        raise ProtocolError(BAD_CODEC, f"payload is encoded with codec {str(h.get('codec'))[:60]!r} params "
                                       f"{str(h.get('params'))[:80]} but this session uses {codec_spec(codec)}; "
                                       "encode with the codec named at open, or open a new session")
    shape = h.get("shape")
    if (not isinstance(shape, list) or len(shape) != 3 or any(type(d) is not int for d in shape)
            or shape[0] != 1 or shape[2] != hidden_size or not 1 <= shape[1] <= max_tokens):
        raise ProtocolError(BAD_TENSOR, f"payload shape {str(shape)[:60]} must be [1, T, {hidden_size}] with "
                                        f"1 <= T <= {max_tokens}")
    try:
        x = decode(enc, codec) if decode is not None else codec.decode(enc)
    except CodecFormatError as e:  # e.g. an old client's session head (format 1) against the compiled coder's 2
        raise ProtocolError(BAD_CODEC, f"payload does not decode with {codec.name!r}: {str(e)[:300]}") from None
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
