"""The device side over ZeroMQ: `RemoteLink` is a `Link` whose steps run on a `SplitServer`.

    gen = remote_generator(lm, [15], "tcp://127.0.0.1:5555")      # SplitGenerator with a RemoteLink
    print(gen.generate("Hello", max_new_tokens=32).text)

Reliability is the ZeroMQ guide's Lazy Pirate: every request waits `timeout_s` for its reply; on timeout
the socket is closed (linger 0), reopened and the same request resent, up to `retries` times. Steps
carry sequence numbers, so a resent step the server already applied is answered from its cache. If the
server lost the session (restart, eviction), the link opens a new one and replays the encoded hidden
states it kept; sampling is seeded by position, so the replayed session is in exactly the same state.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import zmq

from splitinfer.errors import ConfigError, NotFoundError, UserError
from splitinfer.models import LoadedModel, split_model, validate_cuts
from splitinfer.split import (
    DeviceHalf,
    SamplingConfig,
    SplitGenerator,
    Traffic,
    VerifyRequest,
    bind_to,
    phase_of,
    resolve_codec,
    tokens_of,
)
from splitinfer.split.placement import Placement
from splitinfer.transport import protocol as p
from splitinfer.transport.payload import build_session_codec, codec_spec, default_codec

log = logging.getLogger(__name__)

CURVE_KEYS_ENV = "SPLITINFER_CURVE_KEYS"


class TransportError(UserError, ValueError):
    """The split server could not be used (no reply, refused request): printed by the CLI as one line."""


class RemoteError(TransportError):
    """The server answered with an error; `code` is one of `protocol.ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server refused the request ({code}): {message}")
        self.code = code
        self.message = message


class TransportTimeout(TransportError, TimeoutError):
    """No reply after all retries."""


def load_client_curve_keys(keys_dir: str | os.PathLike) -> tuple[bytes, bytes, bytes]:
    """(client public, client secret, server public) from a `splitinfer keygen` folder."""
    import zmq.auth

    d = Path(keys_dir)
    secret_file, server_file = d / "client.key_secret", d / "server.key"
    for f in (secret_file, server_file):
        if not f.is_file():
            raise NotFoundError(f"CURVE key file {f} is missing; create keys with `splitinfer keygen --dir {d}`")
    pub, sec = zmq.auth.load_certificate(str(secret_file))
    server_pub, _ = zmq.auth.load_certificate(str(server_file))
    return pub, sec, server_pub


class RemoteLink:
    """A `Link` to a `SplitServer`: opens a session, sends the device half's codec messages, returns
    token ids.

    Counts the real frame bytes both ways (`bytes_up`, `bytes_down`, retries and replays included);
    `traffic` splits the step payloads by phase as every link does.
    """

    def __init__(self, url: str, *, fingerprint: str, cuts, hidden_size: int, codec: Any = None,
                 sampling: SamplingConfig | None = None, timeout_s: float = 5.0, retries: int = 3,
                 max_replays: int = 3, want_logprob: bool = False, vocab_size: int | None = None,
                 curve: tuple[bytes, bytes, bytes] | None = None, curve_keys: str | None = None) -> None:
        if not isinstance(url, str) or not url.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"server url {url!r} must look like tcp://HOST:PORT")
        if not timeout_s > 0 or retries < 0:
            raise ConfigError(f"timeout_s={timeout_s!r} must be > 0 and retries={retries!r} >= 0")
        self.url = url
        self.fingerprint = fingerprint
        self.cuts = list(cuts)
        self.hidden_size = int(hidden_size)
        self.codec = build_session_codec(codec)
        self.sampling = sampling or SamplingConfig()
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.max_replays = int(max_replays)
        self.want_logprob = want_logprob
        self.vocab_size = vocab_size
        self.curve = curve or (load_client_curve_keys(curve_keys) if curve_keys else None)
        self._ctx = zmq.Context()
        self._sock: zmq.Socket | None = None
        self._rids = itertools.count(1)
        self.sid: str | None = None
        self.seq = 0
        self.history: list[tuple[int, list, int]] = []  # (start, encoded frames, token) of every step
        self.drafts: dict[int, tuple] = {}  # history index -> (draft, draft_p, toks) of speculative steps
        self.last_logprob: float | None = None
        self.last_scores: tuple[list[float], list[bool]] = ([], [])  # of the last scoring step (`score`)
        self.server_limits: dict = {}
        self.bytes_up = self.bytes_down = self.messages = 0
        self.traffic = Traffic()  # step payloads by phase (bytes_up above also counts envelopes, retries)
        self.resends = 0  # requests sent again after a timeout
        self.replays = 0  # sessions rebuilt from the kept hidden states
        self.open_extra: dict[str, Any] = {}  # more fields of every open (a U-shape's topology, downlink codec)
        # called before each resend with (this try, all tries): a seam for progress and for tests that wait on it
        self.on_retry: Callable[[int, int], None] | None = None

    # -- the Link interface ----------------------------------------------------------------------
    def step(self, enc, start: int) -> int:
        """Send one step's codec message (positions start..start+T-1); returns the server's next token."""
        if isinstance(enc, VerifyRequest):
            return self.verify(enc.enc, start, enc.draft, enc.draft_p)
        if self.sid is None:
            self._open_and_replay_until_open()
        return self._step_one(enc.to_frames(), start, tokens_of(enc))

    def verify(self, enc, start: int, draft, draft_p=None) -> list[int]:
        """A speculative step: the hidden states of [x, d1..dγ] and the drafted ids go up in one message;
        returns the accepted drafts plus the server's own next token (`ServerSession.verify`). Retried
        and replayed exactly once like any step (the server's sampling is seeded by position)."""
        draft = [int(t) for t in draft]
        draft_p = None if draft_p is None else [float(q) for q in draft_p]
        if not 0 < len(draft) <= p.MAX_DRAFT:
            raise ConfigError(f"a verify step carries 1..{p.MAX_DRAFT} drafted tokens, got {len(draft)}")
        if tokens_of(enc) != len(draft) + 1:
            raise ConfigError(f"a verify step with {len(draft)} drafted tokens carries {len(draft) + 1} hidden "
                              f"states, got {tokens_of(enc)}")
        if self.sid is None:
            self._open_and_replay_until_open()
        toks = self._step_one(enc.to_frames(), start, tokens_of(enc), draft, draft_p)
        return toks

    def score(self, enc, start: int, targets: list[int]) -> tuple[list[float], list[bool]]:
        """A teacher-forced scoring step (`splitinfer.eval`): sends the message like `step` and gets back
        the log-probabilities of `targets` — the tokens that follow the step's last len(targets)
        positions — and whether each is the server's argmax. Retried and replayed like any step."""
        targets = [int(t) for t in targets]
        if len(targets) > tokens_of(enc):
            raise ConfigError(f"a step carrying {tokens_of(enc)} positions cannot score {len(targets)} tokens")
        if self.sid is None:
            self._open_and_replay_until_open()
        self._step_one(enc.to_frames(), start, tokens_of(enc), score=targets)
        return self.last_scores

    def max_chunk_tokens(self, hidden: torch.Tensor) -> int:
        """How many positions one message may carry: the server's max_step_tokens, and its message cap
        (an fp32-sized estimate plus room for headers; codecs only make it smaller)."""
        if self.sid is None:
            self._open_and_replay_until_open()
        n = hidden.shape[1]
        per = min(n, self.server_limits.get("max_step_tokens") or n)
        cap = self.server_limits.get("max_message_bytes")
        if cap and per > 1:
            per = max(1, min(per, (cap - 4096) // max(1, hidden[0, 0].numel() * hidden.element_size())))
        return per

    def _open_and_replay_until_open(self) -> None:
        for _ in range(self.max_replays + 1):
            self._open_and_replay()
            if self.sid is not None:
                return
        raise TransportError(f"the server at {self.url} lost the session {self.max_replays + 1} times while it "
                             "was being replayed; giving up")

    def _step_one(self, frames: list, start: int, tokens: int, draft: list[int] | None = None,
                  draft_p: list[float] | None = None, score: list[int] | None = None):
        for attempt in itertools.count():
            if self.sid is None:
                self._open_and_replay()
                if self.sid is None:  # the server lost the session again while we replayed it
                    if attempt >= self.max_replays:
                        raise TransportError(f"the server at {self.url} lost the session {attempt + 1} times "
                                             "while it was being replayed; giving up")
                    continue
            rep = self._step_request(frames, start, draft, draft_p, score)
            if rep["ok"]:
                break
            if rep["code"] != p.UNKNOWN_SESSION or attempt >= self.max_replays:
                raise RemoteError(rep["code"], rep["msg"])
            self.sid = None  # the server lost it: open a new session and replay (loop)
        toks = self._tokens(rep, start, draft)
        if draft is not None:
            self.drafts[len(self.history)] = (draft, draft_p, toks)
        self.history.append((start, frames, toks[-1]))
        self.traffic.add_up(sum(memoryview(f).nbytes for f in frames), tokens,
                            "decode" if draft is not None else phase_of(start, tokens))
        return toks if draft is not None else toks[0]

    def reset(self) -> None:
        """Start a new generation: drop the current session (without waiting) and zero the counters."""
        if self.sid is not None and self._sock is not None:
            try:
                self._sock.send(p.pack(p.request("close", next(self._rids), sid=self.sid)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self.sid, self.seq, self.history, self.drafts = None, 0, [], {}
        self.bytes_up = self.bytes_down = self.messages = self.resends = self.replays = 0
        self.traffic = Traffic()

    def close(self) -> None:
        """Close the server session (waiting briefly for its reply) and this link's socket."""
        if self.sid is not None and self._sock is not None:
            try:
                self._request(p.request("close", next(self._rids), sid=self.sid), (), retries=0,
                              timeout_s=min(self.timeout_s, 1.0))
            except TransportError:
                pass
        self.sid = None
        self._disconnect()
        if not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> RemoteLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- other operations ----------------------------------------------------------------------
    def info(self) -> dict:
        rep = self._request(p.request("info", next(self._rids)), ())
        if not rep["ok"]:
            raise RemoteError(rep.get("code"), rep.get("msg"))
        return {k: v for k, v in rep.items() if k not in ("v", "rid", "ok", "msg")}

    def ping(self) -> float:
        """Round-trip time of an empty request, in seconds."""
        t0 = time.perf_counter()
        self._request(p.request("ping", next(self._rids)), ())
        return time.perf_counter() - t0

    # -- internals -----------------------------------------------------------------------------
    def _open_and_replay(self) -> None:
        if self.history:
            self.replays += 1
        env = p.request("open", next(self._rids), fingerprint=self.fingerprint, cuts=self.cuts,
                        codec=codec_spec(self.codec), sampling=p.sampling_to_wire(self.sampling),
                        hidden=self.hidden_size, nonce=secrets.token_hex(8), **self.open_extra)
        rep = self._request(env, ())
        if not rep["ok"]:
            raise RemoteError(rep.get("code"), rep.get("msg"))
        if not isinstance(rep.get("sid"), str):
            raise TransportError(f"server's open reply has no session id: {str(rep)[:200]}")
        self.sid, self.seq = rep["sid"], 0
        self.server_limits = {k: rep.get(k) for k in ("max_tokens", "max_step_tokens", "max_message_bytes")}
        for i, (start, frames, token) in enumerate(self.history):
            draft, draft_p, toks = self.drafts.get(i, (None, None, [token]))
            rep = self._step_request(frames, start, draft, draft_p)
            if not rep["ok"]:
                if rep["code"] == p.UNKNOWN_SESSION:
                    self.sid = None  # lost again mid-replay; the caller's loop opens once more
                    return
                raise RemoteError(rep["code"], f"while replaying position {start}: {rep['msg']}")
            if self._tokens(rep, start, draft) != toks:
                raise TransportError(f"replayed step at position {start} gave token {rep['tok']}, not {token} as "
                                     "before; the server's model, codec or sampling is not what it was")

    def _step_request(self, frames: list, start: int, draft: list[int] | None = None,
                      draft_p: list[float] | None = None, score: list[int] | None = None) -> dict:
        seq = self.seq + 1
        env = p.request("step", next(self._rids), sid=self.sid, seq=seq, start=start)
        if score is not None:
            env["score"] = score
        if draft is not None:
            env["draft"] = draft
            if draft_p is not None:
                env["draft_p"] = draft_p
        if self.want_logprob:
            env["logprob"] = True
        rep = self._request(env, frames)
        if rep["ok"]:
            self.seq = seq
            self.last_logprob = rep.get("lp")
            if score is not None:
                try:
                    self.last_scores = p.reply_scores(rep, len(score))
                except ValueError as e:
                    raise TransportError(f"malformed scoring reply from {self.url}: {e}") from None
        return rep

    def _tokens(self, rep: dict, start: int, draft: list[int] | None) -> list[int]:
        try:
            return p.reply_tokens(rep, start, draft, self.vocab_size)
        except ValueError as e:
            raise TransportError(f"malformed step reply from {self.url}: {e}") from None

    def _connect(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        if self.curve:
            sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = self.curve
        sock.connect(self.url)
        self._sock = sock
        return sock

    def _disconnect(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _request(self, env: dict, payload, *, retries: int | None = None, timeout_s: float | None = None) -> dict:
        """Lazy Pirate: send, wait up to timeout_s, on silence reconnect and resend; give up after retries."""
        frames = [p.pack(env), *payload]
        size = sum(memoryview(f).nbytes for f in frames)
        retries = self.retries if retries is None else retries
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        cap = self.server_limits.get("max_message_bytes")
        if cap and size > cap:
            raise RemoteError(p.TOO_LARGE, f"message of {size} bytes is over the server's limit of {cap}")
        for attempt in range(retries + 1):
            sock = self._sock or self._connect()
            if attempt:
                self.resends += 1
                # said as it happens: against a dead address the tries add up to retries x timeout in silence
                log.warning("no reply from %s to %r within %g s; retry %d/%d", self.url, env["op"], timeout_s,
                            attempt + 1, retries + 1)
                if self.on_retry is not None:
                    self.on_retry(attempt + 1, retries + 1)
            _send_frames(sock, frames)
            self.bytes_up += size
            self.messages += 1
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                if not sock.poll(max(1, int(left * 1e3)), zmq.POLLIN):
                    break
                reply = sock.recv_multipart()
                self.bytes_down += sum(len(f) for f in reply)
                try:
                    rep = p.unpack(reply[0])
                except p.ProtocolError:
                    continue
                if rep.get("rid") != env["rid"]:
                    continue  # a late reply to an earlier request (e.g. a close sent without waiting)
                if not isinstance(rep.get("ok"), bool) or (not rep["ok"] and not isinstance(rep.get("code"), str)):
                    raise TransportError(f"malformed reply from {self.url}: {str(rep)[:200]}")
                rep.setdefault("msg", "")
                if len(reply) > 1:  # raw frames after the envelope (a U-shape's hidden state)
                    rep[p.FRAMES_KEY] = reply[1:]
                return rep
            self._disconnect()  # Lazy Pirate: the socket may hold a half-sent request; start clean
        raise TransportTimeout(f"no reply from {self.url} to {env['op']!r} after {retries + 1} tries of "
                               f"{timeout_s:g} s; is `splitinfer serve` running there (and reachable)? A server with --curve on "
                               f"ignores clients without an allowed key (curve_keys= or ${CURVE_KEYS_ENV})")


COPY_BELOW = 64 * 1024  # smaller frames are cheaper to copy than to hand to libzmq zero-copy


def _send_frames(sock: zmq.Socket, frames: list) -> None:
    """Send a multipart message; large buffers (prefill hidden states) go without a copy."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        sock.send(f, zmq.SNDMORE if i < last else 0, copy=memoryview(f).nbytes < COPY_BELOW)


def remote_generator(lm: LoadedModel, cuts, server_url: str, codec: Any = None,
                     sampling: SamplingConfig | None = None, *, defense: Any = None,
                     placement: Placement | None = None, link_cls: type[RemoteLink] | None = None,
                     **link_kwargs: Any) -> SplitGenerator:
    """A SplitGenerator whose device half runs here and whose server half runs at `server_url`.

    `codec` None means the project's default codec; `"none"` sends raw fp32. `defense` (a
    `splitinfer.privacy` defense or its name) runs on the device before the codec; the server needs no
    change (a defense that does, `secret_permutation`, is refused). CURVE keys come from `curve_keys=DIR` or the SPLITINFER_CURVE_KEYS environment variable (a
    `splitinfer keygen` folder). `placement`: the device half's torch device and dtype (the server's are
    its own). `link_cls`: the link class (`ReplicaLink` for a list of replicas,
    `topology.RemoteHiddenLink` for a U-shape); `RemoteLink` by default.
    """
    cuts = validate_cuts(cuts, lm.num_layers)
    if "curve" not in link_kwargs and "curve_keys" not in link_kwargs and os.environ.get(CURVE_KEYS_ENV):
        link_kwargs["curve_keys"] = os.environ[CURVE_KEYS_ENV]
    if isinstance(defense, str | dict):
        from splitinfer.privacy.defenses import build_defense

        defense = build_defense(defense)
    if getattr(defense, "needs_server", False):
        raise ConfigError(f"defense {defense.name!r} needs a server provisioned with weights folded with its secret; "
                          f"`splitinfer serve` holds the public weights, so the remote half would compute garbage. "
                          f"Run it in process (`splitinfer generate` without --server, a sweep) or pick a "
                          f"device-only defense (gaussian, dchi, fisher_noise, nopeek, secret_adapter)")
    codec = bind_to(resolve_codec(default_codec() if codec is None else codec), lm, cuts[0])
    device = DeviceHalf(split_model(lm, cuts)[0], codec=codec, defense=bind_to(defense, lm, cuts[0]),
                        placement=placement)
    link = (link_cls or RemoteLink)(server_url, fingerprint=lm.fingerprint, cuts=cuts, hidden_size=lm.hidden_size,
                      codec=device.codec, sampling=sampling, vocab_size=lm.vocab_size, **link_kwargs)
    return SplitGenerator(lm, device, link)
