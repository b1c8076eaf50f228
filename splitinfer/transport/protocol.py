"""The wire protocol: envelope encoding, strict field validation, error codes, payload codecs. No sockets
here (the scheduler raises and answers with these codes without ZeroMQ).

One message = ZeroMQ multipart frames: a msgpack envelope (a small map, see `splitinfer.transport`'s
docstring for every field), then for a step the codec's frames (its JSON header, then raw buffers).
Everything a peer sends is checked here before use; nothing is ever unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
MAX_ENVELOPE_BYTES = 4096  # real envelopes are ~60-200 bytes
MAX_FRAMES = 64  # envelope + codec header + buffers
MAX_STR = 256
MAX_CUTS = 16
MAX_INT = 2**62
MAX_DEPTH = 8  # nesting of lists/maps in an envelope

OPS = ("open", "step", "close", "info", "ping")

# Error codes a reply can carry (the `code` field); the message says what was wrong and what to do.
BAD_FRAME = "bad_frame"              # not a multipart message we can parse (envelope not msgpack, too many frames)
BAD_VERSION = "bad_version"          # protocol version we do not speak
UNKNOWN_OP = "unknown_op"            # op not one of OPS
BAD_FIELD = "bad_field"              # a field is missing, of the wrong type, out of range, or unknown
MODEL_MISMATCH = "model_mismatch"    # open: the client's model fingerprint is not the server's
CUT_MISMATCH = "cut_mismatch"        # open: the client's cuts are not the server's
BAD_CODEC = "bad_codec"              # open: unknown codec / bad params; step: payload is for another codec
BAD_TENSOR = "bad_tensor"            # step: payload does not decode, wrong shape/dtype, non-finite values
UNKNOWN_SESSION = "unknown_session"  # step/close: no such session (never opened, closed, evicted, restart)
BAD_SEQ = "bad_seq"                  # step: sequence number is neither the next one nor a retry of the last
BAD_POSITION = "bad_position"        # step: start position is not where the session is
SESSION_LIMIT = "session_limit"      # open: the server holds its maximum number of sessions
TOKEN_LIMIT = "token_limit"          # step: the session would exceed its token limit
MEMORY_LIMIT = "memory_limit"        # step: all sessions' KV caches would exceed the server's memory limit
TOO_LARGE = "too_large"              # message larger than the server's cap (frames over MAXMSGSIZE are dropped)
FORBIDDEN = "forbidden"              # step/close on a session opened by another authenticated client
QUOTA = "quota"                      # open/step: this client is over its sessions or tokens/s quota
INTERNAL = "internal"                # a bug on the server; the session was rolled back to before the step

ERROR_CODES = (BAD_FRAME, BAD_VERSION, UNKNOWN_OP, BAD_FIELD, MODEL_MISMATCH, CUT_MISMATCH, BAD_CODEC,
               BAD_TENSOR, UNKNOWN_SESSION, BAD_SEQ, BAD_POSITION, SESSION_LIMIT, TOKEN_LIMIT, MEMORY_LIMIT,
               TOO_LARGE, FORBIDDEN, QUOTA, INTERNAL)


class ProtocolError(ValueError):
    """A request the server refuses; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# -- envelope ------------------------------------------------------------------------------------

def pack(envelope: dict[str, Any]) -> bytes:
    return msgpack.packb(envelope, use_bin_type=True)


def unpack(frame) -> dict[str, Any]:
    """Parse an envelope frame; anything but a small msgpack map of str keys raises BAD_FRAME."""
    raw = memoryview(frame).cast("B")
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise ProtocolError(BAD_FRAME, f"envelope frame is {len(raw)} bytes, over the {MAX_ENVELOPE_BYTES}-byte "
                                       "limit; the first frame must be a small msgpack map")
    try:
        env = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True,
                              max_ext_len=0, max_bin_len=MAX_STR, max_str_len=MAX_ENVELOPE_BYTES)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise ProtocolError(BAD_FRAME, f"envelope frame is not msgpack ({type(e).__name__}: {e})") from None
    if not isinstance(env, dict):
        raise ProtocolError(BAD_FRAME, f"envelope must be a msgpack map, got {type(env).__name__}")
    # ~1000 nested lists fit in 4 KiB, and repr()/str() of them (in our error messages) hits Python's
    # recursion limit; real envelopes nest 2 deep.
    stack = [(env, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolError(BAD_FRAME, f"envelope nests deeper than {MAX_DEPTH} levels")
        items = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in items if isinstance(v, dict | list))
    return env


# -- field validation ----------------------------------------------------------------------------

def get_int(env: dict, key: str, lo: int = 0, hi: int = MAX_INT, *, required: bool = True,
            default: int | None = None) -> int | None:
    if key not in env:
        if required:
            raise ProtocolError(BAD_FIELD, f"field {key!r} is missing; it must be an int in [{lo}, {hi}]")
        return default
    v = env[key]
    if type(v) is not int or not lo <= v <= hi:
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be an int in [{lo}, {hi}]")
    return v


def get_float(env: dict, key: str, lo: float, hi: float, *, default: float) -> float:
    if key not in env:
        return default
    v = env[key]
    if type(v) not in (int, float) or not math.isfinite(v) or not lo <= v <= hi:
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be a finite number in [{lo}, {hi}]")
    return float(v)


def get_str(env: dict, key: str, *, required: bool = True, max_len: int = MAX_STR) -> str | None:
    if key not in env:
        if required:
            raise ProtocolError(BAD_FIELD, f"field {key!r} is missing; it must be a string")
        return None
    v = env[key]
    if not isinstance(v, str) or not 0 < len(v) <= max_len:
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be a non-empty string of at most "
                                       f"{max_len} characters")
    return v


