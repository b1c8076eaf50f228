"""Static interleaved rANS for step-quantized int8 codes, one frequency table per group of channels.

Why: zstd codes every byte of the `codes` buffer with one Huffman table, but the channels of an LLM
hidden state have very different spreads, so a single table wastes the mutual information between
channel and code (plus Huffman's rounding to whole bits). Here
  1. each code is predicted from the previous token's code in its channel (round(k/4 x previous),
     k in 0..4 per channel: hidden states drift slowly in most channels) and the residual is coded;
  2. the channels are split into K groups (equal-size groups by mean |residual|, refined by a few
     k-means rounds on the code length), each group with its own frequency table;
  3. a range coder (rANS) spends -log2(p) bits per residual.
On SmolLM2 (8 x 256 tokens, ec37's codes) this takes 0.16-0.39 bit per value off zstd at cuts 4-29
(experiments/codec_rate_distortion). At cut 1, where tokens repeat and zstd's matcher finds repeated
rows, zstd stays smaller, so the encoder keeps whichever is smaller per message.

Pure numpy: LANES independent rANS states interleaved over the row-major codes (code i -> lane
i % LANES), so each step of the Python loop codes LANES values at once. 32-bit states, 16-bit words,
probabilities in SCALE_BITS bits (ryg's rans_word layout: one renormalisation per symbol at most).

Wire (three buffers, lengths from the header's meta "rans" = [lo, hi, n_words]):
  side    uint8 per channel: 5 x table index + prediction weight k (predicted code: k/4 x previous code)
  tables  uint8 per (group, residual lo..hi)    log-quantized counts: 0 = absent, else 1 + 8 log2(count)
  stream  LANES x uint32 final states, then n_words x uint16
Encoder and decoder derive the integer frequencies from the table bytes with integer arithmetic alone,
so decoding never depends on the platform's floating point.
"""

from __future__ import annotations

from array import array

import numpy as np

from splitinfer.codecs.errors import CodecError

LANES = 64
SCALE_BITS = 15
_M = 1 << SCALE_BITS
_L = 1 << 16  # lower bound of a normalized state
_MANT = np.array([256, 279, 304, 332, 362, 395, 431, 470], dtype=np.int64)  # round(256 * 2**(k/8))
MIN_VALUES = 4096  # below this the tables cost more than they save: codes go to the lossless stage
_RES = 255  # residuals of int8 codes after prediction lie in -255..255


def valid_info(info, numel: int) -> bool:
    """Header meta "rans" = [lo, hi, n_words]: residual range and word count possible for numel values."""
    return (isinstance(info, list) and len(info) == 3 and all(type(v) is int for v in info)
            and -_RES <= info[0] <= info[1] <= _RES and MIN_VALUES <= numel and 0 <= info[2] <= numel)


def lanes_for(n: int) -> int:
    return min(LANES, n)


def stream_nbytes(n: int, n_words: int) -> int:
    return 4 * lanes_for(n) + 2 * n_words


