"""The split server: a ROUTER socket and the server stage(s) of a cut model, owned by one thread.

Start it in-thread (tests, notebooks) or as a process:

    server = SplitServer(tiny_model("llama"), cuts=[2], port=0).start()   # server.url, .session_count
    python -m splitinfer.transport.server --model tiny-llama --cut 2 --port 5555

The thread receives requests, validates every field (see `splitinfer.transport` for the protocol),
runs steps and replies; a bad message gets an error reply and nothing else changes.

Continuous batching (on by default; `batching=False` / `--no-batching` runs steps one after another):
the decode steps (one token) of different sessions that are queued when the model thread is free run
as one forward through the server stages (`splitinfer.split.batch.forward_batch`), with no wait for a
batch to fill unless `batch_wait_ms` asks for one and at most `max_batch` sessions per forward. A
prefill (a step of many tokens) runs in chunks: each scheduler turn processes the queued decode steps
and then prefill chunks up to `step_token_budget` tokens (at least a quarter of it), so a long prompt
does not stall the other sessions' decode steps. A step is checked alone before it joins a batch
(sequence number, position, limits), and if a batched forward fails, its steps are rerun one by one,
so one bad session fails alone.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading
import time
from collections import Counter, deque
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import zmq

from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.generation import SamplingConfig, ServerSession, sample_token
from splitinfer.models import LoadedModel, split_model, validate_cuts
from splitinfer.split.batch import forward_batch
from splitinfer.split.scoring import target_logprobs
from splitinfer.split.server import StepError, _all_position_logits
from splitinfer.transport import payload as pl
from splitinfer.transport import protocol as p
from splitinfer.transport.protocol import ProtocolError
from splitinfer.transport.sessions import Session, SessionLimits, SessionTable
from splitinfer.transport.wait import WaitPolicy

log = logging.getLogger(__name__)

SUPPORTS_DRAFT = True  # runs speculative steps (`draft` in a step envelope; `ServerSession.verify`)

DEFAULT_PORT = 5555
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20  # 2048 fp32 tokens of a 2048-wide model; SmolLM2 prefill is far less
MAX_BATCH = 64  # messages taken off the socket per loop turn (at least max_batch)
DEFAULT_STEP_TOKEN_BUDGET = 256  # tokens one scheduler turn computes: decode steps first, then prefill chunks


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or interface name: assume it is reachable from outside


@dataclass
class CurveConfig:
    """CurveZMQ: the server's secret key file and a folder of allowed client public keys."""

    server_secret_file: str
    allowed_clients_dir: str

    def load(self) -> tuple[bytes, bytes]:
        import zmq.auth

        for path in (self.server_secret_file, self.allowed_clients_dir):
            if not Path(path).exists():
                raise NotFoundError(f"CURVE key path {path} does not exist; create keys with "
                                        "`splitinfer keygen --dir DIR` and pass --keys DIR")
        public, secret = zmq.auth.load_certificate(self.server_secret_file)
        if not secret:
            raise ConfigError(f"{self.server_secret_file} holds no secret key; pass the .key_secret file")
        return public, secret


def _peer_address(frame: zmq.Frame) -> str | None:
    """The sender's IP address (ZeroMQ message metadata), the client key for quotas when curve is off."""
    try:
        return frame.get("Peer-Address")
    except (zmq.ZMQError, KeyError, UnicodeDecodeError):
        return None


