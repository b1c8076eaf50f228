"""The transform stages the pipeline codec and the session codecs share, and their one metadata schema.

Encode side: each stage takes the (rows, cols) float32 view, records its data-dependent choices in `meta`
(names from META) and appends its buffers to `parts`, in wire order:
  nonfinite_idx int64, nonfinite_val float32      positions/values of NaN and +-Inf (zeros in the data)
  row_idx int32, row_val fp16|fp32                outlier tokens (whole rows, tokens.py)
  means fp16                                      per-channel means (centering.py)
  steps fp16|fp32, then the codes                 step quantization (stepquant.py)
  esc_pos uint32, esc_val int16                   codes beyond int8 of entropy-coded messages (escapes.py)
Decode side: `read_*` turn those buffers back into checked tensors (sizes, ranges), `restore_*` put the
side data back. PipelineCodec (pipeline.py) and AdaptiveStepCodec (session.py) both call these, so the two
reconstruct bit for bit alike; only where the codes go (static rANS, the session's adaptive model) differs.

META is the one vocabulary of those choices: its long names are what a self-describing JSON header
carries; the session head (framing.py) spells the same entries with the short keys beside them to save
bytes on one-token steps, and carries the most common ones (centering, coding mode) in its code byte.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from splitinfer.codecs import centering, stepquant, tokens
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.tensors import Buffer, from_bytes, to_bytes

# name -> (JSON type, session head spelling or None where the head's code byte carries it)
META: dict[str, tuple[type, str | None]] = {
    "nonfinite": (int, "nf"),  # count of NaN/Inf values
    "outlier_rows": (int, "or"),  # count of outlier tokens
    "row_dtype": (str, "rd"),  # "float32" when an outlier token does not fit float16
    "centered": (bool, None),  # the message sends its own channel means
    "session_means": (bool, None),  # (session) centred on the session's last means instead
    "outlier_dtype": (str, "od"),  # "float32" when an outlier channel value does not fit float16
    "scale_dtype": (str, "sd"),  # "float32" when a float16 scale/step would over- or underflow
    "code_dtype": (str, "cd"),  # "int16" when step-quantized integers do not fit int8 (and are not escaped)
    "escapes": (int, "e"),  # count of codes beyond int8 sent beside clamped int8 codes (escapes.py)
    "value_dtype": (str, "vd"),  # "float32" when a finite value would overflow the float_dtype cast
    "rans": (list, "r"),  # [lo, hi, n_words] of a static-table rANS stream (entropy.py / rans.py)
    "compressed": (list, None),  # per buffer: 1 = lossless-compressed (the session head: bitmask "Z")
    "mode": (str, None),  # (session) where the codes went: see session.MODES
    "ref_row": (int, "p"),  # (session) a one-token step predicted from this earlier row (0 = the last)
    "ref_rows": (int, "rr"),  # (session, refs=true) count of prefill rows coded against an earlier row (refrows.py)
}
_SHORT = {short: name for name, (_, short) in META.items() if short}


def check_types(meta: dict[str, Any], what: str = "header meta") -> None:
    """Every key known, every value of its type (a JSON true must not pass as an int)."""
    for key, value in meta.items():
        if key not in META:
            raise CodecError(f"{what} has unknown key {key!r}; known: {sorted(META)}")
        if type(value) is not META[key][0]:
            raise CodecError(f"{what} {key}={value!r} must be a {META[key][0].__name__}")


def to_head(meta: dict[str, Any]) -> dict[str, Any]:
    """The session head's spelling of the entries that have one."""
    return {META[k][1]: v for k, v in meta.items() if META[k][1]}