def get_bool(env: dict, key: str, *, default: bool = False) -> bool:
    v = env.get(key, default)
    if not isinstance(v, bool):
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be true or false")
    return v


def get_int_list(env: dict, key: str, max_len: int = MAX_CUTS) -> list[int]:
    v = env.get(key)
    if not isinstance(v, list) or not 0 < len(v) <= max_len or any(type(c) is not int for c in v):
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be a list of 1..{max_len} ints")
    return v


def get_map(env: dict, key: str, *, required: bool = True) -> dict | None:
    if key not in env:
        if required:
            raise ProtocolError(BAD_FIELD, f"field {key!r} is missing; it must be a map")
        return None
    v = env[key]
    if not isinstance(v, dict) or len(v) > 32:
        raise ProtocolError(BAD_FIELD, f"field {key!r}={_short(v)} must be a map of at most 32 entries")
    return v


def check_keys(env: dict, allowed: Sequence[str], what: str) -> None:
    """Unknown fields are refused: a newer client must bump the protocol version instead."""
    extra = sorted(str(k) for k in env if k not in allowed)
    if extra:
        raise ProtocolError(BAD_FIELD, f"{what} has unknown field(s) {extra[:5]}; allowed: {sorted(allowed)}")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


# -- requests and replies (the client builds these; the server validates them) -------------------

COMMON_KEYS = ("v", "op", "rid")
OPEN_KEYS = (*COMMON_KEYS, "fingerprint", "cuts", "codec", "sampling", "hidden", "nonce", "topology", "down_codec")
TOPOLOGIES = ("chain", "u")  # open's `topology`: the server returns tokens (a chain), or hidden states (u)
FRAMES_KEY = "_frames"  # a reply dict's raw frames, sent after its envelope (a U-shape's hidden state)
STEP_KEYS = (*COMMON_KEYS, "sid", "seq", "start", "logprob", "draft", "draft_p", "score")
MAX_DRAFT = 16  # drafted tokens one speculative step may carry (= splitinfer.split.server.MAX_DRAFT)
CLOSE_KEYS = (*COMMON_KEYS, "sid")
PLAIN_KEYS = COMMON_KEYS
SAMPLING_KEYS = ("temperature", "top_k", "top_p", "seed")


def get_draft(env: dict, vocab_size: int | None = None) -> tuple[list[int] | None, list[float] | None]:
    """A step's optional speculative fields: `draft` (1..MAX_DRAFT token ids) and `draft_p` (one
    probability in (0, 1] per drafted token; only with `draft`). (None, None) for a plain step.
    A step with a draft carries len(draft)+1 hidden states: the last accepted token, then the drafts."""
    if "draft" not in env:
        if "draft_p" in env:
            raise ProtocolError(BAD_FIELD, "field 'draft_p' needs 'draft' (the drafted token ids)")
        return None, None
    hi = MAX_INT if vocab_size is None else vocab_size - 1
    draft = env["draft"]
    if (not isinstance(draft, list) or not 0 < len(draft) <= MAX_DRAFT
            or any(type(t) is not int or not 0 <= t <= hi for t in draft)):
        raise ProtocolError(BAD_FIELD, f"field 'draft'={_short(draft)} must be a list of 1..{MAX_DRAFT} token ids "
                                       f"in [0, {hi}]")
    draft_p = env.get("draft_p")
    if draft_p is not None:
        if (not isinstance(draft_p, list) or len(draft_p) != len(draft)
                or any(type(q) not in (int, float) or not math.isfinite(q) or not 0 < q <= 1 for q in draft_p)):
            raise ProtocolError(BAD_FIELD, f"field 'draft_p'={_short(draft_p)} must be a list of {len(draft)} "
                                           "probabilities in (0, 1], one per drafted token")
        draft_p = [float(q) for q in draft_p]
    return draft, draft_p


