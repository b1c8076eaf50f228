"""Reference rows: a prefill row coded against an earlier row of the same message that the encoder names.

Why: a prompt repeats tokens, and at shallow cuts a repeated token's hidden state is nearly the one it had
before. An entropy estimate on SmolLM2's codes (step 0.21, 16 windows of 256 tokens) put the saving at cut 1 at
0.67 bit per value on licenses text (3.66 -> 2.99) and 1.12 on readmes (3.63 -> 2.50), at cuts 15-29 at
0.07-0.28 bit (issue28/probes/refrow_probe.txt); the codec's measured figures are in the experiment README.
The static model (rans.static_model) predicts a code from the previous token's code in its channel; a row with a
reference is predicted by the named row whole instead (its residual = its codes minus that row's codes), so the
reconstruction is the codec's own, bit for bit: only the bits change.

Wire (session codecs with `refs=true`, a message's fresh static tables only, mode "r"): one more buffer before
the rANS side data, `back` uint8 per row, 0 = the usual prediction, b > 0 = predicted by row t - b (so b <= t and
b <= MAX_BACK); header meta "ref_rows" (head "rr") counts the rows that name one. Every message of such a codec
carries its own session format (REFS_FORMAT: 6, or 7 with escaped codes), with the shorter one-token head of
framing.py, so a peer without references refuses it as another format (bad_codec), and at open already: the
codec param `refs` is unknown to it.

Encoder: the candidate for row t is its nearest earlier row (within MAX_BACK) in Euclidean distance of a
fixed random projection of the codes to PROJ dimensions (one small matrix product per block of rows
instead of a search over all 576 channels), taken when its L1 residual is below the usual prediction's.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.tensors import Buffer

MAX_BACK = 255  # one byte per row
PROJ = 64  # dimensions of the projection the search runs in
BLOCK = 256  # rows searched per matrix product (against their MAX_BACK predecessors)
REFS_FORMAT = {3: 6, 5: 7}  # a session message's format without references -> with them


@lru_cache(maxsize=8)
def _projection(cols: int) -> np.ndarray:
    """A fixed +-1 projection (cols, PROJ): the same for every message (the encoder's choice only)."""
    return np.random.default_rng(cols).choice(np.array([-1.0, 1.0], dtype=np.float32), size=(cols, PROJ))


def choose(q: np.ndarray, res: np.ndarray) -> np.ndarray | None:
    """(rows, cols) codes and their residuals under the usual prediction -> back (rows,) uint8, or None when
    no row gains from a reference."""
    rows, cols = q.shape
    if rows < 2:
        return None
    z = q.astype(np.float32) @ _projection(cols)  # (rows, PROJ)
    norm = np.einsum("ij,ij->i", z, z)
    best = np.zeros(rows, dtype=np.int64)
    for s in range(1, rows, BLOCK):
        e = min(rows, s + BLOCK)
        c0 = max(0, s - MAX_BACK)
        d = norm[c0:e][None, :] - 2.0 * (z[s:e] @ z[c0:e].T)  # + norm[t]: the same for every candidate
        t = np.arange(s, e)[:, None]
        j = np.arange(c0, e)[None, :]
        d[(j >= t) | (t - j > MAX_BACK)] = np.inf
        best[s:e] = np.arange(s, e) - (c0 + d.argmin(axis=1))
    t = np.arange(1, rows)
    ref_cost = np.abs(q[t].astype(np.int16) - q[t - best[1:]]).sum(axis=1, dtype=np.int64)
    usual = np.abs(res[1:]).sum(axis=1, dtype=np.int64)
    use = ref_cost < usual
    if not use.any():
        return None
    back = np.zeros(rows, dtype=np.uint8)
    back[1:][use] = best[1:][use]
    return back


def apply(q: np.ndarray, res: np.ndarray, back: np.ndarray) -> None:
    """Encoder: the residual of each row that names a reference becomes its codes minus that row's (in place;
    rans.unpredict undoes it)."""
    t = np.flatnonzero(back)
    res[t] = q[t] - q[t - back[t]]


def read(buf: Buffer, rows: int, count) -> np.ndarray:
    """The `back` buffer of a message whose meta "rr" is `count` -> back (rows,) int64; CodecError unless it
    has one byte per row, no row names itself or a row before the first, and exactly `count` rows name one."""
    raw = memoryview(buf).cast("B")
    if raw.nbytes != rows:
        raise CodecError(f"reference-row buffer has {raw.nbytes} bytes, the message has {rows} rows: corrupted data")
    back = np.frombuffer(raw, dtype=np.uint8).astype(np.int64)
    if bool((back > np.arange(rows)).any()):
        raise CodecError("a reference row names a row before the message's first: corrupted data")
    if int(np.count_nonzero(back)) != count:
        raise CodecError(f"reference-row buffer names {int(np.count_nonzero(back))} rows, the head counts {count}: "
                         "corrupted data")
    return back


def valid_count(n, rows: int) -> bool:
    """Head meta "rr": a positive int, fewer than the message's rows (row 0 has nothing before it)."""
    return type(n) is int and 0 < n < rows
