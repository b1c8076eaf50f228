"""How a codec is named and built for the split path.

`"none"` is `splitinfer.codecs.raw.RawCodec` (the raw tensor bytes behind a small JSON header), so every
payload is a codec message; it is imported here for transport/payload.py, which names it from this module.
"""

from __future__ import annotations

from typing import Any

from splitinfer.codecs.raw import NONE, RawCodec
from splitinfer.codecs.tensors import NP_DTYPES

__all__ = ["NONE", "RawCodec", "codec_spec", "default_codec", "resolve_codec"]

_NP_DTYPES = NP_DTYPES  # transport/payload.py's name for the codecs' table (one table, codecs/tensors.py)


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
    """The JSON-able spec that rebuilds `codec` on the other side (sent once when a session opens):
    `splitinfer.codecs.registry.wire_spec` (it names the entropy coder, so an old peer refuses at open)."""
    from splitinfer.codecs.registry import wire_spec

    return wire_spec(codec)
