"""The session-adaptive entropy model of the ecNNg_s codecs: state both halves build from what was sent.

After steps 0..seq-1 both halves hold the same `AdaptiveState`: the last channel means sent, the channel
groups and prediction weights of the last message that sent rANS side data, per-group residual counts of
every message since (turned into frequency tables with integer arithmetic every REFRESH values), the
previous code row and the last HIST_ROWS code rows. A code is predicted from the previous token's code in
its channel (k/4 x it, across message boundaries), or, for a one-token step that names a reference row,
from that earlier row whole (at shallow cuts a repeated token's hidden state comes back almost unchanged).
Residuals in -31..31 are symbols; others are escaped. The symbols go through the compiled coder
(entropy.py) or, for coder="rans_py", the old scalar rANS of rans.py with the escapes as int16 after it.
session.py runs the protocol (steps, history, rollback); this module is the model alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from splitinfer.codecs import entropy, rans
from splitinfer.codecs.errors import CodecError

_RES = 31  # residuals in -31..31 are coded directly, others as ESC plus the escaped value
ESC = 2 * _RES + 1
ALPHABET = ESC + 1
ADAPTIVE_MAX = 16384  # values: larger messages are coded with fresh tables (mode r), zstd or as bytes
HIST_ROWS = 128  # a one-token step may be predicted from any of the session's last HIST_ROWS code rows
REFRESH = 8192  # values between two rebuilds of the adaptive tables (both halves, same schedule)
COUNT_LIMIT = 1 << 22  # a group's counts are halved past this (recent statistics weigh more)


@dataclass
class AdaptiveState:
    """What both halves know after steps 0..seq-1 (ref_peak: the encoder's alone)."""

    seq: int = 0
    cols: int | None = None
    means: object | None = None  # float32 torch tensor: the last float16 means sent
    groups: np.ndarray | None = None  # (cols,) int64 table of each channel
    ks: np.ndarray | None = None  # (cols,) int64 prediction weight k (k/4 x previous code)
    counts: np.ndarray | None = None  # (K, ALPHABET) int64 residual counts per group
    model: tuple | None = None  # (freq, cum) built from counts at the last refresh
    cache: dict | None = None  # derived from model and groups, built on first use (see coder_tables)
    pending: int = 0  # values counted since that refresh
    prev: np.ndarray | None = None  # (cols,) int64 codes of the last quantized row
    hist: np.ndarray | None = None  # (<= HIST_ROWS, cols) int16 code rows sent so far (reference rows)
    ref_peak: float | None = None
    crc: int = 0  # checksum of the step that led here (to recognise an exact repeat)

    def copy(self) -> AdaptiveState:
        return replace(self, counts=None if self.counts is None else self.counts.copy())

    def sync_cols(self, cols: int) -> None:
        """A message of another width than the session's so far: its model no longer applies (both halves)."""
        if self.cols != cols:
            self.cols, self.means, self.groups, self.ks, self.counts, self.model = cols, None, None, None, None, None
            self.cache, self.prev, self.hist, self.pending = None, None, None, 0

    def coder_tables(self, coder: str):
        """The current model in the form `coder` needs: constriction models and each group's channels, or
        the scalar rANS decoder's per-channel tables. Built once per refresh, shared by copies."""
        if self.cache is None:
            self.cache = {}
        if coder not in self.cache:
            freq = self.model[0]
            if coder == "ans":
                self.cache[coder] = (entropy.models(freq), entropy.group_channels(self.groups, freq.shape[0]))
            else:
                per_group = rans.scalar_tables(freq, rans.SCALAR_BITS)
                self.cache[coder] = [per_group[g] for g in self.groups.tolist()]
        return self.cache[coder]


def _predict(prev: np.ndarray, ks: np.ndarray) -> np.ndarray:
    return (ks * prev + 2) >> 2


def _prev_rows(q: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    first = np.zeros((1, q.shape[1]), np.int64) if prev is None else prev[None]
    return np.concatenate([first, q[:-1]], axis=0)


def _symbols(res: np.ndarray) -> np.ndarray:
    return np.where(np.abs(res) <= _RES, res + _RES, ESC)


def prediction(q: np.ndarray, st: AdaptiveState, ref: int | None) -> np.ndarray:
    """What each code row is predicted from: k/4 x the previous row (per channel), or, for a one-token
    step that names a reference, that earlier row of the session whole."""
    pred = _predict(_prev_rows(q, st.prev), st.ks)
    if ref is not None:
        pred[0] = st.hist[-1 - ref]
    return pred


def pick_reference(q: np.ndarray, st: AdaptiveState) -> int | None:
    """Encoder only: the earlier row closest to a one-token step's codes, if it predicts better (L1)."""
    if q.shape[0] != 1 or st.hist is None:
        return None
    cost = np.abs(st.hist - q[0].astype(np.int16)).sum(axis=1, dtype=np.int32)  # hist is int16: 4x less to read
    j = int(cost.argmin())
    normal = int(np.abs(q[0] - _predict(_prev_rows(q, st.prev)[0], st.ks)).sum())
    return len(st.hist) - 1 - j if int(cost[j]) < normal else None


def encode(q: np.ndarray, st: AdaptiveState, ref: int | None, coder: str) -> tuple[bytes, np.ndarray]:
    """(rows, cols) codes -> (the adaptive stream with the escaped residuals, the symbols: advance's input)."""
    res = q - prediction(q, st, ref)
    sym = _symbols(res)
    if coder == "ans":
        group_models, chans = st.coder_tables(coder)
        return entropy.encode_groups(sym, chans, group_models, res[sym == ESC]).astype("<u4").tobytes(), sym
    flat = sym.reshape(-1)
    gi = np.broadcast_to(st.groups, q.shape).reshape(-1)
    freq, cum = st.model
    stream = rans.encode_scalar(freq[gi, flat].tolist(), cum[gi, flat].tolist(), rans.SCALAR_BITS)
    return stream + res.reshape(-1)[flat == ESC].astype("<i2").tobytes(), sym


def decode(buf, n_rows: int, cols: int, st: AdaptiveState, ref: int | None, coder: str) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of encode -> ((n_rows, cols) int64 codes, their symbols); CodecError on anything inconsistent."""
    if coder == "ans":
        group_models, chans = st.coder_tables(coder)
        sym, big = entropy.decode_groups(buf, n_rows, cols, chans, group_models, ESC)
    else:
        flat, rest = rans.decode_scalar(buf, n_rows * cols, st.coder_tables(coder) * n_rows, rans.SCALAR_BITS)
        sym = np.array(flat, dtype=np.int64).reshape(n_rows, cols)
        if int((sym == ESC).sum()) != len(rest):
            raise CodecError(f"adaptive rANS stream escapes {int((sym == ESC).sum())} values but carries "
                             f"{len(rest)}: corrupted")
        big = np.array(rest, dtype=np.uint16).view(np.int16).astype(np.int64)
    res = sym - _RES
    if big.size:
        if bool((np.abs(big) <= _RES).any()) or bool((np.abs(big) > 255).any()):
            raise CodecError("adaptive rANS escaped residuals are out of range: corrupted data")
        res[sym == ESC] = big
    q = np.empty_like(res)
    prev = np.zeros(cols, np.int64) if st.prev is None else st.prev
    for t in range(n_rows):
        prev = q[t] = res[t] + (st.hist[-1 - ref] if t == 0 and ref is not None else _predict(prev, st.ks))
    if int(q.min()) < -128 or int(q.max()) > 127:
        raise CodecError("adaptive rANS codes decode outside int8: corrupted data or a session out of step")
    return q, sym


def advance(st: AdaptiveState, q: np.ndarray, ref: int | None, static_side: bytes | None, wide: bool,
            n_groups: int, sym: np.ndarray | None = None) -> None:
    """The model update both halves run after a non-empty step with codes q (static_side: the rANS side
    data the step sent, which re-seeds the groups and weights; wide: codes beyond int8; sym: the symbols
    of q under the current model when the step was coded with it, to save recomputing them)."""
    if wide:
        st.prev = None  # codes beyond int8 do not predict the next row within the residual range
        return
    cols = q.shape[1]
    if static_side is not None:
        side = np.frombuffer(static_side, dtype=np.uint8).astype(np.int64)
        st.groups, st.ks = side // 5, side % 5
        st.counts = np.zeros((max(1, min(n_groups, cols)), ALPHABET), dtype=np.int64)
        st.model, st.cache, st.pending = None, None, 0
    elif st.groups is None:
        st.groups, st.ks = np.zeros(cols, dtype=np.int64), np.zeros(cols, dtype=np.int64)
        st.counts = np.zeros((1, ALPHABET), dtype=np.int64)
    if sym is None or static_side is not None:
        sym = _symbols(q - prediction(q, st, ref))
    sym = sym.reshape(-1)
    gi = np.broadcast_to(st.groups, q.shape).reshape(-1)
    st.counts = st.counts + np.bincount(gi * ALPHABET + sym, minlength=st.counts.size).reshape(st.counts.shape)
    st.prev = q[-1].copy()
    q16 = q[-HIST_ROWS:].astype(np.int16)
    st.hist = q16 if st.hist is None else np.concatenate([st.hist, q16])[-HIST_ROWS:]
    st.pending += q.size
    if st.model is None or st.pending >= REFRESH:
        if int(st.counts.sum(axis=1).max()) > COUNT_LIMIT:
            st.counts = (st.counts + 1) >> 1
        freq = rans.freqs_from_counts(st.counts, rans.SCALAR_BITS)
        st.model, st.cache = (freq, rans.cumulative(freq)), None
        st.pending = 0
