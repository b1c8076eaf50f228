"""Codec interface and the header checks every codec shares (dtype, shape, checksum)."""

from __future__ import annotations

import json
import zlib
from abc import ABC, abstractmethod
from typing import Any

import torch

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError, CodecFormatError
from splitinfer.codecs.tensors import (
    DTYPE_NAMES,
    DTYPES,
    MAX_NDIM,
    MAX_NUMEL,
    Buffer,
    check_input,
    read_dtype,
    read_shape,
    saturate_for,
)

FORMAT_VERSION = 1  # of the JSON header; a codec whose buffers changed format carries its own (format_version)
FORMAT_COMPILED = 2  # entropy-coded codecs whose rANS stream comes from the compiled coder (entropy.py)
FORMAT_TRIMMED = 3  # the same with each channel group's static model over its own support (entropy.static_models)

__all__ = ["DTYPES", "DTYPE_NAMES", "FORMAT_VERSION", "MAX_NDIM", "MAX_NUMEL", "Codec", "check_input", "read_dtype",
           "read_shape", "saturate_for", "seal", "verify"]


def checksum(header: dict[str, Any], buffers: list[Buffer]) -> int:
    """CRC-32 over the header (sorted keys, without "crc") and every buffer, so any flipped bit in
    either is caught instead of decoding to a silently wrong tensor."""
    body = {k: v for k, v in header.items() if k != "crc"}
    crc = zlib.crc32(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    for b in buffers:
        crc = zlib.crc32(b, crc)
    return crc


def seal(header: dict[str, Any], buffers: list[Buffer]) -> EncodedTensor:
    header["crc"] = checksum(header, buffers)
    return EncodedTensor(header, buffers)


def verify(enc: EncodedTensor) -> None:
    crc = enc.header.get("crc")
    if type(crc) is not int:
        raise CodecError(f"header has no integer 'crc' field (got {crc!r}); was it produced by a codec?")
    try:
        actual = checksum(enc.header, enc.buffers)
    except (TypeError, ValueError) as e:
        raise CodecError(f"header or buffers are not plain data/bytes: {e}") from e
    if actual != crc:
        raise CodecError(
            f"checksum mismatch (header says {crc}, data gives {actual}): header or buffers were "
            "corrupted or truncated in transit"
        )


class Codec(ABC):
    """Turns a float tensor into an EncodedTensor and back.

    `name` is a registry name; `overrides` are the params that differ from that registry entry.
    Both go into every header so a server can rebuild the codec from the header alone.
    `decode` returns the dtype recorded in the header (the input's dtype) unless `dtype` is given.
    """

    name: str
    overrides: dict[str, Any]
    format_version: int = FORMAT_VERSION  # the header "v" this codec writes and reads

    @property
    def wire_format(self) -> str:
        """The formats this codec's messages are written in ("v<header version>", plus ".<session-head format>"
        for session codecs): figures measured under another format have other bytes (the benchmark's --reuse)."""
        return f"v{self.format_version}"

    @property
    def format_versions(self) -> tuple[int, ...]:
        """Every header "v" this codec reads: its own, and (codecs that escape codes, escapes.py) its
        messages with escaped codes."""
        return (self.format_version,)

    @abstractmethod
    def encode(self, x: torch.Tensor) -> EncodedTensor: ...

    @abstractmethod
    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor: ...

    def spec(self) -> dict[str, Any]:
        """The dict that `build_codec` turns back into an equal codec."""
        return {"name": self.name, **self.overrides}

    @property
    def label(self) -> str:
        """The name plus every param that differs from the preset, as `NAME:key=value` (JSON values; what the
        benchmark's --codecs and a sweep's `codec_ran` column show): `ec25g_s:refs=true:step=0.21`."""
        return ":".join([self.name, *(f"{k}={json.dumps(v)}" for k, v in sorted(self.overrides.items()))])

    def bits_per_value(self, enc: EncodedTensor, numel: int | None = None) -> float:
        n = enc.numel if numel is None else numel
        return enc.nbytes * 8 / n if n else float("inf")

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        return f"{type(self).__name__}({self.name!r}{extra})"

    # -- helpers shared by implementations ------------------------------------------------------
    def _new_header(self, x: torch.Tensor, meta: dict[str, Any]) -> dict[str, Any]:
        return {
            "codec": self.name,
            "v": self.format_version,
            "params": dict(self.overrides),
            "dtype": DTYPE_NAMES[x.dtype],
            "shape": list(x.shape),
            "meta": meta,
        }

    def _open(self, enc: EncodedTensor) -> tuple[tuple[int, ...], torch.dtype, dict[str, Any]]:
        """Validate the parts of a header every codec shares; return (shape, dtype, meta)."""
        if not isinstance(enc, EncodedTensor):
            raise CodecError(f"decode expects an EncodedTensor, got {type(enc).__name__}")
        h = enc.header
        if h.get("v") not in self.format_versions:
            want = " or ".join(map(str, self.format_versions))
            raise CodecFormatError(f"header format version {h.get('v')!r} is not supported by {self.name!r} (expected "
                             f"{want}; {FORMAT_COMPILED} and {FORMAT_TRIMMED} = rans streams of the compiled coder, "
                             "first and second version; 4/5 = 1/3 with escaped codes): the peer runs another splitinfer "
                             "version or codec params; run the same on both halves")
        if h.get("codec") != self.name:
            raise CodecError(f"header is for codec {h.get('codec')!r} but this decoder is {self.name!r}; "
                             "use splitinfer.codecs.decode_any(enc) to pick the codec from the header")
        if h.get("params") != self.overrides:
            raise CodecError(f"header params {h.get('params')!r} differ from this codec's {self.overrides!r}; "
                             "use decode_any(enc)")
        meta = h.get("meta")
        if not isinstance(meta, dict):
            raise CodecError(f"header meta must be an object, got {meta!r}")
        shape, dtype = read_shape(h), read_dtype(h)
        verify(enc)
        return shape, dtype, meta
