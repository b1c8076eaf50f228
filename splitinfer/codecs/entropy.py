"""The compiled entropy coder: constriction's ANS coder (Rust) under the same probability models as rans.py.

Why: the plain-Python/numpy rANS loops of rans.py ran at ~20 MB/s and took most of a one-token step's
~1 ms. constriction (https://bamler-lab.github.io/constriction/, used in neural-compression research)
codes the same symbols with the same frequency tables in compiled code. Models:
  - static (a prefill message, pipeline and session codecs): rans.static_model's per-channel prediction,
    channel groups and log-quantized tables, sent as side data exactly as before; each group's model spans
    only the residuals its table holds (static_models: a shorter search per decoded symbol);
  - adaptive (a session step): the frequency tables both halves build from the session's counts (adaptive.py).
Each group's symbols are coded as one run with that group's model (its channels' codes, row-major), group 0
first, so the per-symbol work is one Rust loop per group instead of a Python loop per value; the order of
symbols does not change what the model spends on them. Escaped residuals of the adaptive model (|r| > 31)
follow in the same stream with a uniform model over -255..255.

Wire: the stream is constriction's compressed words (uint32, little-endian); a static stream's word count is
meta rans[2]. Messages coded this way carry format version 3 (base.FORMAT_TRIMMED, framing.FORMAT_TRIMMED;
version 2 was the first compiled coder, whose static models spanned the message's whole residual range) so a
peer that knows only an older coder refuses them with a clear message; `coder="rans_py"` keeps the old coder
(and wire format 1) for the benchmark and the decode-equality tests. The learned codec's latents
(encode_columns) are unchanged and keep version 2.
"""

from __future__ import annotations

import numpy as np

from splitinfer.codecs import rans, refrows
from splitinfer.codecs.errors import CodecError

CODERS = ("ans", "rans_py")  # the compiled coder (default), the plain-numpy one of rans.py
_ESC_SPAN = 2 * rans._RES + 1  # escaped residuals -255..255 as symbols 0..510


def _constriction():
    try:
        import constriction
    except ImportError as e:  # a dependency since issue 28; only a broken install lacks it
        raise CodecError("the entropy-coded codecs need the package constriction: pip install constriction==0.5.0 "
                         "(or build the codec with coder='rans_py')") from e
    return constriction


def models(freq: np.ndarray) -> list:
    """One constriction categorical model per group from (K, A) integer frequencies (same on both halves)."""
    return models_ragged(list(freq))


def models_ragged(freqs: list[np.ndarray]) -> list:
    """One constriction categorical model per 1-D integer frequency array (a single symbol gets a padding one
    of (nearly) zero probability: constriction needs two)."""
    cat = _constriction().stream.model.Categorical
    return [cat(np.append(f, 0.0) if f.size == 1 else f.astype(np.float64), perfect=False) for f in freqs]


def group_channels(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """Channel indices of each group (the order symbols go on the stream)."""
    order = np.argsort(groups, kind="stable")
    return np.split(order, np.cumsum(np.bincount(groups, minlength=k))[:-1])


def encode_groups(sym: np.ndarray, chans: list[np.ndarray], group_models: list,
                  escapes: np.ndarray | None = None, offsets: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) symbols, each column coded with its group's model -> compressed uint32 words (`offsets`:
    per group, subtracted from its symbols first)."""
    c = _constriction()
    coder = c.stream.stack.AnsCoder()
    if escapes is not None and escapes.size:  # a stack: pushed first, popped last
        coder.encode_reverse((escapes + rans._RES).astype(np.int32), c.stream.model.Uniform(_ESC_SPAN))
    for g in range(len(chans) - 1, -1, -1):
        if chans[g].size:
            s = np.subtract(sym[:, chans[g]], 0 if offsets is None else int(offsets[g]), dtype=np.int32)
            coder.encode_reverse(s.reshape(-1), group_models[g])
    return coder.get_compressed()


def decode_groups(words_buf, rows: int, cols: int, chans: list[np.ndarray], group_models: list,
                  escape_symbol: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of encode_groups -> ((rows, cols) int64 symbols, escaped residuals in the order of the
    symbols equal to `escape_symbol`); CodecError on a stream that does not decode exactly."""
    c = _constriction()
    raw = memoryview(words_buf).cast("B")
    if raw.nbytes % 4:
        raise CodecError(f"ANS stream of {raw.nbytes} bytes is not a whole number of 32-bit words: corrupted data")
    words = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    sym = np.empty((rows, cols), dtype=np.int64)
    esc = np.zeros(0, dtype=np.int64)
    try:
        coder = c.stream.stack.AnsCoder(words)
        for g, ch in enumerate(chans):
            if ch.size:
                sym[:, ch] = coder.decode(group_models[g], rows * ch.size).reshape(rows, ch.size)
        if escape_symbol is not None:
            n_esc = int((sym == escape_symbol).sum())
            if n_esc:
                esc = coder.decode(c.stream.model.Uniform(_ESC_SPAN), n_esc).astype(np.int64) - rans._RES
        empty = coder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CodecError(f"ANS stream does not decode: corrupted data ({e})") from None
    if not empty:
        raise CodecError("ANS stream holds more data than its symbols: corrupted data")
    return sym, esc


