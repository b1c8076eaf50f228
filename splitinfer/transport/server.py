"""The split server: a ROUTER socket in front of the scheduler and the engine, owned by one thread.

Start it in-thread (tests, notebooks) or as a process (`splitinfer serve`, conf/server/default.yaml):

    server = SplitServer(tiny_model("llama"), cuts=[2], port=0).start()   # server.url, .session_count
    splitinfer serve model=tiny-llama cut=2 port=5555 device=cuda dtype=bfloat16

This module only receives, authenticates, validates, dispatches and replies: a bad message gets an
error reply and nothing else changes. What runs when (admission, continuous batching of decode steps,
chunked prefill batched across sessions, the token budget, quotas, verify steps) is the scheduler's
(`splitinfer.transport.scheduler`, no sockets); the model work (decode -> place on the device and
dtype -> forward one step or a batch -> sample) is the engine's, the same `ServerHalf` in-process links
use (`splitinfer.split.server`).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from splitinfer.errors import ConfigError, NotFoundError
from splitinfer.models import LoadedModel, split_model, validate_cuts
from splitinfer.split.placement import Placement
from splitinfer.split.server import SamplingConfig, ServerHalf
from splitinfer.transport import payload as pl
from splitinfer.transport import protocol as p
from splitinfer.transport.protocol import ProtocolError
from splitinfer.transport.scheduler import DEFAULT_STEP_TOKEN_BUDGET, Scheduler, ServerStats, StepJob
from splitinfer.transport.sessions import Session, SessionLimits, SessionTable

log = logging.getLogger(__name__)

SUPPORTS_DRAFT = True  # runs speculative steps (`draft` in a step envelope; `ServerSession.verify`)

MAX_BATCH = 64  # messages taken off the socket per loop turn (at least max_batch)
DEFAULT_MAX_MESSAGE_BYTES = 16 * 2**20  # 2048 fp32 tokens of a 2048-wide model; SmolLM2 prefill is far less


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


class SplitServer:
    """Serves the stages after the first cut of `lm` to many clients, one KV cache per session."""

    def __init__(self, lm: LoadedModel, cuts, *, host: str = "127.0.0.1", port: int = 0,
                 limits: SessionLimits | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 curve: CurveConfig | None = None, poll_ms: int = 100, batching: bool = True, max_batch: int = 64,
                 batch_wait_ms: float = 0.0, step_token_budget: int = DEFAULT_STEP_TOKEN_BUDGET,
                 device: str | None = "cpu", dtype: str | None = "float32", engine=None) -> None:
        if not lm.is_causal_lm:
            raise ConfigError(f"model {lm.name!r} is an encoder ({lm.family}); the split server serves causal LMs")
        self.lm = lm
        self.cuts = validate_cuts(cuts, lm.num_layers)  # what a client's open must name (a relay: the chain's)
        if not isinstance(batch_wait_ms, int | float) or not 0 <= batch_wait_ms <= 1000:
            raise ConfigError(f"batch_wait_ms={batch_wait_ms!r}: must be a number of milliseconds in [0, 1000] "
                              "(0 = batch what is queued, never wait)")
        placement = Placement.of(device, dtype)
        # the engine: the same server half in-process links use, placed on its device and dtype; or a
        # middle slice (a relay hop, a U-shape: splitinfer.split.middle) built by the caller
        self.engine = engine or ServerHalf(split_model(lm, self.cuts)[1:], placement=placement,
                                           last_position_only=True)
        self.topology = getattr(self.engine, "topology", "chain")
        self.cuts = list(getattr(self.engine, "cuts", self.cuts))  # a relay hop: the whole chain's [A, *next cuts]
        batching = batching and getattr(self.engine, "batches", True)
        self.stages = self.engine.stages
        self.host = host
        self.port = int(port)
        self.limits = limits or SessionLimits()
        self.max_message_bytes = int(max_message_bytes)
        self.curve = curve
        self._curve_keys = curve.load() if curve else None
        self.poll_ms = poll_ms
        self.batch_wait_ms = float(batch_wait_ms)
        self._client: str | None = None  # who sent the message being handled (quotas)
        self.sessions = SessionTable(self.limits, self.engine.kv_bytes_per_token())
        self.stats = ServerStats()
        self._lock = threading.Lock()  # guards reads of the session table from other threads
        self._sessions_changed = threading.Condition(self._lock)  # notified after each message and eviction sweep
        self.scheduler = Scheduler(self.engine, self.sessions, batching=batching, max_batch=max_batch,
                                   step_token_budget=step_token_budget, stats=self.stats, lock=self._lock)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def placement(self) -> Placement:
        return self.engine.placement

    @property
    def batching(self) -> bool:
        return self.scheduler.batching

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def step_token_budget(self) -> int:
        return self.scheduler.step_token_budget

    # -- what tests and operators look at ------------------------------------------------------
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

    def wait_for_sessions(self, at_most: int = 0, timeout: float = 10.0) -> bool:
        """Block until at most `at_most` sessions are live (closed or evicted) or `timeout` s pass; returns
        whether they are. Event-driven: the serving thread notifies after every message it handles and every
        eviction sweep, so a test or an operator waits on the server instead of polling `session_count`."""
        with self._sessions_changed:
            return self._sessions_changed.wait_for(lambda: len(self.sessions) <= at_most, timeout)

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

    @property
    def serving(self) -> bool:
        """The serving thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """What stopped the serving thread, if anything did."""
        return self._error

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
            self.scheduler.new_turn()
            # a prefill in progress: take what is queued, do not wait; else sleep in poll until a request
            ready = bool(sock.poll(0 if self.scheduler.busy else self.poll_ms, zmq.POLLIN))
            if ready:
                batch = self._receive(sock)
                self._handle_batch(sock, batch)
            if self.scheduler.busy:
                self._advance(sock)
            if time.monotonic() >= next_evict:
                with self._lock:
                    n = self.sessions.evict_idle()
                    self._sessions_changed.notify_all()
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
        """Handle messages in arrival order; steps go to the scheduler together (`Scheduler.submit`)."""
        pending: list[StepJob] = []
        for frames in batch:
            with self._lock:
                reply_to, reply = self._prepare(frames)
                self._sessions_changed.notify_all()
            if isinstance(reply, StepJob):
                pending.append(reply)
                continue
            if pending:  # keep order: a close after a step of the same session must see the step
                self._submit(sock, pending)
                pending = []
            if reply_to is not None and reply is not None:  # None: a retry of a step still in progress
                self._send(sock, reply_to, reply)
        if pending:
            self._submit(sock, pending)

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
                "cuts": self.cuts, "topology": self.topology, **getattr(self.engine, "info", dict)(),
                "hidden": self.lm.hidden_size, "sessions": len(self.sessions),
                "kv_bytes": self.sessions.kv_bytes(), "curve": self.curve is not None,
                "max_message_bytes": self.max_message_bytes, "limits": asdict(self.limits),
                "steps": self.stats.steps, "compute_s": self.stats.compute_s, "cpu_s": time.process_time(),
                "placement": {"device": str(self.placement.device),
                              "dtype": str(self.placement.dtype).removeprefix("torch.")},
                "batching": {"on": self.batching, "max_batch": self.max_batch,
                             "batch_wait_ms": self.batch_wait_ms, "step_token_budget": self.step_token_budget,
                             "forwards": self.stats.forwards, "batched_steps": self.stats.batched_steps,
                             "max_batch_seen": self.stats.max_batch_seen,
                             "prefill_chunks": self.stats.prefill_chunks,
                             "batched_prefills": self.stats.batched_prefills},
                "speculative": {"steps": self.stats.verify_steps, "drafted": self.stats.drafted,
                                "accepted": self.stats.accepted}}

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
        topology = env.get("topology", "chain")
        if topology not in p.TOPOLOGIES:
            raise ProtocolError(p.BAD_FIELD, f"field 'topology'={str(topology)[:40]!r} must be one of {list(p.TOPOLOGIES)}")
        if fp != self.lm.fingerprint:
            raise ProtocolError(p.MODEL_MISMATCH, f"client model fingerprint {fp!r} differs from this server's "
                                                  f"{self.lm.fingerprint!r} ({self.lm.name}); load the same "
                                                  "model (same weights) on both sides")
        if cuts != self.cuts:
            raise ProtocolError(p.CUT_MISMATCH, f"client cuts {cuts} differ from this server's {self.cuts}; "
                                                f"run the device with --cut {','.join(map(str, self.cuts))} "
                                                "or restart the server with the client's cut")
        if topology != self.topology:
            raise ProtocolError(p.CUT_MISMATCH, f"client asks for a {'U-shaped split' if topology == 'u' else 'chain'} "
                                                f"but this server runs a {'U-shape' if self.topology == 'u' else 'chain'}"
                                                " (cuts " + ",".join(map(str, self.cuts)) + "); "
                                                + ("add --u-shape to the device" if self.topology == "u" else
                                                   "start the server with --u-shape, or drop it on the device"))
        if "down_codec" in env and topology != "u":
            raise ProtocolError(p.BAD_FIELD, "field 'down_codec' is for a U-shaped split (topology 'u') only")
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
        make = self.engine.session
        if hasattr(self.engine, "open_session"):  # a middle slice: its own per-session parts (downlink codec,
            make = self.engine.open_session(env, spec)  # link to the next hop), checked before the session opens
        s = self.sessions.open(lambda: make(sampling), codec, nonce, owner, self._client)
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
        if self.scheduler.join_inflight(s, seq, start, reply_to, env["rid"]):  # a retry of a prefill in
            return None  # progress: its reply goes to the latest request
        if seq == s.last_seq and s.last_reply is not None:  # a retry of the step we already applied
            if start != s.last_start:
                raise ProtocolError(p.BAD_SEQ, f"seq {seq} was applied at start {s.last_start}, not {start}")
            return dict(s.last_reply, rid=env["rid"])
        if seq != s.last_seq + 1:
            raise ProtocolError(p.BAD_SEQ, f"seq {seq} is neither the next step ({s.last_seq + 1}) nor a retry "
                                           f"of the last ({s.last_seq}); replay into a new session")
        draft, draft_p = p.get_draft(env, self.lm.vocab_size)
        score = p.get_score(env, self.lm.vocab_size)
        refusal = getattr(self.engine, "refuse_step", None)  # a middle slice: what its steps cannot ask for
        if refusal is not None and (why := refusal(score=score, want_logprob=want_lp)):
            raise ProtocolError(p.BAD_FIELD, why)
        hidden = pl.decode_hidden(s.codec, [f.buffer for f in payload], self.lm.hidden_size,
                                  self.limits.max_step_tokens, decode=self.engine.decode)
        p.check_draft_positions(int(hidden.shape[1]), draft)
        p.check_score_positions(int(hidden.shape[1]), score)
        return StepJob(reply_to, env["rid"], s, seq, start, hidden, want_lp, draft=draft, draft_p=draft_p,
                       score=score)

    def _advance(self, sock: zmq.Socket) -> None:
        """One scheduler turn of queued prompts; answer each forward's prompts as soon as it is done.
        (A method of its own so no reply, and no session through it, outlives the turn in `_loop`.)"""
        for replies in self.scheduler.advance_groups():
            self._reply_all(sock, replies)

    def _submit(self, sock: zmq.Socket, jobs: list[StepJob]) -> None:
        """Hand steps to the scheduler; answer each forward's steps as soon as it is done."""
        for replies in self.scheduler.submit_groups(jobs):
            self._reply_all(sock, replies)

    def _reply_all(self, sock: zmq.Socket, replies: list) -> None:
        """Send the scheduler's replies (route = the request's routing frames)."""
        for reply_to, reply in replies:
            self._send(sock, reply_to, reply)

    def _send(self, sock: zmq.Socket, reply_to: list, reply: dict) -> None:
        frames = reply.get(p.FRAMES_KEY) or ()  # a U-shape's hidden state: raw frames after the envelope
        data = p.pack({k: v for k, v in reply.items() if k != p.FRAMES_KEY} if frames else reply)
        self.stats.bytes_out += len(data) + sum(memoryview(f).nbytes for f in frames)
        try:
            sock.send_multipart([*reply_to, data, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # peer gone or its queue full: drop this reply, keep serving
            log.warning("could not reply to a client: %s", e)


__all__ = ["CurveConfig", "SplitServer", "is_loopback"]
