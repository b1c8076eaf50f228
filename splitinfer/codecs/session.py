"""Session codecs (`<preset>_s`): the session wire format, and context-adaptive coding across steps.

    enc_side, dec_side = build_codec("ec37g_s"), build_codec("ec37g_s")   # one fresh instance per half
    msg = enc_side.encode_step(h)           # step 0, 1, 2, ... of the session (StepMessage)
    h2 = dec_side.decode(EncodedTensor.from_frames(msg.to_frames()))

Every `<preset>_s` sends the preset's buffers behind the binary head of framing.py (a few bytes instead
of a JSON header): codec and params were agreed when the session opened. For the entropy-coded presets
with rANS (`ec34g_s`, `ec37g_s`, `ec38g_s`, `ec40g_s`) the two halves also keep the same adaptive model,
built from what was sent and updated identically on both sides, so a one-token decode step is coded
like a prefill window:
  - channel means: the last means sent (a message of >= 16 tokens sends its own; shorter ones are centred
    on the session's means instead of not at all);
  - the rANS model: channel groups and prediction weights from the last message that sent them (rANS
    side data), per-group symbol counts of every message's residuals since, turned into frequency
    tables with integer arithmetic every REFRESH values; each code is predicted from the previous token's
    code in its channel, across message boundaries, or (a one-token step, when it predicts better) from
    one of the session's last HIST_ROWS code rows named in the head (meta "p"): at shallow cuts a
    repeated token's hidden state comes back almost unchanged;
  - (encoder only) the typical row peak, so the attention-sink-like outlier test works on one token.
The reconstruction is the preset's (same rounding, same outlier tokens), so quality is unchanged and only
the bits differ. The encoder picks, per message, the smallest of: the session model, fresh static tables
(rans.py), zstd, raw bytes.

Step order: step `seq` is decoded against the state after steps 0..seq-1, and its CRC covers the CRC of
step seq-1 (a chain: a step of another session, or after a lost one, fails the check). The decoder keeps the state
before each of its last HISTORY steps: an exact repeat of a recent step (same seq and checksum, e.g. a
step re-sent after the server failed past the decode) is decoded again from its own starting state;
any other out-of-order step is a CodecError (the client must open a new session and replay). A replay
into a new session (a fresh codec) rebuilds the same state from the same frames. `rollback(seq)`
forgets steps >= seq on both halves (e.g. rejected speculative tokens): call it on the encoder and, with
the same seq, on the decoder. `reset()` starts a new session; `fork()` is a fresh instance with the same
spec (use it for anything that must not touch the session, e.g. a rehearsal).
`encode(x)` (no `_step`) gives a key message: it decodes on its own and leaves both states untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from splitinfer.codecs import centering, rans, stepquant, tokens
from splitinfer.codecs.base import FORMAT_VERSION, Codec, check_input, saturate_for, seal, verify
from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.codecs.errors import CodecError
from splitinfer.codecs.framing import FLAG_KEY, StepMessage, as_message, full_header
from splitinfer.codecs.lossless import compress, decompress
from splitinfer.codecs.params import PipelineParams

SUFFIX = "_s"
HISTORY = 8  # steps a decoder can re-decode or roll back
_RES = 31  # the adaptive model codes residuals in -31..31 directly, others as ESC + an int16 after the stream
ESC = 2 * _RES + 1
ALPHABET = ESC + 1
ADAPTIVE_MAX = 16384  # values: larger messages are coded with fresh tables (mode r), zstd or as bytes
HIST_ROWS = 128  # a one-token step may be predicted from any of the session's last HIST_ROWS code rows
REFRESH = 8192  # values between two rebuilds of the adaptive tables (both halves, same schedule)
COUNT_LIMIT = 1 << 22  # a group's counts are halved past this (recent statistics weigh more)


# ----------------------------------------------------------------------------- generic: framing only
class SessionCodec(Codec):
    """Any preset behind the session head: same buffers, same reconstruction, a few bytes of framing.
    Stateless (every message is a key message), so rehearsals and retries need no care."""

    stateful = False

    def __init__(self, inner: Codec, name: str):
        self.inner = inner
        self.name = name
        self.overrides = dict(inner.overrides)

    def _lossless(self) -> bool:
        params = getattr(self.inner, "params", None)
        return isinstance(params, PipelineParams) and params.lossless is not None

    def encode(self, x: torch.Tensor) -> StepMessage:
        enc = self.inner.encode(x)
        h = enc.header
        meta = dict(h["meta"])
        flags = meta.pop("compressed", None)  # per-buffer 0/1 list -> a bitmask, omitted when 0
        if flags is not None and any(flags):
            meta["Z"] = sum(f << i for i, f in enumerate(flags))
        return StepMessage.build(FLAG_KEY, h["dtype"], 0, h["shape"], h["crc"], meta, enc.buffers)

    encode_step = encode

    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        msg = as_message(enc)
        h = msg.header
        if h["flags"] != FLAG_KEY or h["seq"] != 0:
            raise CodecError(f"{self.name} sends key messages only (flags 1, seq 0), got flags {h['flags']} "
                             f"seq {h['seq']}: the message is from another codec")
        meta = dict(h["meta"])
        mask = meta.pop("Z", 0)
        if type(mask) is not int or not 0 <= mask < 1 << len(msg.buffers) or (mask and not self._lossless()):
            raise CodecError(f"session head meta Z={mask!r} is not a bitmask of the {len(msg.buffers)} buffers")
        if self._lossless() and msg.buffers:
            meta["compressed"] = [(mask >> i) & 1 for i in range(len(msg.buffers))]
        header = {"codec": self.inner.name, "v": FORMAT_VERSION, "params": dict(self.inner.overrides),
                  "dtype": h["dtype"], "shape": list(h["shape"]), "meta": meta, "crc": h["crc"]}
        return self.inner.decode(EncodedTensor(header, msg.buffers), dtype)

    def reset(self) -> None:
        pass

    def fork(self) -> SessionCodec:
        return SessionCodec(self.inner, self.name)

    def rollback(self, seq: int) -> None:
        pass


# ----------------------------------------------------------------------------- adaptive state
@dataclass
class _State:
    """What both halves know after steps 0..seq-1 (ref_peak: the encoder's alone)."""

    seq: int = 0
    cols: int | None = None
    means: torch.Tensor | None = None  # float32 values of the last float16 means sent
    groups: np.ndarray | None = None  # (cols,) int64 table of each channel
    ks: np.ndarray | None = None  # (cols,) int64 prediction weight k (k/4 x previous code)
    counts: np.ndarray | None = None  # (K, ALPHABET) int64 residual counts per group
    model: tuple | None = None  # (freq, cum) built from counts at the last refresh
    cache: tuple | None = None  # the model as Python lists for the scalar decoder (see lists())
    pending: int = 0  # values counted since that refresh
    prev: np.ndarray | None = None  # (cols,) int64 codes of the last quantized row
    hist: np.ndarray | None = None  # (<= HIST_ROWS, cols) int64 code rows sent so far (reference rows)
    ref_peak: float | None = None
    crc: int = 0  # checksum of the step that led here (to recognise an exact repeat)

    def copy(self) -> _State:
        return replace(self, counts=None if self.counts is None else self.counts.copy())

    def lists(self) -> list[tuple]:
        """The scalar decoder's per-channel tables (rans.scalar_tables of each channel's group); built on
        the first decode after a refresh (the encoder never needs them)."""
        if self.cache is None:
            per_group = rans.scalar_tables(self.model[0], rans.SCALAR_BITS)
            self.cache = [per_group[g] for g in self.groups.tolist()]
        return self.cache


@dataclass
class _History:
    states: list[_State] = field(default_factory=list)  # the state before each recent step

    def push(self, before: _State) -> None:
        self.states.append(before)
        del self.states[:-HISTORY]

    def before(self, seq: int) -> _State | None:
        for s in self.states:
            if s.seq == seq:
                return s
        return None


def adaptive_capable(params: PipelineParams) -> bool:
    p = params
    return (p.step is not None and p.rans_groups > 0 and p.outliers == 0 and not p.rotate and p.topk is None
            and p.bits is None)


def _np_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _t_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _t_from(buf, dtype: torch.dtype, n: int, what: str) -> torch.Tensor:
    raw = memoryview(buf).cast("B")
    if raw.nbytes != n * dtype.itemsize:
        raise CodecError(f"buffer {what!r} has {raw.nbytes} bytes, the head implies {n * dtype.itemsize}")
    if n == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)