def _weights(table: np.ndarray) -> np.ndarray:
    """Table bytes -> integer weights (0 for absent symbols): MANT[(b-1) % 8] << ((b-1) // 8)."""
    b = table.astype(np.int64) - 1
    w = _MANT[np.maximum(b, 0) % 8] << (np.maximum(b, 0) // 8)
    return np.where(table > 0, w, 0)


def frequencies(tables: np.ndarray) -> np.ndarray:
    """(K, A) table bytes -> (K, A) int64 frequencies summing to 2**SCALE_BITS per group, every present
    symbol >= 1. Integer arithmetic only (encoder and decoder must agree bit for bit)."""
    w = _weights(tables)
    total = w.sum(axis=1, keepdims=True)
    if bool((total == 0).any()):
        raise CodecError("rANS table of a channel group holds no symbol: corrupted data")
    if tables.shape[1] > _M:
        raise CodecError(f"rANS alphabet of {tables.shape[1]} symbols exceeds {_M}")
    # weights are < 2**40 (byte <= 255), so w * 2**15 fits int64
    f = np.where(w > 0, np.maximum(1, (w * _M) // total), 0)
    for g in range(f.shape[0]):  # hand the rounding remainder to / take it from the largest symbols
        diff = _M - int(f[g].sum())
        order = np.argsort(-f[g], kind="stable")
        i = 0
        while diff < 0:
            s = order[i % order.size]
            take = min(-diff, int(f[g, s]) - 1)
            f[g, s] -= take
            diff += take
            i += 1
            if i > 2 * order.size and diff < 0:
                raise CodecError("rANS table cannot be normalized: corrupted data")
        f[g, order[0]] += diff
    return f


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """(K, A) symbol counts -> table bytes (encoder side only)."""
    with np.errstate(divide="ignore"):
        b = 1 + np.rint(8 * np.log2(np.maximum(counts, 1)))
    return np.where(counts > 0, np.minimum(b, 255), 0).astype(np.uint8)


def channel_histograms(res: np.ndarray, lo: int, a: int) -> np.ndarray:
    """(rows, cols) residuals in lo..lo+a-1 -> (cols, a) int64 counts of each residual per channel: one
    pass builds the (channel, residual) bin of every value in intp, np.bincount's own index type."""
    cols = res.shape[1]
    idx = np.add(res, np.arange(cols, dtype=np.intp) * a - lo, dtype=np.intp)
    return np.bincount(idx.reshape(-1), minlength=cols * a).reshape(cols, a)


def group_channels(hist: np.ndarray, lo: int, rows: int, k: int, iters: int = 6) -> np.ndarray:
    """Channel -> group id from the channels' residual histograms (encoder side only): K groups of equal
    size by mean |residual|, then a few k-means rounds that move each channel to the table that codes its
    histogram in the fewest bits (~0.01 bit per value on SmolLM2). A group may end up empty; its table is
    then a dummy."""
    cols, a = hist.shape
    k = max(1, min(k, cols))
    # mean |residual| per channel from the histogram (exact integer sums, same order as np.abs(res).mean)
    order = np.argsort((hist @ np.abs(np.arange(lo, lo + a, dtype=np.int64))) / max(rows, 1), kind="stable")
    groups = np.empty(cols, dtype=np.int64)
    for g, chans in enumerate(np.array_split(order, k)):
        groups[chans] = g
    if k == 1:
        return groups.astype(np.uint8)
    hist = hist.astype(np.float64)
    for _ in range(iters):
        counts = (groups[None, :] == np.arange(k)[:, None]).astype(np.float64) @ hist  # exact: integer sums
        counts += 0.5  # a symbol unseen in a group still costs a finite number of bits
        bits = hist @ -np.log2(counts / counts.sum(axis=1, keepdims=True)).T  # (cols, k) code lengths
        new = bits.argmin(axis=1)
        if np.array_equal(new, groups):
            break
        groups = new
    return groups.astype(np.uint8)


def predict_weights(q: np.ndarray) -> np.ndarray:
    """Per channel, k in 0..4 minimizing sum |q[t] - pred_k(q[t-1])| (encoder side only). In int16: the
    codes are int8, so k * prev + 2 and q - pred fit, and the narrow type halves the memory traffic."""
    qi = q.astype(np.int16)
    prev = np.zeros_like(qi)
    prev[1:] = qi[:-1]
    cost = np.empty((5, q.shape[1]), dtype=np.int64)
    tmp = np.empty_like(qi)
    acc = np.int32 if q.shape[0] < 1 << 22 else np.int64  # |q - pred| <= 510: int32 sums (twice as fast) fit
    for k in range(5):
        if k == 0:  # the prediction is 0
            np.copyto(tmp, qi)
        elif k == 4:  # the prediction is the previous code
            np.subtract(qi, prev, out=tmp)
        else:  # (k * prev + 2) >> 2, with k = 1, 2 in two operations: (prev + 2) >> 2, (prev + 1) >> 1
            if k == 3:
                np.multiply(prev, 3, out=tmp)
                tmp += 2
            else:
                np.add(prev, 3 - k, out=tmp)
            tmp >>= 3 - k if k < 3 else 2
            np.subtract(qi, tmp, out=tmp)
        np.abs(tmp, out=tmp)
        cost[k] = tmp.sum(axis=0, dtype=acc)
    return cost.argmin(axis=0).astype(np.uint8)


def _predict(prev: np.ndarray, k) -> np.ndarray:
    """Prediction of a code from the same channel's previous code: round(k/4 * prev), integers only (in
    prev's integer type when k is an array of it, else int64)."""
    k = k if isinstance(k, np.ndarray) and k.dtype == prev.dtype else np.asarray(k, dtype=np.int64)
    return (k * prev + 2) >> 2


def residuals(q: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """int16 codes and their prediction weights -> the residuals of the previous-token prediction (int16)."""
    prev = np.zeros_like(q)
    prev[1:] = q[:-1]
    return q - _predict(prev, ks.astype(np.int16))


def static_model(q: np.ndarray, n_groups: int, ks: np.ndarray | None = None,
                 res: np.ndarray | None = None) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """The static model of (rows, cols) int8-range codes (encoder side): each code is predicted from the
    previous token's code in its channel (weight k/4, k per channel: hidden states drift slowly in most
    channels), the residuals' channels are grouped, one table per group. -> (side bytes, groups (cols,),
    residuals (rows, cols), table bytes (K, A), frequencies (K, A), lo, hi). Both coders (this module's and
    the compiled one in entropy.py) code the residuals with exactly these frequencies.
    `ks`, `res`: the weights and residuals when the caller computed them (entropy.encode_static_refs, where
    some rows are predicted by a reference row instead, refrows.py)."""
    rows, cols = q.shape
    if res is None:
        q = q.astype(np.int16)  # int8 codes: residuals (-255..255) and predictions fit int16
        ks = predict_weights(q)
        res = residuals(q, ks)
    lo, hi = int(res.min()), int(res.max())
    a = hi - lo + 1
    k = max(1, min(n_groups, cols))
    hist = channel_histograms(res, lo, a)
    groups = group_channels(hist, lo, rows, k).astype(np.int64)
    # each group's residual counts, the sum of its channels' histograms: a float64 product is exact for
    # integer sums below 2**53 and an order of magnitude faster than np.add.at
    onehot = (groups[None, :] == np.arange(k)[:, None]).astype(np.float64)
    counts = (onehot @ hist.astype(np.float64)).astype(np.int64)
    tables = quantize_counts(counts)
    tables[counts.sum(axis=1) == 0, 0] = 1  # an empty group still needs a valid (unused) table
    side = (groups * 5 + ks).astype(np.uint8).tobytes()
    return side, groups, res, tables, frequencies(tables), lo, hi


def read_static_model(side_buf, tables_buf, cols: int, n_groups: int, lo: int,
                      hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decoder side of static_model -> (groups (cols,), prediction weights (cols,), frequencies (K, A))."""
    side = np.frombuffer(side_buf, dtype=np.uint8).astype(np.int64)
    groups, ks = side // 5, side % 5
    k = max(1, min(n_groups, cols))
    a = hi - lo + 1
    if side.size != cols or (cols and int(groups.max()) >= k):
        raise CodecError(f"rANS side data must be {cols} bytes 5 x group + weight, groups below {k}: "
                         "corrupted data")
    if memoryview(tables_buf).nbytes != k * a:
        raise CodecError(f"rANS table buffer has {memoryview(tables_buf).nbytes} bytes, expected {k * a}: "
                         "corrupted data")
    return groups, ks, frequencies(np.frombuffer(tables_buf, dtype=np.uint8).reshape(k, a))


# Prediction table of unpredict: the codes of a channel with weight k live in band k of an index space,
# index = k * 256 + code + 128, and _NEXT[index] = the prediction from that code + the band's offset, so one
# lookup and one add take a whole row to the next (the band carries k along). int64 (intp): np.take's index type.
_CODE = np.arange(-128, 128, dtype=np.int64)
_NEXT = np.concatenate([_predict(_CODE, k) + k * 256 + 128 for k in range(5)])


def unpredict(res: np.ndarray, ks: np.ndarray, back: np.ndarray | None = None) -> np.ndarray:
    """Inverse of the prediction -> (rows, cols) int8 codes from residuals (any integer type, any column
    order with `ks` in the same order); CodecError where a code falls outside int8 (corrupted data). The
    rounding makes the recursion sequential over rows, so each row is two ufunc calls over all channels
    (a lookup in _NEXT, an add), whatever their k (3-5x faster than the per-k arithmetic it replaces).
    A C-contiguous intp `res` is overwritten (callers pass a fresh one); any other is copied first.
    `back` (rows,), checked by the caller (refrows.read): row t > 0 with back[t] > 0 adds row t - back[t] instead."""
    u = res if res.dtype == np.intp and res.flags.c_contiguous else np.array(res, dtype=np.intp)
    if u.size == 0:
        return np.zeros(u.shape, dtype=np.int8)
    base = ks.astype(np.intp) * 256 + 128
    u[0] += base  # the first row is predicted from 0
    pred = np.empty(u.shape[1], dtype=np.intp)
    take = _NEXT.take  # the method: np.take's Python wrapper costs as much as the lookup of a row
    last = u[0]
    if back is None or not back.any():
        for row in u[1:]:
            # an index outside the table only follows a code outside int8, which the check below rejects;
            # "wrap" keeps such an index harmless and is the cheapest mode (quiet micro: 0.21 vs 0.24 ms clip)
            take(last, out=pred, mode="wrap")
            row += pred
            last = row
    else:  # a referenced row's index is its code + its channel's band offset, as the prediction's is
        for t, b in enumerate(back[1:].tolist(), 1):
            row = u[t]
            if b:
                row += u[t - b]
            else:
                take(last, out=pred, mode="wrap")
                row += pred
            last = row
    u -= base - 128  # code + 128
    if int(u.view(np.uintp).max()) > 255:  # negative ones wrap to huge
        raise CodecError("rANS codes decode outside int8: corrupted data or a session out of step")
    return (u.astype(np.uint8) ^ 0x80).view(np.int8)


def encode(q: np.ndarray, n_groups: int) -> tuple[bytes, bytes, bytes, list[int]]:
    """(rows, cols) integer codes in int8 range -> (side, tables, stream) bytes and meta [lo, hi, n_words]
    (this module's interleaved rANS: the coder of wire format 1)."""
    rows, cols = q.shape
    side, groups, res, tables, freq, lo, hi = static_model(q, n_groups)
    gi = np.tile(groups, rows)  # group of every code, row-major
    stream, n_words = encode_symbols(res.reshape(-1) - lo, gi, freq, cumulative(freq))
    return side, tables.tobytes(), stream, [lo, hi, n_words]


def decode(groups_buf, tables_buf, stream_buf, rows: int, cols: int, n_groups: int, lo: int, hi: int,
           n_words: int) -> np.ndarray:
    """Inverse of encode -> (rows, cols) int8 codes; CodecError on anything inconsistent."""
    groups, ks, freq = read_static_model(groups_buf, tables_buf, cols, n_groups, lo, hi)
    out = decode_symbols(stream_buf, n_words, rows * cols, np.tile(groups, rows), freq, cumulative(freq),
                         slot_table(freq))
    return unpredict((out + lo).reshape(rows, cols), ks)


# -- the coder itself, for any model (static tables above, the session-adaptive model in adaptive.py) ---------
def cumulative(freq: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros((freq.shape[0], 1), np.int64), np.cumsum(freq, axis=1)[:, :-1]], axis=1)


def slot_table(freq: np.ndarray) -> np.ndarray:
    """(K, 2**SCALE_BITS) slot -> symbol lookup of each group's table (decoder side)."""
    a = freq.shape[1]
    dtype = np.int16 if a < 2**15 else np.int32
    return np.stack([np.repeat(np.arange(a, dtype=dtype), freq[g]) for g in range(freq.shape[0])])


def freqs_from_counts(counts: np.ndarray, scale_bits: int = SCALE_BITS) -> np.ndarray:
    """(K, A) symbol counts (int64 >= 0) -> frequencies summing to 2**scale_bits per group, every symbol
    >= 1 (nothing is ever impossible). Integer arithmetic only: both halves of a session derive the same
    tables from the same counts."""
    k, a = counts.shape
    m = 1 << scale_bits
    if a >= m:
        raise CodecError(f"rANS alphabet of {a} symbols does not fit {m} slots")
    total = np.maximum(counts.sum(axis=1, keepdims=True), 1)
    f = 1 + (counts * (m - a)) // total
    f[np.arange(k), counts.argmax(axis=1)] += m - f.sum(axis=1)
    return f


def encode_symbols(sym: np.ndarray, gi: np.ndarray, freq: np.ndarray, cum: np.ndarray) -> tuple[bytes, int]:
    """Symbols `sym` (each coded with its group `gi`'s table) -> (stream bytes, number of 16-bit words)."""
    n = sym.size
    f_all, c_all = freq[gi, sym], cum[gi, sym]
    lanes = lanes_for(n)
    x = np.full(lanes, _L, dtype=np.int64)
    chunks = []
    for t in range((n + lanes - 1) // lanes - 1, -1, -1):
        s0 = t * lanes
        f, c = f_all[s0: s0 + lanes], c_all[s0: s0 + lanes]
        m = f.size
        xs = x[:m]
        emit = xs >= (f << (32 - SCALE_BITS))
        if emit.any():
            chunks.append((xs[emit] & 0xFFFF)[::-1])
            xs = np.where(emit, xs >> 16, xs)
        x[:m] = ((xs // f) << SCALE_BITS) + xs % f + c
    words = np.concatenate(chunks)[::-1].astype(np.uint16) if chunks else np.zeros(0, np.uint16)
    return x.astype(np.uint32).tobytes() + words.tobytes(), int(words.size)


def decode_symbols(stream_buf, n_words: int, n: int, gi: np.ndarray, freq: np.ndarray, cum: np.ndarray,
                   slot_sym: np.ndarray) -> np.ndarray:
    """Inverse of encode_symbols -> n symbols (int64); CodecError on a stream that does not decode."""
    lanes = lanes_for(n)
    raw = memoryview(stream_buf).cast("B")
    if raw.nbytes != stream_nbytes(n, n_words):
        raise CodecError(f"rANS stream has {raw.nbytes} bytes, expected {stream_nbytes(n, n_words)}")
    x = np.frombuffer(raw[: 4 * lanes], dtype=np.uint32).astype(np.int64)
    words = np.frombuffer(raw[4 * lanes:], dtype=np.uint16).astype(np.int64)
    if words.size != n_words:
        raise CodecError(f"rANS stream holds {words.size} words, header announces {n_words}")
    if bool((x < _L).any()):
        raise CodecError("rANS final states are out of range: corrupted data")
    out = np.empty(n, dtype=np.int64)
    ptr = 0
    for t in range((n + lanes - 1) // lanes):
        s0 = t * lanes
        g = gi[s0: s0 + lanes]
        m = g.size
        xs = x[:m]
        slot = xs & (_M - 1)
        s = slot_sym[g, slot]
        out[s0: s0 + m] = s
        xs = freq[g, s] * (xs >> SCALE_BITS) + slot - cum[g, s]
        need = xs < _L
        cnt = int(need.sum())
        if cnt:
            if ptr + cnt > words.size:
                raise CodecError("rANS stream ends early: truncated or corrupted data")
            xs[need] = (xs[need] << 16) | words[ptr: ptr + cnt]
            ptr += cnt
        x[:m] = xs
    if ptr != words.size or bool((x != _L).any()):
        raise CodecError("rANS stream does not decode to its initial state: corrupted data")
    return out


# -- one rANS state, plain Python: for one-token steps, where 64 lanes' final states (256 bytes) would
# cost more than the values themselves and numpy's per-call overhead more than the arithmetic. A smaller
# probability scale (SCALAR_BITS) keeps the decoder's slot tables small enough to rebuild often ---------
SCALAR_BITS = 12


def encode_scalar(f_list: list[int], c_list: list[int], scale_bits: int = SCALAR_BITS) -> bytes:
    """Symbols given as their (frequency, cumulative) pairs -> final state (4 bytes) + 16-bit words."""
    x = _L
    out = []
    bound = 32 - scale_bits
    for i in range(len(f_list) - 1, -1, -1):
        f = f_list[i]
        if x >= (f << bound):
            out.append(x & 0xFFFF)
            x >>= 16
        x = ((x // f) << scale_bits) + (x % f) + c_list[i]
    out.reverse()
    return int(x).to_bytes(4, "little") + np.array(out, dtype=np.uint16).tobytes()


def scalar_tables(freq: np.ndarray, scale_bits: int = SCALAR_BITS) -> list[tuple]:
    """Per group, slot -> (symbol, frequency, slot - cumulative) as Python arrays: the scalar decoder's
    whole per-symbol work is three lookups and one multiply-add."""
    m = 1 << scale_bits
    cum = cumulative(freq)
    out = []
    for g in range(freq.shape[0]):
        sym = np.repeat(np.arange(freq.shape[1], dtype=np.int64), freq[g])
        if sym.size != m:
            raise CodecError(f"rANS frequencies of group {g} sum to {sym.size}, not {m}")
        out.append((array("h", sym.astype(np.int16).tobytes()), array("q", freq[g][sym].tobytes()),
                    array("q", (np.arange(m, dtype=np.int64) - cum[g][sym]).tobytes())))
    return out


def decode_scalar(stream_buf, n: int, tables: list[tuple], scale_bits: int = SCALAR_BITS) -> tuple[list[int], list[int]]:
    """Inverse of encode_scalar for n symbols, symbol i decoded with tables[i] (scalar_tables of its
    group) -> (symbols, the 16-bit words left after the stream: data the caller appended)."""
    raw = memoryview(stream_buf).cast("B")
    if raw.nbytes < 4 or raw.nbytes % 2:
        raise CodecError(f"rANS stream of {raw.nbytes} bytes is not a 4-byte state plus 16-bit words")
    if len(tables) != n:
        raise CodecError(f"{len(tables)} tables for {n} symbols")
    x = int.from_bytes(raw[:4], "little")
    words = np.frombuffer(raw[4:], dtype=np.uint16).tolist()
    if x < _L or x >= 1 << 32:
        raise CodecError("rANS final state is out of range: corrupted data")
    out = [0] * n
    ptr, n_words, mask, low = 0, len(words), (1 << scale_bits) - 1, _L
    i = 0
    for syms, freqs, bias in tables:
        slot = x & mask
        x = freqs[slot] * (x >> scale_bits) + bias[slot]
        out[i] = syms[slot]
        i += 1
        if x < low:
            if ptr >= n_words:
                raise CodecError("rANS stream ends early: truncated or corrupted data")
            x = (x << 16) | words[ptr]
            ptr += 1
    if x != _L:
        raise CodecError("rANS stream does not decode to its initial state: corrupted data")
    return out, words[ptr:]
