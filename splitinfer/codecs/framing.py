"""The session wire format: a few bytes of binary framing per step instead of a self-describing header.

When a session opens, both halves agree on the codec and its params (the spec sent at open), so a step
need not repeat them. A session message is one binary head frame followed by the codec's buffers:

    magic 0xB5 | bits: format (3) has_meta has_code key dtype (2) | seq varint | ndim u8 | dims varints |
    crc u32 | code u8 (if has_code) | meta: compact JSON of the rarer data-dependent choices (if has_meta)

12 bytes for a one-token (1, 1, 576) step with no meta (1.0 % of its fp16 payload, against ~96 bytes of
JSON header), 13 with the code byte a session codec uses for its common per-step choices. `crc` is the
CRC-32 of the full header the receiver rebuilds from the agreed spec plus this frame (codec, params,
dtype, shape, seq, flags, code, meta) and of every buffer, so a flipped bit anywhere, or a message
decoded with the wrong spec, fails the check. The first byte (0xB5) can never start a JSON header, so
`EncodedTensor.from_frames` tells the two formats apart.

Formats 6 and 7 (codecs with refs=true, refrows.py) shorten the head of a one-token step: a shape whose dims
are all 1 but the last goes as `0x80 | ndim` and the last dim (3 bytes instead of 5 for (1, 1, 576)), and the
reference row of an adaptive step (meta "p") as one byte after the code byte, whose bit 4 announces it (instead
of 7-8 bytes of JSON): 11-12 bytes for a (1, 1, 576) step instead of 13-21.

flags bit 0 = key: the message decodes on its own and leaves the session's adaptive state untouched
(what `codec.encode(x)` gives); without it the message is step `seq` of the session and is decoded
against the state both halves built from steps 0..seq-1 (`codec.encode_step(x)`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from typing import Any

from splitinfer.codecs.errors import CodecError, CodecFormatError
from splitinfer.codecs.escapes import ESCAPED_FORMAT
from splitinfer.codecs.refrows import REFS_FORMAT
from splitinfer.codecs.tensors import DTYPES, MAX_HEADER_BYTES, MAX_NDIM, Buffer, read_shape

MAGIC = 0xB5
FORMAT = 1  # the generic session codec (any preset's buffers behind the head)
FORMAT_COMPILED = 2  # the adaptive ecNNg_s codecs since their entropy coder is constriction's ANS (entropy.py)
FORMAT_TRIMMED = 3  # the same with each channel group's static model over its own support (entropy.static_models)
# a message with escaped codes beyond int8 (escapes.py) carries its own format: 4 (old coder), 5 (compiled)
# 6/7: 3/5 with reference rows (refrows.py); 0 is the one number left for a future layout
FORMATS = (FORMAT, FORMAT_COMPILED, FORMAT_TRIMMED, *(ESCAPED_FORMAT[f] for f in (FORMAT, FORMAT_TRIMMED)),
           *REFS_FORMAT.values())
COMPACT_FORMATS = tuple(REFS_FORMAT.values())  # the heads with the short shape and the binary reference row
_SHORT_SHAPE = 0x80  # ndim byte: only the last dim follows, the others are 1 (compact formats)
_REF_BYTE = 0x10  # code byte: the reference row follows as one byte (compact formats)
FLAG_KEY = 1
_DTYPE_CODES = tuple(DTYPES)  # "float32", "float16", "bfloat16" -> 0, 1, 2
_MAX_SEQ = 2**32 - 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    n = shift = 0
    for i in range(pos, min(pos + 5, len(buf))):
        b = buf[i]
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i + 1
        shift += 7
    raise CodecError("session head: a shape dimension is truncated or longer than 5 bytes")


def pack_head(flags: int, dtype: str, seq: int, shape: Sequence[int], crc: int, meta: dict[str, Any],
              code: int | None = None, fmt: int = FORMAT) -> bytes:
    if not 0 <= seq <= _MAX_SEQ:
        raise CodecError(f"session step number {seq} does not fit 32 bits; open a new session")
    compact = fmt in COMPACT_FORMATS
    ref = meta.get("p") if compact and code is not None else None
    if type(ref) is int and 0 <= ref <= 255:  # the reference row goes as a byte, not as JSON
        meta = {k: v for k, v in meta.items() if k != "p"}
    else:
        ref = None
    bits = _DTYPE_CODES.index(dtype) | (flags & FLAG_KEY) << 2 | (code is not None) << 3 | bool(meta) << 4
    head = bytearray((MAGIC, bits | fmt << 5))
    head += _varint(seq)
    if compact and shape and all(int(d) == 1 for d in shape[:-1]):
        head.append(_SHORT_SHAPE | len(shape))
        head += _varint(int(shape[-1]))
    else:
        head.append(len(shape))
        for d in shape:
            head += _varint(int(d))
    head += struct.pack("<I", crc)
    if code is not None:
        head += bytes((code,)) if ref is None else bytes((code | _REF_BYTE, ref))
    if meta:
        head += json.dumps(meta, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return bytes(head)


def unpack_head(frame: Buffer) -> dict[str, Any]:
    """Parse and validate a head frame -> {"flags", "dtype", "seq", "shape", "crc", "code", "meta"}."""
    raw = memoryview(frame).cast("B")
    if len(raw) > MAX_HEADER_BYTES:
        raise CodecError(f"session head is {len(raw)} bytes, over the {MAX_HEADER_BYTES}-byte limit")
    if len(raw) < 8 or raw[0] != MAGIC:
        raise CodecError(f"not a session message head ({len(raw)} bytes, first byte "
                         f"{raw[0] if len(raw) else None!r}, expected {MAGIC} and >= 8 bytes)")
    bits = raw[1]
    if bits >> 5 not in FORMATS:
        raise CodecFormatError(f"session head format {bits >> 5} is not supported (this peer reads {FORMATS}): the "
                         "peer runs another splitinfer version; run the same version on both halves")
    dcode, flags, has_code, has_meta = bits & 3, (bits >> 2) & 1, (bits >> 3) & 1, (bits >> 4) & 1
    if dcode >= len(_DTYPE_CODES):
        raise CodecError(f"session head dtype code {dcode} is not one of 0..{len(_DTYPE_CODES) - 1}")
    seq, pos = _read_varint(raw, 2)
    if seq > _MAX_SEQ:
        raise CodecError(f"session head step number {seq} is over 32 bits")
    if pos >= len(raw):
        raise CodecError("session head is truncated before its shape")
    ndim, pos = raw[pos], pos + 1
    compact = bits >> 5 in COMPACT_FORMATS
    short = compact and bool(ndim & _SHORT_SHAPE)
    if short:
        ndim &= ~_SHORT_SHAPE
    if ndim > MAX_NDIM or (short and ndim == 0):
        raise CodecError(f"session head announces {ndim} dims, not 1..{MAX_NDIM}" if short else
                         f"session head announces {ndim} dims, over {MAX_NDIM}")
    shape = [1] * (ndim - 1) if short else []
    for _ in range(1 if short else ndim):
        d, pos = _read_varint(raw, pos)
        shape.append(d)
    if pos + 4 + has_code > len(raw):
        raise CodecError("session head is truncated before its checksum")
    crc = struct.unpack_from("<I", raw, pos)[0]
    pos += 4
    code, ref = None, None
    if has_code:
        code, pos = raw[pos], pos + 1
        if compact and code & _REF_BYTE:
            if pos >= len(raw):
                raise CodecError("session head is truncated before its reference row")
            code, ref, pos = code & ~_REF_BYTE, raw[pos], pos + 1
    meta: Any = {}
    if has_meta:
        try:
            meta = json.loads(bytes(raw[pos:]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CodecError(f"session head meta is not UTF-8 JSON: {e}") from e
        if not isinstance(meta, dict) or not meta:
            raise CodecError(f"session head meta must be a non-empty JSON object, got {str(meta)[:60]}")
    elif pos != len(raw):
        raise CodecError(f"session head has {len(raw) - pos} stray bytes after its checksum")
    if ref is not None:
        if "p" in meta:
            raise CodecError("session head names its reference row twice (byte and meta p)")
        meta["p"] = ref
    read_shape({"shape": shape})  # the element-count limit
    return {"flags": flags, "dtype": _DTYPE_CODES[dcode], "seq": seq, "shape": shape, "crc": crc, "code": code,
            "meta": meta, "session": True, "format": bits >> 5}


def is_session_head(frame: Buffer) -> bool:
    raw = memoryview(frame).cast("B")
    return len(raw) > 0 and raw[0] == MAGIC


def full_header(name: str, overrides: dict[str, Any], head: dict[str, Any], version: int) -> dict[str, Any]:
    """The header the CRC covers: the agreed codec and params plus everything in the head."""
    return {"codec": name, "v": version, "params": dict(overrides), "dtype": head["dtype"],
            "shape": list(head["shape"]), "meta": head["meta"], "seq": head["seq"], "flags": head["flags"],
            "code": head.get("code")}