_META_TYPES = {"nf": int, "or": int, "rd": str, "sd": str, "cd": str, "r": list, "p": int}  # the JSON part of the head
MODES = ("b", "z", "a", "r")  # codes as bytes, zstd, the session's adaptive model, fresh static rANS tables


def _split_meta(meta: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """The common per-step choices (centering c, coding mode m) go in the head's code byte."""
    rest = {k: v for k, v in meta.items() if k not in ("c", "m")}
    if "m" not in meta:
        return None, rest
    return meta.get("c", 0) * 4 + MODES.index(meta["m"]), rest


def _merge_meta(code: int | None, rest: dict[str, Any]) -> dict[str, Any]:
    for key, value in rest.items():
        if key not in _META_TYPES:
            raise CodecError(f"session head meta has unknown key {key!r}; known: {sorted(_META_TYPES)}")
        if type(value) is not _META_TYPES[key]:
            raise CodecError(f"session head meta {key}={value!r} must be a {_META_TYPES[key].__name__}")
    meta = dict(rest)
    if code is not None:
        if code >= 12:
            raise CodecError(f"session head code byte {code} is not one of 0..11 (4 x centering + mode)")
        meta["m"] = MODES[code % 4]
        if code // 4:
            meta["c"] = code // 4
    return meta


class AdaptiveStepCodec(Codec):
    """ecNNg's quantizer with session-adaptive entropy coding (see the module doc)."""

    stateful = True

    def __init__(self, params: PipelineParams, name: str, overrides: dict[str, Any]):
        if not adaptive_capable(params):
            raise CodecError(f"{name}: adaptive session coding needs step quantization with rANS and no "
                             "outlier channels, rotation, top-k or fixed bits")
        self.params = params
        self.name = name
        self.overrides = dict(overrides)
        self.reset()

    # -- session control ----------------------------------------------------------------------------
    def reset(self) -> None:
        """A new session: both halves start from nothing."""
        self._enc, self._dec = _State(), _State()
        self._enc_hist, self._dec_hist = _History(), _History()

    def fork(self) -> AdaptiveStepCodec:
        return AdaptiveStepCodec(self.params, self.name, self.overrides)

    def rollback(self, seq: int) -> None:
        """Forget steps >= seq (both the encoder's and the decoder's state, where they got that far)."""
        for side in ("_enc", "_dec"):
            st, hist = getattr(self, side), getattr(self, side + "_hist")
            if st.seq <= seq:
                continue
            before = hist.before(seq)
            if before is None:
                raise CodecError(f"cannot roll back to step {seq}: only the last {HISTORY} steps are kept "
                                 f"(now at step {st.seq}); open a new session")
            setattr(self, side, before)
            hist.states = [s for s in hist.states if s.seq < seq]

    @property
    def step_index(self) -> int:
        """The seq of the next step this instance encodes."""
        return self._enc.seq

    # -- encode -------------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> StepMessage:
        """A key message: decodes on its own, touches no session state."""
        return self._encode(x, None)

    def encode_step(self, x: torch.Tensor) -> StepMessage:
        """The session's next step, coded with (and updating) the encoder's adaptive state."""
        st = self._enc.copy()
        before = self._enc
        msg = self._encode(x, st)
        self._enc_hist.push(before)
        self._enc = st
        return msg

    def _encode(self, x: torch.Tensor, st: _State | None) -> StepMessage:
        check_input(x)
        x = x.detach()
        shape = list(x.shape)
        rows, cols = _rows_cols(shape)
        meta: dict[str, Any] = {}
        parts: list[bytes] = []
        if st is not None:
            chain = st.crc
            _sync_cols(st, cols)
        if x.numel():
            v = x.reshape(rows, cols).to(torch.float32)
            if not math.isfinite(float(v.sum())):
                finite = torch.isfinite(v)
                bad = (~finite).reshape(-1).nonzero().reshape(-1)
                if bad.numel():
                    meta["nf"] = bad.numel()
                    parts += [_t_bytes(bad), _t_bytes(v.reshape(-1)[bad])]
                    v = torch.where(finite, v, torch.zeros((), dtype=v.dtype))
            v = self._outlier_rows(v, st, meta, parts)
            v, new_means = self._center(v, st, meta, parts)
            q = self._quantize(v, meta, parts)
            parts += self._code(q, st, meta)
            if st is not None:
                self._advance(st, meta, q, parts, new_means)
        elif st is not None:
            self._advance(st, meta, None, parts, None)
        flags = 0 if st is not None else FLAG_KEY
        seq = st.seq - 1 if st is not None else 0
        code, rest = _split_meta(meta)
        head = {"dtype": _dtype_name(x.dtype), "shape": shape, "meta": rest, "seq": seq, "flags": flags,
                "code": code}
        full = full_header(self.name, self.overrides, head, FORMAT_VERSION)
        if st is not None:
            full["prev"] = chain  # the checksum chains the steps: another session's step fails it
        crc = seal(full, parts).header["crc"]
        if st is not None:
            st.crc = crc
        return StepMessage.build(flags, head["dtype"], seq, shape, crc, rest, parts, code)

    def _outlier_rows(self, v, st, meta, parts):
        ratio = self.params.outlier_token_ratio
        if ratio is None:
            return v
        if v.shape[0] >= 2:
            idx = tokens.find_outlier_rows(v, ratio)
            if st is not None:
                st.ref_peak = float(v.abs().amax(dim=1).median())
        elif st is not None and st.ref_peak is not None and v.shape[0] == 1:
            idx = (v.abs().amax(dim=1) > ratio * st.ref_peak).nonzero().reshape(-1)
        else:
            return v
        if not idx.numel():
            return v
        vals = v[idx]
        vdtype = tokens.row_value_dtype(vals)
        meta["or"] = idx.numel()
        if vdtype == torch.float32:
            meta["rd"] = "float32"
        parts += [_t_bytes(idx.to(torch.int32)), _t_bytes(vals.to(vdtype))]
        return tokens.without_rows(v, idx)

    def _center(self, v, st, meta, parts):
        if not self.params.center or v.shape[0] == 0:
            return v, None
        if v.shape[0] >= centering.MIN_ROWS:
            mean = centering.channel_means(v)
            meta["c"] = 1
            parts.append(_t_bytes(mean.to(torch.float16)))
            return v - mean, mean
        if st is not None and st.means is not None:
            meta["c"] = 2
            return v - st.means, None
        return v, None

    def _quantize(self, v, meta, parts) -> np.ndarray:
        if v.shape[0] == 0:
            return np.zeros((0, v.shape[1]), dtype=np.int64)
        steps, stored = stepquant.row_steps(v, self.params.step)
        codes, code_dtype = stepquant.quantize_steps(v, steps)
        if stored == "float32":
            meta["sd"] = "float32"
        if code_dtype == "int16":
            meta["cd"] = "int16"
        parts.append(_t_bytes(steps.to(torch.float32 if stored == "float32" else torch.float16)))
        return codes.reshape(v.shape[0], v.shape[1]).astype(np.int64)

    def _code(self, q: np.ndarray, st: _State | None, meta) -> list[bytes]:
        p = self.params
        n = q.size
        wide = meta.get("cd") == "int16"
        plain = q.astype(np.int16 if wide else np.int8).tobytes()
        best: tuple[str, list[bytes], Any] = ("b", [plain], None)
        if p.lossless is not None and n:
            z = compress(plain, p.lossless, p.level)
            if len(z) < len(plain):
                best = ("z", [z], None)
        if not wide and n:
            size = sum(map(len, best[1]))
            if st is not None and st.model is not None and n <= ADAPTIVE_MAX:
                ref = _pick_reference(q, st)
                stream = _adaptive_encode(q, st, ref)
                if len(stream) < size:
                    best, size = ("a", [stream], ref), len(stream)
            if n >= rans.MIN_VALUES:
                side, tables, stream, info = rans.encode(q, p.rans_groups)
                if len(side) + len(tables) + len(stream) < size:
                    best = ("r", [side, tables, stream], info)
        mode, bufs, extra = best
        if n:
            meta["m"] = mode
            if mode == "r":
                meta["r"] = extra
            elif mode == "a" and extra is not None:
                meta["p"] = extra
        return bufs

    # -- decode -------------------------------------------------------------------------------------
    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        msg = as_message(enc)
        h = msg.header
        if h["flags"] & FLAG_KEY:
            if h["seq"] != 0:
                raise CodecError(f"key message with seq {h['seq']}: key messages carry seq 0")
            return self._decode(msg, None, dtype)
        seq = h["seq"]
        if seq == self._dec.seq:
            base = self._dec
        else:
            base = self._dec_hist.before(seq)
            after = self._dec_hist.before(seq + 1) if seq + 1 < self._dec.seq else self._dec
            if base is None or after is None or after.crc != h["crc"]:
                raise CodecError(f"{self.name}: step {seq} arrived but this session expects step {self._dec.seq} "
                                 "(a lost, reordered or foreign step); open a new session and replay its steps in "
                                 "order")
        st = base.copy()
        out = self._decode(msg, st, dtype)
        if seq == self._dec.seq:
            self._dec_hist.push(base)
            self._dec = st
        return out

    def _decode(self, msg: StepMessage, st: _State | None, dtype: torch.dtype | None) -> torch.Tensor:
        h = msg.header
        shape, meta = list(h["shape"]), _merge_meta(h["code"], h["meta"])
        out_dtype = dtype or _DTYPES[h["dtype"]]
        rows, cols = _rows_cols(shape)
        numel = math.prod(shape)
        if st is not None:
            _sync_cols(st, cols)
        self._check_meta(meta, rows, cols, numel, st)
        full = {**full_header(self.name, self.overrides, h, FORMAT_VERSION), "crc": h["crc"]}
        if st is not None:
            full["prev"] = st.crc
        try:
            verify(EncodedTensor(full, msg.buffers))
        except CodecError as e:
            if st is None:
                raise
            raise CodecError(f"{e} (or step {h['seq']} does not follow this session's step {h['seq'] - 1}: "
                             "a step of another session, or a session out of step; open a new one and replay)") from None
        bufs = list(msg.buffers)
        if numel == 0:
            if st is not None:
                self._advance(st, meta, None, [], None)
                st.crc = h["crc"]
            return torch.empty(shape, dtype=out_dtype)
        take = _Taker(bufs, self.name)
        nf = meta.get("nf", 0)
        if nf:
            bad_idx = _t_from(take(), torch.int64, nf, "nonfinite_idx")
            bad_val = _t_from(take(), torch.float32, nf, "nonfinite_val")
        n_out = meta.get("or", 0)
        if n_out:
            row_idx = _t_from(take(), torch.int32, n_out, "row_idx").long()
            row_val = _t_from(take(), torch.float32 if meta.get("rd") == "float32" else torch.float16,
                              n_out * cols, "row_val").to(torch.float32).reshape(n_out, cols)
        n_rows = rows - n_out
        new_means = None
        if meta.get("c") == 1:
            new_means = _t_from(take(), torch.float16, cols, "means").to(torch.float32)
        steps = _t_from(take(), torch.float32 if meta.get("sd") == "float32" else torch.float16, n_rows,
                        "steps").to(torch.float32)
        if not bool(torch.isfinite(steps).all()) or bool((steps < 0).any()):
            raise CodecError("step buffer holds negative or non-finite steps: corrupted data")
        q = self._decode_codes(take, meta, n_rows, cols, st)
        take.done()
        v = stepquant.dequantize_steps(q, steps, n_rows, cols)
        if meta.get("c") == 1:
            v = v + new_means
        elif meta.get("c") == 2:
            v = v + st.means
        if n_out:
            if int(row_idx.min()) < 0 or int(row_idx.max()) >= rows or torch.unique(row_idx).numel() != n_out:
                raise CodecError("outlier token indices are out of range or repeat: corrupted data")
            v = tokens.with_rows(v, row_idx, row_val)
        v = saturate_for(v, out_dtype)
        if nf:
            if int(bad_idx.min()) < 0 or int(bad_idx.max()) >= numel:
                raise CodecError("non-finite indices are out of range: corrupted data")
            v = v.reshape(-1).index_put_((bad_idx,), bad_val)
        if st is not None:
            self._advance(st, meta, q, bufs, new_means)
            st.crc = h["crc"]
        return v.reshape(shape).to(out_dtype)

    def _decode_codes(self, take, meta, n_rows, cols, st) -> np.ndarray:
        n = n_rows * cols
        if n == 0:
            return np.zeros((0, cols), dtype=np.int64)
        mode = meta["m"]
        wide = meta.get("cd") == "int16"
        isz = 2 if wide else 1
        if mode in ("b", "z"):
            buf = take()
            raw = (decompress(buf, self.params.lossless, n * isz) if mode == "z"
                   else memoryview(buf).cast("B"))
            if len(raw) != n * isz:
                raise CodecError(f"codes buffer has {len(raw)} bytes, the head implies {n * isz}")
            return np.frombuffer(raw, dtype=np.int16 if wide else np.int8).astype(np.int64).reshape(n_rows, cols)
        if mode == "a":
            return _adaptive_decode(take(), n_rows, cols, st, meta.get("p"))
        side, tables, stream = take(), take(), take()
        lo, hi, n_words = meta["r"]
        k = min(self.params.rans_groups, cols)
        if memoryview(side).nbytes != cols or memoryview(tables).nbytes != k * (hi - lo + 1):
            raise CodecError("rANS side or table buffer has the wrong size: corrupted data")
        q = rans.decode(side, tables, stream, n_rows, cols, self.params.rans_groups, lo, hi, n_words)
        return q.astype(np.int64)

    def _check_meta(self, meta, rows, cols, numel, st) -> None:
        p = self.params
        n_rows = rows - meta.get("or", 0)
        n = n_rows * cols
        ok = {
            "nf": 0 < meta.get("nf", 1) <= numel,
            "or": p.outlier_token_ratio is not None and 0 < meta.get("or", 1) <= rows,
            "rd": meta.get("rd") == "float32" and "or" in meta,
            "c": p.center and ((meta.get("c") == 1 and n_rows >= centering.MIN_ROWS) or (
                meta.get("c") == 2 and 0 < n_rows < centering.MIN_ROWS and st is not None and st.means is not None)),
            "sd": meta.get("sd") == "float32",
            "cd": meta.get("cd") == "int16" and meta.get("m") in ("b", "z"),
            "m": n > 0 and (meta.get("m") == "b" or (meta.get("m") == "z" and p.lossless is not None)
                            or (meta.get("m") == "a" and st is not None and st.model is not None
                                and n <= ADAPTIVE_MAX)
                            or (meta.get("m") == "r" and n >= rans.MIN_VALUES)),
            "r": meta.get("m") == "r" and rans.valid_info(meta.get("r"), n),
            "p": meta.get("m") == "a" and n_rows == 1 and st is not None and st.hist is not None
            and 0 <= meta.get("p", -1) < len(st.hist),
        }
        for key in meta:
            if not ok[key]:
                raise CodecError(f"session head meta {key}={meta[key]!r} is not possible here for {self.name} "
                                 f"(shape rows={rows}, cols={cols}, step state {'none' if st is None else st.seq})")
        if n > 0 and "m" not in meta:
            raise CodecError("session head meta lacks the coding mode 'm' of a non-empty message")

    # -- the state update both halves run -------------------------------------------------------------
    def _advance(self, st: _State, meta, q: np.ndarray | None, bufs, new_means) -> None:
        st.seq += 1
        if new_means is not None:
            st.means = new_means
        if q is None or q.size == 0:
            return
        if meta.get("cd") == "int16":
            st.prev = None  # codes beyond int8 do not predict the next row within the residual range
            return
        cols = q.shape[1]
        if meta.get("m") == "r":
            side = np.frombuffer(bufs[-3], dtype=np.uint8).astype(np.int64)
            st.groups, st.ks = side // 5, side % 5
            st.counts = np.zeros((max(1, min(self.params.rans_groups, cols)), ALPHABET), dtype=np.int64)
            st.model, st.cache, st.pending = None, None, 0
        elif st.groups is None:
            st.groups, st.ks = np.zeros(cols, dtype=np.int64), np.zeros(cols, dtype=np.int64)
            st.counts = np.zeros((1, ALPHABET), dtype=np.int64)
        sym = _symbols(q - _prediction(q, st, meta.get("p"))).reshape(-1)
        gi = np.broadcast_to(st.groups, q.shape).reshape(-1)
        st.counts = st.counts + np.bincount(gi * ALPHABET + sym, minlength=st.counts.size).reshape(st.counts.shape)
        st.prev = q[-1].copy()
        st.hist = (q[-HIST_ROWS:] if st.hist is None else np.concatenate([st.hist, q])[-HIST_ROWS:]).copy()
        st.pending += q.size
        if st.model is None or st.pending >= REFRESH:
            if int(st.counts.sum(axis=1).max()) > COUNT_LIMIT:
                st.counts = (st.counts + 1) >> 1
            freq = rans.freqs_from_counts(st.counts, rans.SCALAR_BITS)
            st.model, st.cache = (freq, rans.cumulative(freq)), None
            st.pending = 0


def _rows_cols(shape) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    cols = shape[-1]
    return (math.prod(shape) // cols if cols else 0), cols


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dt: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}[dt]


def _sync_cols(st: _State, cols: int) -> None:
    """A message of another width than the session's so far: its model no longer applies (both halves)."""
    if st.cols != cols:
        st.cols, st.means, st.groups, st.ks, st.counts, st.model, st.cache = cols, None, None, None, None, None, None
        st.prev, st.hist = None, None
        st.pending = 0


def _predict(prev: np.ndarray, ks: np.ndarray) -> np.ndarray:
    return (ks * prev + 2) >> 2


def _prev_rows(q: np.ndarray, prev: np.ndarray | None) -> np.ndarray:
    first = np.zeros((1, q.shape[1]), np.int64) if prev is None else prev[None]
    return np.concatenate([first, q[:-1]], axis=0)


def _symbols(res: np.ndarray) -> np.ndarray:
    return np.where(np.abs(res) <= _RES, res + _RES, ESC)


def _prediction(q: np.ndarray, st: _State, ref: int | None) -> np.ndarray:
    """What each code row is predicted from: k/4 x the previous row (per channel), or, for a one-token
    step that names a reference, that earlier row of the session whole (a repeated token at a shallow
    cut comes back almost unchanged)."""
    pred = _predict(_prev_rows(q, st.prev), st.ks)
    if ref is not None:
        pred[0] = st.hist[-1 - ref]
    return pred


def _pick_reference(q: np.ndarray, st: _State) -> int | None:
    """Encoder only: the earlier row closest to a one-token step's codes, if it predicts better (L1)."""
    if q.shape[0] != 1 or st.hist is None:
        return None
    cost = np.abs(st.hist - q[0]).sum(axis=1)
    j = int(cost.argmin())
    normal = int(np.abs(q[0] - _predict(_prev_rows(q, st.prev)[0], st.ks)).sum())
    return len(st.hist) - 1 - j if int(cost[j]) < normal else None


def _adaptive_encode(q: np.ndarray, st: _State, ref: int | None = None) -> bytes:
    """The session model's scalar rANS stream, then the escaped residuals (int16) after it."""
    res = (q - _prediction(q, st, ref)).reshape(-1)
    sym = _symbols(res)
    gi = np.broadcast_to(st.groups, q.shape).reshape(-1)
    freq, cum = st.model
    stream = rans.encode_scalar(freq[gi, sym].tolist(), cum[gi, sym].tolist(), rans.SCALAR_BITS)
    return stream + res[sym == ESC].astype("<i2").tobytes()


def _adaptive_decode(buf, n_rows: int, cols: int, st: _State, ref: int | None = None) -> np.ndarray:
    n = n_rows * cols
    sym, rest = rans.decode_scalar(buf, n, st.lists() * n_rows, rans.SCALAR_BITS)
    sym = np.array(sym, dtype=np.int64)
    res = sym - _RES
    esc = sym == ESC
    if int(esc.sum()) != len(rest):
        raise CodecError(f"adaptive rANS stream escapes {int(esc.sum())} values but carries {len(rest)}: corrupted")
    if rest:
        big = np.array(rest, dtype=np.uint16).view(np.int16).astype(np.int64)
        if bool((np.abs(big) <= _RES).any()) or bool((np.abs(big) > 255).any()):
            raise CodecError("adaptive rANS escaped residuals are out of range: corrupted data")
        res[esc] = big
    res = res.reshape(n_rows, cols)
    q = np.empty_like(res)
    prev = np.zeros(cols, np.int64) if st.prev is None else st.prev
    for t in range(n_rows):
        prev = q[t] = res[t] + (st.hist[-1 - ref] if t == 0 and ref is not None else _predict(prev, st.ks))
    if int(q.min()) < -128 or int(q.max()) > 127:
        raise CodecError("adaptive rANS codes decode outside int8: corrupted data or a session out of step")
    return q


class _Taker:
    def __init__(self, bufs, name):
        self.bufs, self.i, self.name = bufs, 0, name

    def __call__(self):
        if self.i >= len(self.bufs):
            raise CodecError(f"{self.name}: the message has {len(self.bufs)} buffers, its head implies more")
        self.i += 1
        return self.bufs[self.i - 1]

    def done(self):
        if self.i != len(self.bufs):
            raise CodecError(f"{self.name}: the message has {len(self.bufs)} buffers, its head implies {self.i}")


def build_session(inner: Codec, name: str) -> Codec:
    """`<preset>_s` from the (cached, stateless) preset codec: a fresh instance every time."""
    params = getattr(inner, "params", None)
    if isinstance(params, PipelineParams) and adaptive_capable(params):
        return AdaptiveStepCodec(params, name, inner.overrides)
    return SessionCodec(inner, name)
