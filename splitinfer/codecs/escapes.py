"""Escapes: the rare step codes beyond int8 travel exactly beside the int8 codes the entropy coders see.

Why: a step-quantized code is bounded by sqrt(cols) / step (~141 for 576 channels at step 0.17), so at
small steps a handful of the ~150 000 codes of a prefill window exceed +-127. The entropy coders (rans.py,
entropy.py, adaptive.py) take int8 codes only; before, one such code sent the whole message as int16
through zstd (5.5-6.9 instead of ~4.3 bits per value at cuts 3-10, issue 28). Now those codes are clamped
to +-127 in the array the coders (and their previous-token prediction, on both halves) see, and their
exact values follow in two small buffers:
  esc_pos uint32   flat positions in the (rows, cols) code array, strictly increasing
  esc_val int16    the codes at those positions (|v| > 127)
6 bytes per escape; the header meta "escapes" is their count. Measured on SmolLM2 at cuts 3-8 of the licenses
text (steps 0.15-0.17, probes/escape_probe.txt): ~2 escapes per 224-token prefill (at most 7), and one in ~1 %
of one-token steps; varint-coded position deltas would save 0.0002 bit per value of a prefill and 0.028 of an
escaped step: not worth a varint parser on network data.
A message with escapes carries its own format version (ESCAPED_FORMAT: 1 -> 4 for the old coder, 3 -> 5 for
the compiled coder; the JSON header's "v" and the session head's format alike), so a peer that does not know these buffers refuses it
as another wire format (bad_codec) instead of misreading it; messages without escapes are unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.tensors import Buffer

LIMIT = 127  # codes the int8 coders take: -127..127 (the clamped value +-127 marks an escape)
ESCAPED_FORMAT = {1: 4, 3: 5}  # a codec's format version -> that of its messages with escapes (2: no longer written)
MAX_SHARE = 1 / 8  # more escapes than this share of the codes: int16 codes cost less (2 vs 1 + 6/8 bytes)


def split(q: np.ndarray) -> tuple[np.ndarray, int, list[bytes]] | None:
    """(rows, cols) integer codes -> (the codes clamped to +-LIMIT, the number of escapes, [esc_pos, esc_val]
    bytes), or None when there is nothing to escape or too much (over MAX_SHARE of the codes: int16 is smaller)."""
    flat = q.reshape(-1)
    pos = np.flatnonzero(np.abs(flat) > LIMIT)
    if pos.size == 0 or pos.size > MAX_SHARE * flat.size:
        return None
    bufs = [pos.astype("<u4").tobytes(), flat[pos].astype("<i2").tobytes()]
    return np.clip(q, -LIMIT, LIMIT), int(pos.size), bufs


def mark(meta: dict[str, Any], n: int) -> None:
    """Record n escapes in the header meta: the codes are int8 now (no "code_dtype")."""
    meta.pop("code_dtype", None)
    meta["escapes"] = n


def version(base: int, meta: dict[str, Any]) -> int:
    """The format version of a message of a codec of format `base` with this meta."""
    return ESCAPED_FORMAT[base] if "escapes" in meta else base


def versions(base: int) -> tuple[int, int]:
    """The versions a codec of format `base` that may escape codes reads."""
    return base, ESCAPED_FORMAT[base]


def check_version(v: int, base: int, meta: dict[str, Any]) -> None:
    """A message's version must say escapes exactly when its meta counts some (both are covered by the CRC, so
    a mismatch is a forged or broken encoder, not a flipped bit)."""
    if v != version(base, meta):
        raise CodecError(f"format version {v} with meta escapes={meta.get('escapes')!r}: escaped codes travel in "
                         f"version {ESCAPED_FORMAT[base]}, none in {base}; the encoder is broken or forged")


def nbytes(n: int) -> tuple[int, int]:
    """Byte lengths of the (esc_pos, esc_val) buffers of n escapes."""
    return 4 * n, 2 * n


def valid_count(n, numel: int) -> bool:
    """Header meta "escapes": a positive int no larger than the share split() ever sends."""
    return type(n) is int and 0 < n <= MAX_SHARE * numel


def restore(q: np.ndarray, pos_buf: Buffer, val_buf: Buffer, n: int) -> np.ndarray:
    """The decoded clamped codes with the escaped values written back (a new int64 array).
    CodecError unless the buffers hold n positions strictly increasing inside q, each at a clamped code of
    the value's sign, and n values beyond +-LIMIT: anything else is corrupted data."""
    want_pos, want_val = nbytes(n)
    got_pos, got_val = memoryview(pos_buf).nbytes, memoryview(val_buf).nbytes
    if (got_pos, got_val) != (want_pos, want_val):
        raise CodecError(f"escape buffers have {got_pos} and {got_val} bytes, the header's {n} escapes need "
                         f"{want_pos} and {want_val}: truncated data or a header that does not match")
    pos = np.frombuffer(memoryview(pos_buf).cast("B"), dtype="<u4").astype(np.int64)
    vals = np.frombuffer(memoryview(val_buf).cast("B"), dtype="<i2").astype(np.int64)
    if int(pos[-1]) >= q.size or (n > 1 and bool((np.diff(pos) <= 0).any())):
        raise CodecError(f"escape positions must increase strictly and stay below {q.size} (got {pos[:8].tolist()}"
                         f"{' ...' if n > 8 else ''}): corrupted data")
    if bool((np.abs(vals) <= LIMIT).any()):
        raise CodecError(f"escaped codes must lie beyond +-{LIMIT}: corrupted data")
    out = q.astype(np.int64).reshape(-1)  # a copy: q stays the clamped codes the coder's state follows
    if not np.array_equal(out[pos], np.where(vals > 0, LIMIT, -LIMIT)):
        raise CodecError(f"escape positions do not hold clamped codes (+-{LIMIT}) of the escaped values' signs: "
                         "corrupted data or a session out of step")
    out[pos] = vals
    return out.reshape(q.shape)