FAMILY_MAX = 4096  # fewer symbols: one call with a model per symbol; more: one call per column


def column_probabilities(freq: np.ndarray) -> np.ndarray:
    """(C, A) integer frequencies -> (C, A) float64 probabilities, the per-symbol form of `models(freq)`."""
    return freq.astype(np.float64) / freq.sum(axis=1, keepdims=True)


def encode_columns(sym: np.ndarray, col_models: list, col_probs: np.ndarray) -> np.ndarray:
    """(rows, C) symbols, column c coded with its own model (a static table per column, as the learned codec's
    latents have) -> compressed uint32 words. Few symbols go in one call with a model per symbol (a one-token
    step: one Rust call instead of C); many go one column at a time (the per-symbol tables would be large)."""
    rows, cols = sym.shape
    if sym.size < FAMILY_MAX:
        c = _constriction()
        coder = c.stream.stack.AnsCoder()
        coder.encode_reverse(np.ascontiguousarray(sym, dtype=np.int32).reshape(-1),
                             c.stream.model.Categorical(perfect=False), np.tile(col_probs, (rows, 1)))
        return coder.get_compressed()
    return encode_groups(sym, [np.array([j]) for j in range(cols)], col_models)


def decode_columns(words_buf, rows: int, cols: int, col_models: list, col_probs: np.ndarray) -> np.ndarray:
    """Inverse of encode_columns -> (rows, C) int64 symbols; CodecError on a stream that does not decode."""
    if rows * cols >= FAMILY_MAX:
        return decode_groups(words_buf, rows, cols, [np.array([j]) for j in range(cols)], col_models)[0]
    c = _constriction()
    raw = memoryview(words_buf).cast("B")
    if raw.nbytes % 4:
        raise CodecError(f"ANS stream of {raw.nbytes} bytes is not a whole number of 32-bit words: corrupted data")
    try:
        coder = c.stream.stack.AnsCoder(np.frombuffer(raw, dtype="<u4").astype(np.uint32))
        sym = coder.decode(c.stream.model.Categorical(perfect=False), np.tile(col_probs, (rows, 1)))
        empty = coder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CodecError(f"ANS stream does not decode: corrupted data ({e})") from None
    if not empty:
        raise CodecError("ANS stream holds more data than its symbols: corrupted data")
    return sym.astype(np.int64).reshape(rows, cols)