def check_draft_positions(tokens: int, draft: list[int] | None) -> None:
    """A speculative step's payload covers len(draft)+1 positions (BAD_TENSOR otherwise)."""
    if draft is not None and tokens != len(draft) + 1:
        raise ProtocolError(BAD_TENSOR, f"a step with {len(draft)} drafted tokens carries {len(draft) + 1} hidden "
                                        f"states (the last accepted token, then the drafts), got {tokens}")


def get_score(env: dict, vocab_size: int | None = None) -> list[int] | None:
    """A step's optional `score`: the token ids that follow its last len(score) positions (teacher-forced
    scoring, `splitinfer.eval`); the reply then carries their log-probabilities (`lps`) and whether each
    is the argmax (`greedy`). None for a plain step; not with a draft."""
    if "score" not in env:
        return None
    hi = MAX_INT if vocab_size is None else vocab_size - 1
    score = env["score"]
    if not isinstance(score, list) or any(type(t) is not int or not 0 <= t <= hi for t in score):
        raise ProtocolError(BAD_FIELD, f"field 'score'={_short(score)} must be a list of token ids in [0, {hi}]")
    if "draft" in env:
        raise ProtocolError(BAD_FIELD, "a step carries 'score' or 'draft', not both")
    return score


def check_score_positions(tokens: int, score: list[int] | None) -> None:
    """A scoring step scores at most the positions it carries (BAD_TENSOR otherwise)."""
    if score is not None and len(score) > tokens:
        raise ProtocolError(BAD_TENSOR, f"a step carrying {tokens} positions cannot score {len(score)} tokens")


def reply_scores(rep: dict, k: int) -> tuple[list[float], list[bool]]:
    """A scoring step's `lps` (k log-probabilities, finite, <= 0) and `greedy` (k booleans); anything
    else is a malformed reply (ValueError)."""
    lps, greedy = rep.get("lps"), rep.get("greedy")
    if (not isinstance(lps, list) or len(lps) != k
            or any(type(x) not in (int, float) or not math.isfinite(x) or x > 1e-4 for x in lps)):
        raise ValueError(f"reply 'lps'={_short(lps)} must be {k} finite log-probabilities")
    if not isinstance(greedy, list) or len(greedy) != k or any(type(g) is not bool for g in greedy):
        raise ValueError(f"reply 'greedy'={_short(greedy)} must be {k} booleans")
    return [float(x) for x in lps], greedy


def reply_tokens(rep: dict, start: int, draft: list[int] | None, vocab_size: int | None = None) -> list[int]:
    """The tokens a step's reply carries: [tok] for a plain step; for a speculative one `toks` (the k
    accepted drafts, which must equal draft[:k], then the server's own token; tok == toks[-1] and
    pos == start + k + 1). Anything else is a malformed reply (ValueError)."""
    hi = MAX_INT if vocab_size is None else vocab_size - 1

    def is_id(t) -> bool:
        return type(t) is int and 0 <= t <= hi

    if draft is None:
        tok = rep.get("tok")
        if not is_id(tok):
            raise ValueError(f"reply token {_short(tok)} is not an id in [0, {hi}]")
        return [tok]
    toks = rep.get("toks")
    if not isinstance(toks, list) or not 0 < len(toks) <= len(draft) + 1 or not all(is_id(t) for t in toks):
        raise ValueError(f"reply 'toks'={_short(toks)} must be 1..{len(draft) + 1} token ids in [0, {hi}]")
    k = len(toks) - 1
    if toks[:k] != draft[:k] or rep.get("tok") != toks[-1] or rep.get("pos") != start + k + 1:
        raise ValueError(f"reply toks={_short(toks)}, tok={_short(rep.get('tok'))}, pos={_short(rep.get('pos'))} "
                         f"do not continue draft {_short(draft)} from position {start}")
    return toks


def request(op: str, rid: int, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op, "rid": rid, **fields}


def ok_reply(rid: int | None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "rid": rid, "ok": True, **fields}


def error_reply(rid: int | None, code: str, message: str) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "rid": rid, "ok": False, "code": code, "msg": message[:2000]}


def sampling_to_wire(cfg) -> dict[str, Any]:
    return {"temperature": float(cfg.temperature), "top_k": int(cfg.top_k), "top_p": float(cfg.top_p),
            "seed": int(cfg.seed)}


def sampling_from_wire(m: dict) -> dict[str, Any]:
    check_keys(m, SAMPLING_KEYS, "sampling")
    return {"temperature": get_float(m, "temperature", 0.0, 100.0, default=0.0),
            "top_k": get_int(m, "top_k", 0, 2**31, required=False, default=0),
            "top_p": get_float(m, "top_p", 1e-9, 1.0, default=1.0),
            "seed": get_int(m, "seed", 0, MAX_INT, required=False, default=0)}
