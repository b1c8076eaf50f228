"""What a codec puts on the wire, and the one place that tells the two frame formats apart.

EncodedTensor: a self-describing JSON header plus raw byte buffers; StepMessage: a session codec's binary
head (framing.py) plus buffers. `EncodedTensor.from_frames` looks at the first byte and returns either.
Imports point one way: errors, tensors <- framing <- encoded <- base (tests/codecs/test_codecs_imports.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from splitinfer.codecs import framing
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.tensors import MAX_HEADER_BYTES, Buffer

__all__ = ["MAX_HEADER_BYTES", "Buffer", "EncodedTensor", "StepMessage", "as_message", "header_from_bytes",
           "header_to_bytes"]


def header_to_bytes(header: dict[str, Any]) -> bytes:
    """Canonical wire form of a header: compact JSON, UTF-8, no NaN/Infinity literals."""
    try:
        return json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CodecError(f"header is not plain JSON data (str/int/float/bool/None/list/dict): {e}") from e


def header_from_bytes(frame: Buffer) -> dict[str, Any]:
    """Parse a header frame; anything but a JSON object raises CodecError."""
    raw = memoryview(frame).cast("B")
    if len(raw) > MAX_HEADER_BYTES:
        raise CodecError(f"header frame is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit")
    try:
        header = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodecError(f"header frame is not UTF-8 JSON: {e}") from e
    if not isinstance(header, dict):
        raise CodecError(f"header must be a JSON object, got {type(header).__name__}")
    return header


@dataclass
class EncodedTensor:
    """What a codec puts on the wire: `header` (plain JSON-able dict naming codec, params, dtype,
    shape and per-stage metadata) and `buffers` (raw bytes, in the order the codec defines).

    `nbytes` is the true wire size: compact-JSON header + all buffers.
    """

    header: dict[str, Any]
    buffers: list[Buffer] = field(default_factory=list)

    def header_bytes(self) -> bytes:
        return header_to_bytes(self.header)

    @property
    def nbytes(self) -> int:
        return len(self.header_bytes()) + sum(memoryview(b).nbytes for b in self.buffers)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.header.get("shape", []):
            n *= int(d)
        return n

    def bits_per_value(self) -> float:
        """Wire bits per tensor element (header included); inf for an empty tensor."""
        return self.nbytes * 8 / self.numel if self.numel else float("inf")

    def to_frames(self) -> list[Buffer]:
        """ZeroMQ multipart frames: the JSON header first, then each buffer unchanged (no copies)."""
        return [self.header_bytes(), *self.buffers]

    @classmethod
    def from_frames(cls, frames: Sequence[Buffer]) -> EncodedTensor:
        """Inverse of `to_frames`; accepts bytes, memoryviews or anything exposing the buffer protocol
        (e.g. zmq.Frame). Buffers are kept as zero-copy memoryviews; the codec validates them.
        A session message (binary head, see framing.py) comes back as a `StepMessage`."""
        if len(frames) == 0:
            raise CodecError("no frames: expected a JSON header frame followed by buffer frames")
        if cls is EncodedTensor:
            try:
                session = framing.is_session_head(frames[0])
            except TypeError as e:
                raise CodecError(f"every frame must be bytes-like: {e}") from e
            if session:
                return StepMessage.from_frames(frames)
        try:
            buffers: list[Buffer] = [memoryview(f).cast("B") for f in frames[1:]]
        except TypeError as e:
            raise CodecError(f"every frame must be bytes-like: {e}") from e
        return cls(header_from_bytes(frames[0]), buffers)


@dataclass
class StepMessage(EncodedTensor):
    """A session message: `head` (the binary frame of framing.py) + buffers. `header` is the parsed head, a
    dict with "shape" and "dtype" like a codec header (so links count tokens the same way); "session"
    is True."""

    head: bytes = b""

    def header_bytes(self) -> bytes:
        return self.head

    @property
    def nbytes(self) -> int:
        return len(self.head) + sum(memoryview(b).nbytes for b in self.buffers)

    def to_frames(self) -> list[Buffer]:
        return [self.head, *self.buffers]

    @classmethod
    def build(cls, flags: int, dtype: str, seq: int, shape: Sequence[int], crc: int, meta: dict[str, Any],
              buffers: list[Buffer], code: int | None = None, fmt: int = framing.FORMAT) -> StepMessage:
        head = framing.pack_head(flags, dtype, seq, shape, crc, meta, code, fmt)
        header = {"flags": flags, "dtype": dtype, "seq": seq, "shape": list(shape), "crc": crc, "code": code,
                  "meta": meta, "session": True, "format": fmt}
        return cls(header, list(buffers), head)

    @classmethod
    def from_frames(cls, frames: Sequence[Buffer]) -> StepMessage:
        if len(frames) == 0:
            raise CodecError("no frames: expected a session head frame followed by buffer frames")
        try:
            buffers: list[Buffer] = [memoryview(f).cast("B") for f in frames[1:]]
            head = bytes(memoryview(frames[0]).cast("B"))
        except TypeError as e:
            raise CodecError(f"every frame must be bytes-like: {e}") from e
        return cls(framing.unpack_head(head), buffers, head)


def as_message(enc: Any) -> StepMessage:
    """`enc` as a session message, or a CodecError that says which format it is instead."""
    if isinstance(enc, StepMessage):
        return enc
    if isinstance(enc, EncodedTensor):
        raise CodecError(f"a session codec decodes session messages (binary head), got a self-describing header "
                         f"for codec {str(enc.header.get('codec'))[:40]!r}; decode it with decode_any(enc)")
    raise CodecError(f"decode expects a session message, got {type(enc).__name__}")