class LastPositionHead(torch.nn.Module):
    """The LM head applied to the last position only: a step samples from that one, and a prefill of T
    tokens would otherwise pay T x vocab x hidden for logits nobody reads (transformers' `generate`
    skips them too, via logits_to_keep)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h[:, -1:])


def _head_on_last_position_only(stage) -> None:
    # Only this server's own Stage object is changed; the model and other stages keep the full head.
    head = getattr(stage, "lm_head", None)
    if isinstance(head, torch.nn.Module) and not isinstance(head, LastPositionHead):
        stage.lm_head = LastPositionHead(head)


@dataclass
class StepJob:
    """A validated step waiting to run: the seam where decode steps of many sessions could be batched."""

    reply_to: list
    rid: int
    session: Session
    seq: int
    start: int
    hidden: torch.Tensor
    want_logprob: bool
    done: int = 0  # positions already computed (a chunked prefill in progress)
    draft: list[int] | None = None  # a speculative step's drafted tokens: it runs alone, unchunked (`_run_one`)
    draft_p: list[float] | None = None  # the drafter's probability of each drafted token (sampling only)
    score: list[int] | None = None  # a scoring step's targets (`protocol.get_score`): it runs alone, unchunked

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[1])


@dataclass
class ServerStats:
    requests: int = 0
    steps: int = 0
    tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    compute_s: float = 0.0  # time spent in the model (forward + sampling), for overhead accounting
    forwards: int = 0  # forwards through the stages (a batch of decode steps counts once)
    batched_steps: int = 0  # steps that ran in a batch of two or more
    max_batch_seen: int = 0
    prefill_chunks: int = 0
    verify_steps: int = 0  # speculative steps (a step carrying drafted tokens)
    drafted: int = 0  # drafted tokens they carried
    accepted: int = 0  # drafted tokens the server accepted
    errors: Counter = field(default_factory=Counter)


class SplitServer:
    """Serves the stages after the first cut of `lm` to many clients, one KV cache per session."""

    def __init__(self, lm: LoadedModel, cuts, *, host: str = "127.0.0.1", port: int = 0,
                 limits: SessionLimits | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve: CurveConfig | None = None, poll_ms: int = 100,
                 wait: WaitPolicy | dict | str | None = None, batching: bool = True, max_batch: int = 64,
                 batch_wait_ms: float = 0.0, step_token_budget: int = DEFAULT_STEP_TOKEN_BUDGET) -> None:
        if not lm.is_causal_lm:
            raise ConfigError(f"model {lm.name!r} is an encoder ({lm.family}); the split server serves causal LMs")
        self.lm = lm
        self.cuts = validate_cuts(cuts, lm.num_layers)
        self.stages = split_model(lm, self.cuts)[1:]
        _head_on_last_position_only(self.stages[-1])
        self.host = host
        self.port = int(port)
        self.limits = limits or SessionLimits()
        self.max_message_bytes = int(max_message_bytes)
        self.curve = curve
        self._curve_keys = curve.load() if curve else None
        self.poll_ms = poll_ms
        self.batching = bool(batching)
        for name, v in (("max_batch", max_batch), ("step_token_budget", step_token_budget)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: must be an int >= 1")
        if not isinstance(batch_wait_ms, int | float) or not 0 <= batch_wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms={batch_wait_ms!r}: must be a number of milliseconds in [0, 1000] "
                              "(0 = batch what is queued, never wait)")
        self.max_batch = int(max_batch)
        self.batch_wait_ms = float(batch_wait_ms)
        self.step_token_budget = int(step_token_budget)
        self._prefills: deque[StepJob] = deque()  # chunked prefills in progress (batching only)
        self._decoded = 0  # decode tokens computed this scheduler turn (they come out of the budget)
        self._client: str | None = None  # who sent the message being handled (quotas)
        self.wait = WaitPolicy.resolve(wait)  # how to wait for the next request (sleep, spin, rehearse)
        self._rehearsal = None  # built in the serving thread when the policy rehearses (warm.py)
        self._waiter = p.Waiter(self.wait)
        kv_per_token = sum(s.kv_bytes_per_token() for s in self.stages)
        self.sessions = SessionTable(self.limits, kv_per_token)
        self.stats = ServerStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # guards reads of the session table from other threads

    # -- what tests and operators look at ------------------------------------------------------
    @property
    def busy_poll_s(self) -> float:
        return self.wait.busy_poll_s

    @property
    def rehearse(self) -> bool:
        return self.wait.rehearse

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self.sessions)

    @property
    def session_kv_bytes(self) -> int:
        """Bytes held by all sessions' KV caches right now."""
        with self._lock:
            return self.sessions.kv_bytes_actual()

    def info(self) -> dict[str, Any]:
        """What the `info` op answers, plus counters (evictions, errors by code)."""
        with self._lock:
            return {**self._info_unlocked(), "layers": self.lm.num_layers, "evicted": self.sessions.evicted,
                    "errors": dict(self.stats.errors)}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> SplitServer:
        """Serve in a background thread; returns once the socket is bound (self.port is then real)."""
        self._thread = threading.Thread(target=self._run_guarded, name=f"splitinfer-server-{self.port}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"server did not bind {self.url} within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT/SIGTERM or stop()."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: self._stop.set())
        self._run_guarded()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> SplitServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run_guarded(self) -> None:
        try:
            self._run()
        except BaseException as e:  # bind failures etc.: surface to start()/serve_forever()
            self._error = e
            if self._ready.is_set():  # it was serving: say so loudly (start() already returned)
                log.exception("server stopped with an error")
        finally:
            self._ready.set()

    def _run(self) -> None:
        ctx = zmq.Context()
        auth = None
        sock = ctx.socket(zmq.ROUTER)
        try:
            sock.linger = 0
            sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)  # per frame; libzmq drops the peer
            sock.setsockopt(zmq.SNDHWM, 10_000)
            sock.setsockopt(zmq.RCVHWM, 10_000)
            if self._curve_keys:
                from zmq.auth.thread import ThreadAuthenticator

                auth = ThreadAuthenticator(ctx)
                auth.start()
                auth.configure_curve(domain="*", location=self.curve.allowed_clients_dir)
                sock.curve_publickey, sock.curve_secretkey = self._curve_keys
                sock.curve_server = True
            if self.port == 0:
                self.port = sock.bind_to_random_port(f"tcp://{self.host}")
            else:
                sock.bind(self.url)
            log.info("serving %s cut %s on %s (curve %s)", self.lm.name, self.cuts, self.url,
                     "on" if self.curve else "off")
            if self.wait.rehearses:  # built here, before serving: ~50 ms, once
                from splitinfer.transport.warm import server_rehearsal

                self._rehearsal = server_rehearsal(self.lm, self.cuts, pl.RawCodec(), _head_on_last_position_only)
                self._waiter.rehearsal = self._rehearsal
            self._ready.set()
            self._loop(sock)
        finally:
            sock.close(linger=0)
            if auth is not None:
                auth.stop()
            ctx.term()

    def _loop(self, sock: zmq.Socket) -> None:
        next_evict = time.monotonic() + 1.0
        while not self._stop.is_set():
            # Busy polling (WaitPolicy.busy_poll_ms): the next step of a session usually follows within a
            # device-compute time, and a core that never idles answers it without the wake-up (and, on
            # a VM, the slower first milliseconds of a vCPU coming back from halt); see protocol.Waiter.
            self._decoded = 0
            if self._prefills:  # a prefill is in progress: take what is queued, do not wait
                ready = bool(sock.poll(0, zmq.POLLIN))
            else:
                ready = self._waiter.wait(sock, self.poll_ms / 1e3, self._stop)
            if ready:
                batch = self._receive(sock)
                self._handle_batch(sock, batch)
                self._waiter.begin()
            if self._prefills:
                self._advance_prefills(sock)
            if time.monotonic() >= next_evict:
                with self._lock:
                    n = self.sessions.evict_idle()
                if n:
                    log.info("evicted %d idle session(s)", n)
                next_evict = time.monotonic() + 1.0

    def _receive(self, sock: zmq.Socket) -> list:
        """The messages queued now (at most max(MAX_BATCH, max_batch)); with batch_wait_ms, wait that
        long for more after the first."""
        cap = max(MAX_BATCH, self.max_batch)
        batch = []
        deadline = time.monotonic() + self.batch_wait_ms / 1e3 if self.batching and self.batch_wait_ms else None
        while len(batch) < cap:
            try:
                batch.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                left = deadline - time.monotonic() if deadline is not None else 0
                if left <= 0 or not sock.poll(max(1, int(left * 1e3)), zmq.POLLIN):
                    break
        return batch

    # -- request handling ----------------------------------------------------------------------
    def _handle_batch(self, sock: zmq.Socket, batch: list[list[zmq.Frame]]) -> None:
        """Handle messages in arrival order; steps are queued and run together (see `_run_steps`)."""
        pending: list[StepJob] = []
        for frames in batch:
            with self._lock:
                reply_to, reply = self._prepare(frames)
            if isinstance(reply, StepJob):
                pending.append(reply)
                continue
            if pending:  # keep order: a close after a step of the same session must see the step
                self._run_steps(sock, pending)
                pending = []
            if reply_to is not None and reply is not None:  # None: a retry of a step still in progress
                self._send(sock, reply_to, reply)
        if pending:
            self._run_steps(sock, pending)

    def _prepare(self, frames: list[zmq.Frame]) -> tuple[list | None, dict | StepJob | None]:
        """Validate one message. Returns (routing prefix, reply dict or StepJob); never raises."""
        self.stats.requests += 1
        if len(frames) < 2:
            return None, {}  # a ROUTER always prefixes the identity; nothing to answer
        ident = frames[0].bytes
        body = frames[1:]
        reply_to = [ident]
        if len(body[0]) == 0:  # a REQ socket puts an empty delimiter first; answer the same way
            reply_to.append(b"")
            body = body[1:]
        rid = None
        try:
            size = sum(len(f) for f in body)
            self.stats.bytes_in += size
            if not body:
                raise ProtocolError(p.BAD_FRAME, "empty message; send a msgpack envelope frame first")
            env = p.unpack(body[0].buffer)  # <= 4 KiB: safe before the size checks, so they can echo rid
            rid = env.get("rid") if type(env.get("rid")) is int else None
            if len(body) > p.MAX_FRAMES:
                raise ProtocolError(p.BAD_FRAME, f"{len(body)} frames, over the limit of {p.MAX_FRAMES}")
            if size > self.max_message_bytes:
                raise ProtocolError(p.TOO_LARGE, f"message is {size} bytes, over the server's limit of "
                                                 f"{self.max_message_bytes}; send the prefill in smaller chunks")
            owner = frames[1].get("User-Id") if self.curve else None
            self._client = owner if self.curve else _peer_address(frames[1])
            result = self._dispatch(env, body[1:], owner, reply_to)
            return reply_to, result
        except ProtocolError as e:
            self.stats.errors[e.code] += 1
            return reply_to, p.error_reply(rid, e.code, e.message)
        except Exception as e:  # never let one message take the server down
            log.exception("internal error on a request")
            self.stats.errors[p.INTERNAL] += 1
            return reply_to, p.error_reply(rid, p.INTERNAL, f"{type(e).__name__}: {e}")

    def _dispatch(self, env: dict, payload: list, owner: str | None, reply_to: list) -> dict | StepJob | None:
        v = env.get("v")
        if v != p.PROTOCOL_VERSION:
            raise ProtocolError(p.BAD_VERSION, f"protocol version {v!r} is not supported; this server speaks "
                                               f"version {p.PROTOCOL_VERSION}")
        op = env.get("op")
        if op not in p.OPS:
            raise ProtocolError(p.UNKNOWN_OP, f"operation {str(op)[:40]!r} is not one of {list(p.OPS)}")
        p.get_int(env, "rid")
        if op != "step" and payload:
            raise ProtocolError(p.BAD_FRAME, f"op {op!r} takes one frame, got {1 + len(payload)}")
        if op == "step":
            return self._prepare_step(env, payload, owner, reply_to)
        if op == "open":
            return self._open(env, owner)
        if op == "close":
            p.check_keys(env, p.CLOSE_KEYS, "close")
            sid = p.get_str(env, "sid", max_len=64)
            self.sessions.get(sid, owner)
            self.sessions.close(sid)
            return p.ok_reply(env["rid"])
        p.check_keys(env, p.PLAIN_KEYS, op)
        if op == "ping":
            return p.ok_reply(env["rid"])
        return p.ok_reply(env["rid"], **self._info_unlocked())

    def _info_unlocked(self) -> dict:
        return {"protocol": p.PROTOCOL_VERSION, "model": self.lm.name, "fingerprint": self.lm.fingerprint,
                "cuts": self.cuts, "hidden": self.lm.hidden_size, "sessions": len(self.sessions),
                "kv_bytes": self.sessions.kv_bytes(), "curve": self.curve is not None,
                "max_message_bytes": self.max_message_bytes, "limits": asdict(self.limits),
                "steps": self.stats.steps, "compute_s": self.stats.compute_s, "cpu_s": time.process_time(),
                "batching": {"on": self.batching, "max_batch": self.max_batch,
                             "batch_wait_ms": self.batch_wait_ms, "step_token_budget": self.step_token_budget,
                             "forwards": self.stats.forwards, "batched_steps": self.stats.batched_steps,
                             "max_batch_seen": self.stats.max_batch_seen,
                             "prefill_chunks": self.stats.prefill_chunks},
                "speculative": {"steps": self.stats.verify_steps, "drafted": self.stats.drafted,
                                "accepted": self.stats.accepted},
                "wait": self.wait.as_dict(),
                "rehearsal": None if self._rehearsal is None else {
                    "runs": self._rehearsal.runs, "interrupted": self._rehearsal.interrupted,
                    "failed": self._rehearsal.failed}}

    def _open(self, env: dict, owner: str | None) -> dict:
        p.check_keys(env, p.OPEN_KEYS, "open")
        fp = p.get_str(env, "fingerprint", max_len=128)
        cuts = p.get_int_list(env, "cuts")
        hidden = p.get_int(env, "hidden", 1, 2**20)
        nonce = p.get_str(env, "nonce", required=False, max_len=64)
        spec = env.get("codec")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or len(spec) > 32:
            raise ProtocolError(p.BAD_FIELD, f"field 'codec'={str(spec)[:60]} must be a map with a 'name' string")
        sampling_map = p.get_map(env, "sampling", required=False) or {}
        if fp != self.lm.fingerprint:
            raise ProtocolError(p.MODEL_MISMATCH, f"client model fingerprint {fp!r} differs from this server's "
                                                  f"{self.lm.fingerprint!r} ({self.lm.name}); load the same "
                                                  "model (same weights) on both sides")
        if cuts != self.cuts:
            raise ProtocolError(p.CUT_MISMATCH, f"client cuts {cuts} differ from this server's {self.cuts}; "
                                                f"run the device with --cut {','.join(map(str, self.cuts))} "
                                                "or restart the server with the client's cut")
        if hidden != self.lm.hidden_size:
            raise ProtocolError(p.MODEL_MISMATCH, f"client hidden size {hidden} differs from the server's "
                                                  f"{self.lm.hidden_size}")
        try:
            sampling = SamplingConfig(**p.sampling_from_wire(sampling_map))
        except ValueError as e:
            if isinstance(e, ProtocolError):
                raise
            raise ProtocolError(p.BAD_FIELD, f"sampling: {e}") from None
        existing = self.sessions.by_nonce(nonce)
        if existing is not None and existing.owner == owner:  # a retried open: same session again
            return self._open_reply(env["rid"], existing)
        codec = pl.build_session_codec(spec)
        if not getattr(codec, "bound", True):  # a learned codec: its fit for this model and cut, from the cache
            try:
                codec.bind(self.lm, self.cuts[0], fit=False)
            except Exception as e:  # never fit on a client's request (minutes of CPU)
                raise ProtocolError(p.BAD_CODEC, f"codec {spec['name'][:60]!r}: {str(e)[:400]}") from None
        s = self.sessions.open(lambda: ServerSession(self.stages, sampling), codec, nonce, owner, self._client)
        return self._open_reply(env["rid"], s)

    def _open_reply(self, rid: int, s: Session) -> dict:
        return p.ok_reply(rid, sid=s.sid, max_tokens=self.limits.max_tokens_per_session,
                          max_step_tokens=self.limits.max_step_tokens, max_message_bytes=self.max_message_bytes)

    def _prepare_step(self, env: dict, payload: list, owner: str | None, reply_to: list) -> dict | StepJob | None:
        p.check_keys(env, p.STEP_KEYS, "step")
        sid = p.get_str(env, "sid", max_len=64)
        seq = p.get_int(env, "seq", 1)
        start = p.get_int(env, "start", 0, 2**31)
        want_lp = p.get_bool(env, "logprob")
        s = self.sessions.get(sid, owner)
        job = s.inflight
        if job is not None and seq == job.seq and start == job.start:  # a retry of a prefill in progress:
            job.reply_to, job.rid = reply_to, env["rid"]  # its reply goes to the latest request
            return None
        if seq == s.last_seq and s.last_reply is not None:  # a retry of the step we already applied
            if start != s.last_start:
                raise ProtocolError(p.BAD_SEQ, f"seq {seq} was applied at start {s.last_start}, not {start}")
            return dict(s.last_reply, rid=env["rid"])
        if seq != s.last_seq + 1:
            raise ProtocolError(p.BAD_SEQ, f"seq {seq} is neither the next step ({s.last_seq + 1}) nor a retry "
                                           f"of the last ({s.last_seq}); replay into a new session")
        draft, draft_p = p.get_draft(env, self.lm.vocab_size)
        score = p.get_score(env, self.lm.vocab_size)
        hidden = pl.decode_hidden(s.codec, [f.buffer for f in payload], self.lm.hidden_size,
                                  self.limits.max_step_tokens)
        p.check_draft_positions(int(hidden.shape[1]), draft)
        p.check_score_positions(int(hidden.shape[1]), score)
        return StepJob(reply_to, env["rid"], s, seq, start, hidden, want_lp, draft=draft, draft_p=draft_p,
                       score=score)

    def _run_steps(self, sock: zmq.Socket, jobs: list[StepJob]) -> None:
        """Run queued steps: with batching, the decode steps (T=1) of distinct sessions as batches of at
        most max_batch and prefills as chunks (`_advance_prefills`); without, one after another. A
        session's later steps in `jobs` (retries, hostile repeats) run after its first, one by one."""
        if not self.batching:
            for job in jobs:
                self._run_one(sock, job)
            return
        batch, rest, seen = [], [], set()
        for job in jobs:
            sid = job.session.sid
            if sid not in seen and job.tokens == 1 and job.draft is None and job.score is None:
                batch.append(job)
            else:
                rest.append(job)
            seen.add(sid)
        for i in range(0, len(batch), self.max_batch):
            self._run_batch(sock, batch[i:i + self.max_batch])
        for job in rest:
            if job.tokens == 1 or job.draft is not None or job.score is not None:
                self._run_one(sock, job)
            else:
                self._queue_prefill(sock, job)

    def _error_reply(self, job: StepJob, e: Exception) -> dict:
        if isinstance(e, ProtocolError):
            self.stats.errors[e.code] += 1
            return p.error_reply(job.rid, e.code, e.message)
        log.error("internal error in a step", exc_info=e)
        self.stats.errors[p.INTERNAL] += 1
        return p.error_reply(job.rid, p.INTERNAL, f"{type(e).__name__}: {e}")

    def _reply(self, sock: zmq.Socket, job: StepJob, reply: dict) -> None:
        self._send(sock, job.reply_to, reply)
        if self._rehearsal is not None:  # after the reply: rehearse this session's codec from now on
            self._rehearsal.use_codec(job.session.codec)

    def _run_one(self, sock: zmq.Socket, job: StepJob) -> None:
        """One step on its own (today's path; steps that cannot join a batch go through it)."""
        with self._lock:
            try:
                reply = self._run_step(job)
            except Exception as e:
                reply = self._error_reply(job, e)
        self._reply(sock, job, reply)

    def _run_batch(self, sock: zmq.Socket, jobs: list[StepJob]) -> None:
        """Decode steps of distinct sessions as one forward; each is checked alone first, and if the
        batched forward fails they are rerun one by one, so a bad session fails alone."""
        replies: dict[int, dict] = {}
        with self._lock:
            admitted, pending = [], 0
            for job in jobs:
                try:
                    cached = self._admit(job, pending)
                except Exception as e:
                    replies[id(job)] = self._error_reply(job, e)
                    continue
                if cached is not None:
                    replies[id(job)] = cached
                else:
                    admitted.append(job)
                    pending += job.tokens
            if len(admitted) == 1:
                try:
                    replies[id(admitted[0])] = self._run_step(admitted[0])
                except Exception as e:
                    replies[id(admitted[0])] = self._error_reply(admitted[0], e)
            elif admitted:
                t0 = time.perf_counter()
                try:
                    logits = forward_batch([j.session.state for j in admitted],
                                           torch.cat([j.hidden for j in admitted]))
                except Exception:  # rolled back: find the bad one by running each alone
                    log.warning("a batched step of %d sessions failed; running them one by one", len(admitted),
                                exc_info=True)
                    logits = None
                finally:
                    self.stats.compute_s += time.perf_counter() - t0
                if logits is not None:
                    self.stats.forwards += 1
                    self.stats.batched_steps += len(admitted)
                    self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(admitted))
                for i, job in enumerate(admitted):
                    try:
                        replies[id(job)] = (self._finish(job, logits[i]) if logits is not None
                                            else self._run_step(job))
                    except Exception as e:
                        replies[id(job)] = self._error_reply(job, e)
            self._decoded += sum(j.tokens for j in admitted)
        for job in jobs:
            self._reply(sock, job, replies[id(job)])

    def _queue_prefill(self, sock: zmq.Socket, job: StepJob) -> None:
        """Check a prefill and queue it for chunks (`_advance_prefills`), or answer it now."""
        with self._lock:
            inflight = job.session.inflight
            if inflight is not None and (inflight.seq, inflight.start) == (job.seq, job.start):
                inflight.reply_to, inflight.rid = job.reply_to, job.rid  # a resend that came in the same turn
                return
            try:
                reply = self._admit(job)
            except Exception as e:
                reply = self._error_reply(job, e)
            if reply is None:
                job.session.inflight = job
                self._prefills.append(job)
                return
        self._reply(sock, job, reply)

    def _advance_prefills(self, sock: zmq.Socket) -> None:
        """Compute queued prefills, oldest first, for this turn's token budget: what the decode steps
        left of step_token_budget, and at least a quarter of it."""
        budget = max(self.step_token_budget - self._decoded, self.step_token_budget // 4, 1)
        while self._prefills and budget > 0:
            job = self._prefills[0]
            s = job.session
            n = min(budget, job.tokens - job.done)
            reply = None
            with self._lock:
                t0 = time.perf_counter()
                try:
                    if s.closed:
                        raise ProtocolError(p.UNKNOWN_SESSION, f"session {s.sid!r} was closed before its "
                                                               "prefill finished")
                    logits = s.state.forward(job.hidden[:, job.done:job.done + n], job.start + job.done)[0, -1]
                    self.stats.forwards += 1
                    self.stats.prefill_chunks += 1
                    job.done += n
                    if job.done == job.tokens:
                        reply = self._finish(job, logits)
                except Exception as e:
                    if not s.closed:
                        s.state.rollback(job.start)
                    job.done = job.tokens
                    reply = self._error_reply(job, e)
                finally:
                    self.stats.compute_s += time.perf_counter() - t0
                if job.done == job.tokens:
                    self._prefills.popleft()
                    s.inflight = None
            budget -= n
            if reply is not None:
                self._reply(sock, job, reply)

    def _admit(self, job: StepJob, pending_tokens: int = 0) -> dict | None:
        """Check a step before computing it: the cached reply for a retry, None to run it, or a
        ProtocolError. `pending_tokens`: tokens of steps admitted to the same batch (memory limit)."""
        s = job.session
        if s.closed:
            raise ProtocolError(p.UNKNOWN_SESSION, f"session {s.sid!r} was closed before its step ran")
        if s.inflight is not None:
            raise ProtocolError(p.BAD_SEQ, f"seq {job.seq}: session {s.sid!r} is still computing step "
                                           f"{s.inflight.seq}; wait for its reply")
        if job.seq != s.last_seq + 1:  # an earlier message in this batch moved the session on
            if job.seq == s.last_seq and s.last_reply is not None and job.start == s.last_start:
                return dict(s.last_reply, rid=job.rid)
            raise ProtocolError(p.BAD_SEQ, f"seq {job.seq} is not the next step ({s.last_seq + 1})")
        if job.start != s.position:
            raise ProtocolError(p.BAD_POSITION, f"step starts at position {job.start} but session {s.sid!r} is "
                                                f"at {s.position}; resend from {s.position} or replay")
        self.sessions.reserve(s, job.start, job.tokens, pending_tokens)
        return None

    def _run_step(self, job: StepJob) -> dict:
        cached = self._admit(job)
        if cached is not None:
            return cached
        s = job.session
        if job.draft is not None:
            return self._verify(job)
        t0 = time.perf_counter()
        try:
            with _all_position_logits(s.state.stages[-1]) if job.score is not None else nullcontext():
                logits = s.state.forward(job.hidden, job.start)[0]
            scored = None if job.score is None else target_logprobs(logits[len(logits) - len(job.score):], job.score)
            logits = logits[-1]
        except Exception:
            s.state.rollback(job.start)
            raise
        finally:
            self.stats.compute_s += time.perf_counter() - t0
        self.stats.forwards += 1
        reply = self._finish(job, logits)
        if scored is not None:  # the same dict is kept for retries, so a resent step gets the scores too
            reply["lps"], reply["greedy"] = scored
        return reply

    def _verify(self, job: StepJob) -> dict:
        """A speculative step (already admitted): run [x, d1..dγ] in one forward, keep the longest
        accepted prefix of the drafts plus the server's own token, roll the KV back past the first
        rejection (`ServerSession.verify`), and reply with all of them (`toks`)."""
        s = job.session
        t0 = time.perf_counter()
        try:
            toks = s.state.verify(job.hidden, job.start, job.draft, job.draft_p)
        except StepError as e:
            s.state.rollback(job.start)
            raise ProtocolError(p.BAD_FIELD, f"speculative step: {e}") from None
        except Exception:
            s.state.rollback(job.start)
            raise
        finally:
            self.stats.compute_s += time.perf_counter() - t0
        self.stats.forwards += 1
        self.stats.verify_steps += 1
        self.stats.drafted += len(job.draft)
        self.stats.accepted += len(toks) - 1
        reply = p.ok_reply(job.rid, tok=toks[-1], toks=toks, pos=s.state.position, seq=job.seq)
        s.last_seq, s.last_start, s.last_reply = job.seq, job.start, reply
        s.stats["steps"] += 1
        s.stats["tokens"] += job.tokens
        self.stats.steps += 1
        self.stats.tokens += job.tokens
        return reply

    def _finish(self, job: StepJob, logits: torch.Tensor) -> dict:
        """Sample the step's token from its last position's logits and remember the reply (retries)."""
        s = job.session
        t0 = time.perf_counter()
        try:
            token = sample_token(logits, s.state.sampling, s.state.position)
        except Exception:
            s.state.rollback(job.start)
            raise
        finally:
            self.stats.compute_s += time.perf_counter() - t0
        n = job.tokens
        reply = p.ok_reply(job.rid, tok=token, pos=s.state.position, seq=job.seq)
        if job.want_logprob:
            reply["lp"] = float(torch.log_softmax(logits.float(), -1)[token])
        s.last_seq, s.last_start, s.last_reply = job.seq, job.start, reply
        s.stats["steps"] += 1
        s.stats["tokens"] += n
        self.stats.steps += 1
        self.stats.tokens += n
        return reply

    def _send(self, sock: zmq.Socket, reply_to: list, reply: dict) -> None:
        data = p.pack(reply)
        self.stats.bytes_out += len(data)
        try:
            sock.send_multipart([*reply_to, data], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # peer gone or its queue full: drop this reply, keep serving
            log.warning("could not reply to a client: %s", e)


# -- running it as a process ---------------------------------------------------------------------

@dataclass
class ServerConfig:
    """Everything `splitinfer serve` needs; conf/server/default.yaml mirrors it for Hydra."""

    model: str = "smollm2-135m-instruct"
    cut: Any = 15
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    curve: str = "auto"
    keys: str | None = None
    max_sessions: int = SessionLimits.max_sessions
    max_tokens_per_session: int = SessionLimits.max_tokens_per_session
    max_step_tokens: int = SessionLimits.max_step_tokens
    idle_timeout_s: float = SessionLimits.idle_timeout_s
    max_kv_bytes: int = SessionLimits.max_kv_bytes
    max_sessions_per_client: int = SessionLimits.max_sessions_per_client
    client_tokens_per_s: float = SessionLimits.client_tokens_per_s
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    threads: int | None = None  # torch intra-op threads; None = torch's default (all cores)
    # the wait settings, flat as in the YAML and on the command line; `wait()` makes the WaitPolicy
    busy_poll_ms: float = WaitPolicy.busy_poll_ms
    rehearse: bool = WaitPolicy.rehearse
    wake_early_ms: float = WaitPolicy.wake_early_ms
    # continuous batching of decode steps across sessions, and chunked prefill (see the module docstring)
    batching: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 0.0
    step_token_budget: int = DEFAULT_STEP_TOKEN_BUDGET

    def wait(self) -> WaitPolicy:
        return WaitPolicy.from_config(self)

    def limits(self) -> SessionLimits:
        return SessionLimits(int(self.max_sessions), int(self.max_tokens_per_session), int(self.max_step_tokens),
                             float(self.idle_timeout_s), int(self.max_kv_bytes),
                             max_sessions_per_client=int(self.max_sessions_per_client),
                             client_tokens_per_s=float(self.client_tokens_per_s))

    def cuts(self) -> list[int]:
        if isinstance(self.cut, str):
            try:
                return [int(c) for c in self.cut.split(",")]
            except ValueError:
                raise ConfigError(f"cut {self.cut!r} is not an int or a comma-separated list of ints") from None
        return [int(c) for c in self.cut] if isinstance(self.cut, list | tuple) else [int(self.cut)]

    def curve_config(self) -> CurveConfig | None:
        """Resolve curve=auto|on|off; warn when a non-loopback bind goes unencrypted."""
        mode = str(self.curve).lower()
        if mode not in ("auto", "on", "off", "true", "false"):
            raise ConfigError(f"curve={self.curve!r}: choose auto, on or off")
        loopback = is_loopback(self.host)
        on = mode in ("on", "true") or (mode == "auto" and not loopback)
        if not on:
            if not loopback:
                log.warning("binding %s without CurveZMQ: hidden states and tokens cross the network in the "
                            "clear and anyone can connect. Run `splitinfer keygen` and serve with --curve on.",
                            self.host)
            return None
        if not self.keys:
            raise ConfigError(f"CurveZMQ is on (curve={self.curve}, host {self.host}) but no key folder was given; "
                             "run `splitinfer keygen --dir keys` and pass --keys keys "
                             "(or --curve off to serve unencrypted, which is only safe on loopback)")
        keys = Path(self.keys)
        return CurveConfig(str(keys / "server.key_secret"), str(keys / "allowed_clients"))

    def build(self, lm: LoadedModel | None = None) -> SplitServer:
        from splitinfer.models import load_model

        curve = self.curve_config()
        lm = lm or load_model(self.model)
        return SplitServer(lm, self.cuts(), host=self.host, port=int(self.port), limits=self.limits(),
                           max_message_bytes=int(self.max_message_bytes), curve=curve, wait=self.wait(),
                           batching=bool(self.batching), max_batch=int(self.max_batch),
                           batch_wait_ms=float(self.batch_wait_ms), step_token_budget=int(self.step_token_budget))


def config_from_args(args: argparse.Namespace, base: ServerConfig | None = None) -> ServerConfig:
    cfg = base or ServerConfig()
    mapping = {"model": "model", "cut": "cut", "host": "host", "port": "port", "curve": "curve", "keys": "keys",
               "max_sessions": "max_sessions", "max_tokens": "max_tokens_per_session",
               "idle_timeout": "idle_timeout_s", "max_kv_bytes": "max_kv_bytes",
               "max_message_bytes": "max_message_bytes", "threads": "threads", "batching": "batching",
               "max_batch": "max_batch", "batch_wait_ms": "batch_wait_ms", "step_token_budget": "step_token_budget",
               "max_sessions_per_client": "max_sessions_per_client", "client_tokens_per_s": "client_tokens_per_s",
               **{name: name for name in WaitPolicy.names()}}
    for arg, key in mapping.items():
        v = getattr(args, arg, None)
        if v is not None:
            setattr(cfg, key, v)
    return cfg


def run_server(cfg: ServerConfig) -> int:
    t0 = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    server = cfg.build()
    torch.set_grad_enabled(False)
    # Bind first, then announce: tests and scripts wait for this line.
    try:
        server.start()
    except zmq.ZMQError as e:
        raise ConfigError(f"cannot bind {server.url}: {e}; is another server running there? "
                         "Pick another --port (0 = any free port)") from None
    print(f"splitinfer serve: {server.lm.name} (fingerprint {server.lm.fingerprint}) cut {server.cuts} on "
          f"{server.url}, curve {'on' if server.curve else 'off'}, ready in {time.perf_counter() - t0:.1f} s",
          flush=True)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if server._thread is None or not server._thread.is_alive():
                break
    finally:
        server.stop()
    if server._error is not None:
        raise server._error
    return 0


def main(argv: list[str] | None = None) -> int:
    from splitinfer.transport.server_args import add_server_arguments

    parser = argparse.ArgumentParser(prog="python -m splitinfer.transport.server",
                                     description="Serve the server stage of a cut model over ZeroMQ.")
    add_server_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_server(config_from_args(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"splitinfer serve: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