def static_models(freq: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """One model per group over that group's own support only (its first to its last present symbol) ->
    (models, first and last symbol of each). Wire format 3: a group of quiet channels spans ~10-30 of the message's
    60-100 residuals, and the decoder's search for a symbol is logarithmic in the model's size (constriction
    decoded SmolLM2 windows 13-28 % faster, loaded); the absent symbols it leaves out cost ~2**-24 each, so the stream
    keeps its size to the word."""
    present = freq > 0
    first = present.argmax(axis=1)
    last = freq.shape[1] - 1 - present[:, ::-1].argmax(axis=1)
    return models_ragged([freq[g, first[g]: last[g] + 1] for g in range(freq.shape[0])]), first, last


def encode_static(q: np.ndarray, n_groups: int, ks: np.ndarray | None = None,
                  res: np.ndarray | None = None) -> tuple[bytes, bytes, bytes, list[int]]:
    """rans.encode's model and wire layout with the compiled coder (each group's symbols coded over its own
    support, see static_models) -> (side, tables, stream, [lo, hi, n_words]). `ks`, `res`: see rans.static_model."""
    side, groups, res, tables, freq, lo, hi = rans.static_model(q, n_groups, ks, res)
    group_models, first, _ = static_models(freq)
    words = encode_groups(res, group_channels(groups, freq.shape[0]), group_models, offsets=lo + first)
    return side, tables.tobytes(), words.astype("<u4").tobytes(), [lo, hi, int(words.size)]


def decode_static(side_buf, tables_buf, stream_buf, rows: int, cols: int, n_groups: int, lo: int, hi: int,
                  n_words: int, back: np.ndarray | None = None) -> np.ndarray:
    """Inverse of encode_static -> (rows, cols) int8 codes; CodecError on anything inconsistent. Each group's
    residuals land in a block of columns (channels in group order, as on the wire), the prediction is undone
    in that order and the columns go back to channel order once, as bytes."""
    if memoryview(stream_buf).nbytes != 4 * n_words:
        raise CodecError(f"ANS stream has {memoryview(stream_buf).nbytes} bytes, the header announces {n_words} "
                         "32-bit words")
    groups, ks, freq = rans.read_static_model(side_buf, tables_buf, cols, n_groups, lo, hi)
    group_models, first, last = static_models(freq)
    chans = group_channels(groups, freq.shape[0])
    res = np.empty((rows, cols), dtype=np.intp)  # residuals, columns in group order
    words = np.frombuffer(memoryview(stream_buf).cast("B"), dtype="<u4").astype(np.uint32)
    try:
        coder = _constriction().stream.stack.AnsCoder(words)
        j = 0
        for g, ch in enumerate(chans):
            if ch.size:
                sym = coder.decode(group_models[g], rows * ch.size).reshape(rows, ch.size)
                if first[g] == last[g] and int(sym.max()) > 0:  # one symbol: never its padding
                    raise CodecError("ANS stream decodes a residual outside its group's table: corrupted data")
                np.add(sym, lo + int(first[g]), out=res[:, j: j + ch.size])
                j += ch.size
        empty = coder.is_empty()
    except (ValueError, RuntimeError, AssertionError) as e:
        raise CodecError(f"ANS stream does not decode: corrupted data ({e})") from None
    if not empty:
        raise CodecError("ANS stream holds more data than its symbols: corrupted data")
    order = np.concatenate(chans)
    codes = rans.unpredict(res, ks[order], back)
    out = np.empty_like(codes)
    out[:, order] = codes
    return out


def encode_static_refs(q: np.ndarray, n_groups: int) -> tuple[np.ndarray | None, bytes, bytes, bytes, list[int]]:
    """encode_static with reference rows where the encoder finds them (refrows.choose) -> (back or None, side,
    tables, stream, [lo, hi, n_words])."""
    q16 = q.astype(np.int16)
    ks = rans.predict_weights(q16)
    res = rans.residuals(q16, ks)
    back = refrows.choose(q16, res)
    if back is not None:
        refrows.apply(q16, res, back)
    return (back, *encode_static(q16, n_groups, ks, res))


def stream_nbytes(n: int, n_words: int, coder: str) -> int:
    """Bytes of a static stream of n values and n_words words (meta rans[2]) for `coder`."""
    return 4 * n_words if coder == "ans" else rans.stream_nbytes(n, n_words)


def static_coder(coder: str):
    """(encode, decode) of the static-table stream for `coder` (see CODERS)."""
    return (encode_static, decode_static) if coder == "ans" else (rans.encode, rans.decode)