def from_head(rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of to_head, with the same checks as check_types."""
    for key in rest:
        if key not in _SHORT:
            raise CodecError(f"session head meta has unknown key {key!r}; known: {sorted(_SHORT)}")
    meta = {_SHORT[k]: v for k, v in rest.items()}
    check_types(meta, "session head meta")
    return meta


def float_dtype(meta: dict[str, Any], key: str) -> torch.dtype:
    """float16 unless the encoder had to fall back to float32 for `key`'s values."""
    return torch.float32 if meta.get(key) == "float32" else torch.float16


# ----------------------------------------------------------------------------- encode
def encode_nonfinite(v: torch.Tensor, meta: dict[str, Any], parts: list[Buffer]) -> tuple[torch.Tensor, bool]:
    """NaN/Inf travel exactly on a side channel, as zeros in the data -> (v, whether v is a new tensor)."""
    if math.isfinite(float(v.sum())):  # cheap screen: a NaN or Inf makes the sum non-finite
        return v, False
    finite = torch.isfinite(v)
    bad = (~finite).reshape(-1).nonzero().reshape(-1)
    if not bad.numel():
        return v, False
    meta["nonfinite"] = bad.numel()
    parts += [to_bytes(bad), to_bytes(v.reshape(-1)[bad])]
    return torch.where(finite, v, torch.zeros((), dtype=v.dtype)), True


def encode_outlier_rows(v: torch.Tensor, idx: torch.Tensor, meta: dict[str, Any], parts: list[Buffer]) -> torch.Tensor:
    """Rows `idx` (tokens.find_outlier_rows) go whole in float16 (float32 if they do not fit)."""
    if not idx.numel():
        return v
    vals = v[idx]
    vdtype = tokens.row_value_dtype(vals)
    meta["outlier_rows"] = idx.numel()
    if vdtype == torch.float32:
        meta["row_dtype"] = "float32"
    parts += [to_bytes(idx.to(torch.int32)), to_bytes(vals.to(vdtype))]
    return tokens.without_rows(v, idx)


def encode_means(v: torch.Tensor, meta: dict[str, Any], parts: list[Buffer]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre on the message's own channel means (sent in float16) -> (v - means, means)."""
    mean = centering.channel_means(v)
    meta["centered"] = True
    parts.append(to_bytes(mean.to(torch.float16)))
    return v - mean, mean


def step_quantize(v: torch.Tensor, step: float, meta: dict[str, Any], parts: list[Buffer]) -> np.ndarray:
    """Round each row to multiples of step x its RMS; the steps go on the wire -> (rows, cols) int64 codes.
    A message whose rows all went elsewhere (outlier tokens) still sends its (empty) steps buffer."""
    steps, stored = stepquant.row_steps(v, step)
    codes, code_dtype = stepquant.quantize_steps(v, steps)
    if stored == "float32":
        meta["scale_dtype"] = "float32"
    if code_dtype == "int16":
        meta["code_dtype"] = "int16"
    parts.append(to_bytes(steps.to(float_dtype(meta, "scale_dtype"))))
    return codes.reshape(v.shape).astype(np.int64)


# ----------------------------------------------------------------------------- decode
def checked_index(idx: torch.Tensor, limit: int, what: str) -> torch.Tensor:
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= limit):
        raise CodecError(f"{what} indices fall outside 0..{limit - 1}: corrupted data")
    return idx.long()


def read_nonfinite(idx_buf: Buffer, val_buf: Buffer, n: int, numel: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = checked_index(from_bytes(idx_buf, torch.int64, n, "nonfinite_idx"), numel, "non-finite")
    return idx, from_bytes(val_buf, torch.float32, n, "nonfinite_val")


def restore_nonfinite(v: torch.Tensor, side: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """v flattened, with the NaN/Inf of read_nonfinite put back (v unchanged without any)."""
    if side is None:
        return v
    return v.reshape(-1).index_put_((side[0],), side[1])


def read_outlier_rows(idx_buf: Buffer, val_buf: Buffer, meta: dict[str, Any], rows: int,
                      cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = meta["outlier_rows"]
    idx = checked_index(from_bytes(idx_buf, torch.int32, n, "row_idx"), rows, "outlier token")
    if torch.unique(idx).numel() != idx.numel():
        raise CodecError("outlier token indices repeat: corrupted data")
    vals = from_bytes(val_buf, float_dtype(meta, "row_dtype"), n * cols, "row_val")
    return idx, vals.to(torch.float32).reshape(n, cols)


def restore_outlier_rows(v: torch.Tensor, side: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    return v if side is None else tokens.with_rows(v, *side)


def read_means(buf: Buffer, cols: int) -> torch.Tensor:
    return from_bytes(buf, torch.float16, cols, "means").to(torch.float32)


def read_steps(buf: Buffer, n_rows: int, meta: dict[str, Any]) -> torch.Tensor:
    steps = from_bytes(buf, float_dtype(meta, "scale_dtype"), n_rows, "steps").to(torch.float32)
    if not bool(torch.isfinite(steps).all()) or bool((steps < 0).any()):
        raise CodecError("step buffer holds negative or non-finite steps: corrupted data")
    return steps
