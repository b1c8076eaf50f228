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
The reconstruction is the preset's (same rounding, same outlier tokens: the shared stages of stages.py), so
quality is unchanged and only the bits differ. The encoder picks, per message, the smallest of: the session
model (adaptive.py), fresh static tables (rans.static_model), zstd (not tried against an adaptive stream
under half the raw bytes), raw bytes; a message with codes beyond int8 either sends them as int16 bytes (raw or
zstd) or, when smaller, clamps them to int8 for any of those codings and sends their exact values beside
(escapes.py: head format 4 or 5; both halves' models follow the clamped codes). The symbols go through the
compiled ANS coder (entropy.py, session head format 3) or, with coder="rans_py", the old plain-Python rANS
(format 1: the old stream layout), kept for the benchmark and the decode-equality tests. With `refs=true`
(refrows.py) a message's fresh static tables may code a row against an earlier row of the same message, and
every message of the codec is format 6 (7 with escapes) with the shorter one-token head of framing.py.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from splitinfer.codecs import adaptive, centering, entropy, escapes, rans, refrows, stages, stepquant, tokens
from splitinfer.codecs.adaptive import ADAPTIVE_MAX, AdaptiveState
from splitinfer.codecs.base import Codec, seal, verify
from splitinfer.codecs.encoded import EncodedTensor, StepMessage, as_message
from splitinfer.codecs.errors import CodecError, CodecFormatError
from splitinfer.codecs.framing import FLAG_KEY, FORMAT, FORMAT_TRIMMED, full_header
from splitinfer.codecs.lossless import compress, decompress
from splitinfer.codecs.params import PipelineParams
from splitinfer.codecs.tensors import DTYPE_NAMES, DTYPES, Buffer, check_input, rows_cols, saturate_for

SUFFIX = "_s"
HISTORY = 8  # steps a decoder can re-decode or roll back
MODES = ("b", "z", "a", "r")  # codes as bytes, zstd, the session's adaptive model, fresh static rANS tables
_CENTERING = (None, "centered", "session_means")  # the code byte's centering field: 0, 1, 2


# ----------------------------------------------------------------------------- generic: framing only
class SessionCodec(Codec):
    """Any preset behind the session head: same buffers, same reconstruction, a few bytes of framing.
    Stateless (every message is a key message), so rehearsals and retries need no care. The head carries
    the preset's header meta (stages.META, long names; "compressed" as the bitmask "Z")."""

    stateful = False

    def __init__(self, inner: Codec, name: str):
        self.inner = inner
        self.name = name
        self.overrides = dict(inner.overrides)
        self.format_version = inner.format_version  # also the head's format (Codec.wire_format: "v<it>")

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
        # the head's format is the header's version: the same numbers (1, 3; 4/5 with escaped codes)
        return StepMessage.build(FLAG_KEY, h["dtype"], 0, h["shape"], h["crc"], meta, enc.buffers, fmt=h["v"])

    encode_step = encode

    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        msg = as_message(enc)
        h = msg.header
        if h["flags"] != FLAG_KEY or h["seq"] != 0:
            raise CodecError(f"{self.name} sends key messages only (flags 1, seq 0), got flags {h['flags']} "
                             f"seq {h['seq']}: the message is from another codec")
        _check_format(self.name, h, self.inner.format_versions)
        meta = dict(h["meta"])
        mask = meta.pop("Z", 0)
        if type(mask) is not int or not 0 <= mask < 1 << len(msg.buffers) or (mask and not self._lossless()):
            raise CodecError(f"session head meta Z={mask!r} is not a bitmask of the {len(msg.buffers)} buffers")
        if self._lossless() and msg.buffers:
            meta["compressed"] = [(mask >> i) & 1 for i in range(len(msg.buffers))]
        header = {"codec": self.inner.name, "v": h["format"], "params": dict(self.inner.overrides),
                  "dtype": h["dtype"], "shape": list(h["shape"]), "meta": meta, "crc": h["crc"]}
        return self.inner.decode(EncodedTensor(header, msg.buffers), dtype)

    def reset(self) -> None:
        pass

    def fork(self) -> SessionCodec:
        return SessionCodec(self.inner, self.name)

    def rollback(self, seq: int) -> None:
        pass


def _check_format(name: str, h: dict[str, Any], fmts: tuple[int, ...]) -> None:
    if h.get("format", FORMAT) not in fmts:
        also = f" (or {fmts[1]} with escaped codes)" if len(fmts) > 1 else ""
        raise CodecFormatError(f"{name}: session head format {h.get('format')} but this codec speaks format "
                               f"{fmts[0]}{also} (format 3: the compiled entropy coder with per-group models, 2: "
                               "its first version; 1: the old coder, coder='rans_py'; 4/5: 1/3 with escaped codes; 6/7: 3/5 with "
                               "reference rows, refs=true): "
                               "both halves must run the same splitinfer version and codec params")


@dataclass
class _History:
    states: list[AdaptiveState] = field(default_factory=list)  # the state before each recent step

    def push(self, before: AdaptiveState) -> None:
        self.states.append(before)
        del self.states[:-HISTORY]

    def before(self, seq: int) -> AdaptiveState | None:
        for s in self.states:
            if s.seq == seq:
                return s
        return None


def adaptive_capable(params: PipelineParams) -> bool:
    p = params
    return (p.step is not None and p.rans_groups > 0 and p.outliers == 0 and not p.rotate and p.topk is None
            and p.bits is None)


def _split_meta(meta: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """The common per-step choices (centering, coding mode) go in the head's code byte, the rest in the
    head's JSON in stages.META's short spelling."""
    rest = stages.to_head({k: v for k, v in meta.items() if k not in ("centered", "session_means", "mode")})
    if "mode" not in meta:
        return None, rest
    c = 1 if meta.get("centered") else 2 if meta.get("session_means") else 0
    return c * 4 + MODES.index(meta["mode"]), rest


def _merge_meta(code: int | None, rest: dict[str, Any]) -> dict[str, Any]:
    meta = stages.from_head(rest)
    if code is not None:
        if code >= 12:
            raise CodecError(f"session head code byte {code} is not one of 0..11 (4 x centering + mode)")
        meta["mode"] = MODES[code % 4]
        if code // 4:
            meta[_CENTERING[code // 4]] = True
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
        self._fmt = FORMAT_TRIMMED if params.coder == "ans" else FORMAT  # escaped codes: escapes.ESCAPED_FORMAT
        self._sym: np.ndarray | None = None  # the last adaptive symbols computed, reused by _advance
        self.reset()

    @property
    def wire_format(self) -> str:
        return f"v{self.format_version}.{self._fmt}"

    @property
    def format_versions(self) -> tuple[int, ...]:
        plain = escapes.versions(self._fmt)
        return tuple(refrows.REFS_FORMAT[v] for v in plain) if self.params.refs else plain

    def _message_format(self, meta: dict[str, Any]) -> int:
        """A message's format: the codec's (3; 5 with escaped codes), or with refs=true 6 (7) for every message
        (reference rows and the compact head, refrows.py)."""
        fmt = escapes.version(self._fmt, meta)
        return refrows.REFS_FORMAT[fmt] if self.params.refs else fmt

    # -- session control ----------------------------------------------------------------------------
    def reset(self) -> None:
        """A new session: both halves start from nothing."""
        self._enc, self._dec = AdaptiveState(), AdaptiveState()
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
    def decoder_means(self) -> torch.Tensor | None:
        """The per-channel means the decoding side centres one-token steps on (what the session has learnt)."""
        return self._dec.means

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

    def _encode(self, x: torch.Tensor, st: AdaptiveState | None) -> StepMessage:
        check_input(x)
        x = x.detach()
        shape = list(x.shape)
        rows, cols = rows_cols(shape)
        meta: dict[str, Any] = {}
        parts: list[Buffer] = []
        if st is not None:
            chain = st.crc
            st.sync_cols(cols)
        q, new_means = None, None
        if x.numel():
            v, _ = stages.encode_nonfinite(x.reshape(rows, cols).to(torch.float32), meta, parts)
            v = stages.encode_outlier_rows(v, self._outlier_rows(v, st), meta, parts)
            v, new_means = self._center(v, st, meta, parts)
            q, coded = self._code(stages.step_quantize(v, self.params.step, meta, parts), st, meta)
            parts += coded
        if st is not None:
            self._advance(st, meta, q, parts, new_means)
        flags = 0 if st is not None else FLAG_KEY
        seq = st.seq - 1 if st is not None else 0
        code, rest = _split_meta(meta)
        head = {"dtype": DTYPE_NAMES[x.dtype], "shape": shape, "meta": rest, "seq": seq, "flags": flags,
                "code": code}
        fmt = self._message_format(meta)
        full = full_header(self.name, self.overrides, head, fmt)
        if st is not None:
            full["prev"] = chain  # the checksum chains the steps: another session's step fails it
        crc = seal(full, parts).header["crc"]
        if st is not None:
            st.crc = crc
        return StepMessage.build(flags, head["dtype"], seq, shape, crc, rest, parts, code, fmt)

    def _outlier_rows(self, v: torch.Tensor, st: AdaptiveState | None) -> torch.Tensor:
        """Outlier tokens as the preset finds them; a one-token step is compared with the session's
        typical row peak instead (the median of a single row is the row itself)."""
        ratio, none = self.params.outlier_token_ratio, torch.empty(0, dtype=torch.int64)
        if ratio is None:
            return none
        if v.shape[0] >= 2:
            if st is not None:
                st.ref_peak = float(v.abs().amax(dim=1).median())
            return tokens.find_outlier_rows(v, ratio)
        if st is not None and st.ref_peak is not None and v.shape[0] == 1:
            return (v.abs().amax(dim=1) > ratio * st.ref_peak).nonzero().reshape(-1)
        return none

    def _center(self, v, st, meta, parts) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.params.center or v.shape[0] == 0:
            return v, None
        if v.shape[0] >= centering.MIN_ROWS:
            return stages.encode_means(v, meta, parts)
        if st is not None and st.means is not None:
            meta["session_means"] = True
            return v - st.means, None
        return v, None

    def _code(self, q: np.ndarray, st: AdaptiveState | None, meta) -> tuple[np.ndarray, list[Buffer]]:
        """-> (the codes the session state follows, their buffers): the smallest coding of q. Codes beyond
        int8 (meta code_dtype) go as int16 bytes or, when smaller, clamped to int8 with every coding open to
        them and their exact values beside (escapes.py): both halves' models then see the clamped codes."""
        if q.size == 0:
            return q, []
        wide = meta.get("code_dtype") == "int16"
        mode, bufs, extra = self._smallest(q, st, wide)
        escaped = escapes.split(q) if wide else None
        if escaped is not None:
            clamped, n_esc, esc = escaped
            alt = self._smallest(clamped, st, False)
            if sum(map(len, esc + alt[1])) < sum(map(len, bufs)):
                (mode, bufs, extra), q = alt, clamped
                bufs = esc + bufs
                escapes.mark(meta, n_esc)
        meta["mode"] = mode
        if mode == "r":
            meta["rans"], refs = extra
            if refs:
                meta["ref_rows"] = refs
        elif mode == "a" and extra is not None:
            meta["ref_row"] = extra
        return q, bufs

    def _smallest(self, q: np.ndarray, st: AdaptiveState | None, wide: bool) -> tuple[str, list[Buffer], Any]:
        """(mode, buffers, mode info) of the smallest coding of non-empty codes q (wide: int16 bytes only)."""
        p = self.params
        n = q.size
        plain = q.astype(np.int16 if wide else np.int8).tobytes()
        best: tuple[str, list[Buffer], Any] = ("b", [plain], None)
        size = len(plain)
        if not wide and st is not None and st.model is not None and n <= ADAPTIVE_MAX:
            ref = adaptive.pick_reference(q, st)
            stream, self._sym = adaptive.encode(q, st, ref, p.coder)
            if len(stream) < size:
                best, size = ("a", [stream], ref), len(stream)
        # zstd only where it may win: not against an adaptive stream under half the plain bytes (a decode
        # step's usual case, where trying it cost a fifth of the step)
        if p.lossless is not None and size * 2 > len(plain):
            z = compress(plain, p.lossless, p.level)
            if len(z) < size:
                best, size = ("z", [z], None), len(z)
        if not wide:
            if n >= rans.MIN_VALUES:
                back = None
                if p.refs:
                    back, side, tables, stream, info = entropy.encode_static_refs(q, p.rans_groups)
                else:
                    side, tables, stream, info = entropy.static_coder(p.coder)[0](q, p.rans_groups)
                bufs = [side, tables, stream] if back is None else [back.tobytes(), side, tables, stream]
                if sum(map(len, bufs)) < size:
                    best = ("r", bufs, (info, 0 if back is None else int(np.count_nonzero(back))))
        return best

    # -- decode -------------------------------------------------------------------------------------
    def decode(self, enc: EncodedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        msg = as_message(enc)
        h = msg.header
        _check_format(self.name, h, self.format_versions)
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

    def _decode(self, msg: StepMessage, st: AdaptiveState | None, dtype: torch.dtype | None) -> torch.Tensor:
        h = msg.header
        shape, meta = list(h["shape"]), _merge_meta(h["code"], h["meta"])
        out_dtype = dtype or DTYPES[h["dtype"]]
        rows, cols = rows_cols(shape)
        numel = math.prod(shape)
        if st is not None:
            st.sync_cols(cols)
        self._check_meta(meta, rows, cols, numel, st)
        if h["format"] != self._message_format(meta):
            raise CodecError(f"format version {h['format']} with meta escapes={meta.get('escapes')!r} ref_rows="
                             f"{meta.get('ref_rows')!r}: escaped codes have their own format, and so has a codec with refs=true "
                             f"(this message's would be {self._message_format(meta)}); the encoder is broken or forged")
        full = {**full_header(self.name, self.overrides, h, h["format"]), "crc": h["crc"]}
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
        nonfinite = stages.read_nonfinite(take(), take(), meta["nonfinite"], numel) if "nonfinite" in meta else None
        out_rows = stages.read_outlier_rows(take(), take(), meta, rows, cols) if "outlier_rows" in meta else None
        n_rows = rows - meta.get("outlier_rows", 0)
        new_means = stages.read_means(take(), cols) if meta.get("centered") else None
        steps = stages.read_steps(take(), n_rows, meta)
        esc = (take(), take()) if "escapes" in meta else None
        q = self._decode_codes(take, meta, n_rows, cols, st)  # clamped to int8 where escaped: the state's codes
        take.done()
        codes = q if esc is None else escapes.restore(q, *esc, meta["escapes"])
        v = stepquant.dequantize_steps(codes, steps, n_rows, cols)  # a new float32 tensor: added to in place
        if new_means is not None:
            v.add_(new_means)
        elif meta.get("session_means"):
            v.add_(st.means)
        v = saturate_for(stages.restore_outlier_rows(v, out_rows), out_dtype)
        v = stages.restore_nonfinite(v, nonfinite)
        if st is not None:
            self._advance(st, meta, q.astype(np.int64, copy=False), bufs, new_means)  # the state keeps int64 codes
            st.crc = h["crc"]
        return v.reshape(shape).to(out_dtype)

    def _decode_codes(self, take, meta, n_rows, cols, st) -> np.ndarray:
        n = n_rows * cols
        if n == 0:
            return np.zeros((0, cols), dtype=np.int64)
        mode = meta["mode"]
        wide = meta.get("code_dtype") == "int16"
        isz = 2 if wide else 1
        if mode in ("b", "z"):
            buf = take()
            raw = (decompress(buf, self.params.lossless, n * isz) if mode == "z"
                   else memoryview(buf).cast("B"))
            if len(raw) != n * isz:
                raise CodecError(f"codes buffer has {len(raw)} bytes, the head implies {n * isz}")
            return np.frombuffer(raw, dtype=np.int16 if wide else np.int8).astype(np.int64).reshape(n_rows, cols)
        if mode == "a":
            q, self._sym = adaptive.decode(take(), n_rows, cols, st, meta.get("ref_row"), self.params.coder)
            return q
        refs = {"back": refrows.read(take(), n_rows, meta["ref_rows"])} if "ref_rows" in meta else {}
        side, tables, stream = take(), take(), take()
        decode_static = entropy.static_coder(self.params.coder)[1]
        # int8 codes: a key message (a prefill window) needs no int64 copy; a session step widens them for its state
        return decode_static(side, tables, stream, n_rows, cols, self.params.rans_groups, *meta["rans"], **refs)

    def _check_meta(self, meta, rows, cols, numel, st) -> None:
        p = self.params
        n_rows = rows - meta.get("outlier_rows", 0)
        n = n_rows * cols
        mode = meta.get("mode")
        ok = {
            "nonfinite": 0 < meta.get("nonfinite", 1) <= numel,
            "outlier_rows": p.outlier_token_ratio is not None and 0 < meta.get("outlier_rows", 1) <= rows,
            "row_dtype": meta.get("row_dtype") == "float32" and "outlier_rows" in meta,
            "centered": p.center and n_rows >= centering.MIN_ROWS and "session_means" not in meta,
            "session_means": p.center and 0 < n_rows < centering.MIN_ROWS and st is not None and st.means is not None,
            "scale_dtype": meta.get("scale_dtype") == "float32",
            "code_dtype": meta.get("code_dtype") == "int16" and mode in ("b", "z"),
            "escapes": "code_dtype" not in meta and escapes.valid_count(meta.get("escapes"), n),
            "mode": n > 0 and (mode == "b" or (mode == "z" and p.lossless is not None)
                               or (mode == "a" and st is not None and st.model is not None and n <= ADAPTIVE_MAX)
                               or (mode == "r" and n >= rans.MIN_VALUES)),
            "rans": mode == "r" and rans.valid_info(meta.get("rans"), n),
            "ref_rows": mode == "r" and p.refs and refrows.valid_count(meta.get("ref_rows"), n_rows),
            "ref_row": mode == "a" and n_rows == 1 and st is not None and st.hist is not None
            and 0 <= meta.get("ref_row", -1) < len(st.hist),
        }
        for key in meta:
            if not ok.get(key, False):
                raise CodecError(f"session head meta {key}={meta[key]!r} is not possible here for {self.name} "
                                 f"(shape rows={rows}, cols={cols}, step state {'none' if st is None else st.seq})")
        if n > 0 and "mode" not in meta:
            raise CodecError("session head meta lacks the coding mode 'm' of a non-empty message")

    def _advance(self, st: AdaptiveState, meta, q: np.ndarray | None, bufs, new_means) -> None:
        """The state update both halves run after a step."""
        st.seq += 1
        if new_means is not None:
            st.means = new_means
        if q is not None and q.size:
            sym = self._sym if meta.get("mode") == "a" else None  # what encode / decode just computed
            adaptive.advance(st, q, meta.get("ref_row"), bufs[-3] if meta.get("mode") == "r" else None,
                             meta.get("code_dtype") == "int16", self.params.rans_groups, sym)


class _Taker:
    """The message's buffers in wire order, one per call; done() checks none is left over."""

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
    if isinstance(params, PipelineParams) and params.refs:
        raise CodecError(f"{name}: refs=true needs the adaptive session codec (step quantization with rANS, no "
                         "outlier channels, rotation, top-k or fixed bits); drop refs or those params")
    return SessionCodec(inner, name)
