"""The scheduler between the socket server and the engine: which steps run together, and when.

No sockets here (the server hands it validated `StepJob`s and sends the replies it returns) and no
model computation (it calls the engine, `splitinfer.split.server.ServerHalf`: forward a step or a
batch, sample). It owns:

- admission: a step is checked alone before it computes (sequence number, position, a retry answered
  from the session's reply cache, token and KV-memory limits, the client's quota);
- continuous batching: the queued decode steps (one token) of different sessions run as one forward,
  at most `max_batch` per forward, with no wait for a batch to fill;
- chunked prefill under a per-turn token budget: each turn (`advance`) computes the queued prefills,
  oldest first, for `step_token_budget` tokens less the turn's decode tokens (at least a quarter of
  it); the oldest queued prompt runs (a chunk of it when longer than the budget) together with queued
  prompts of other sessions whose rest is about as long (padded a little), so a burst of prompts shares
  forwards, every row of a forward finishes its prompt, and a long prompt does not stall the other
  sessions' decode steps;
- verify steps (a speculative step carrying drafted tokens) and scoring steps (a step carrying `score`:
  the log-probabilities of given tokens, for evaluation harnesses) run alone, unchunked.

If a batched forward fails, its steps are rerun one by one, so one bad session fails alone. Without
batching (`batching=False`) every step runs alone in arrival order, a prefill whole (the unbatched
server, for comparison). Replies are `(route, reply)` pairs: `route` is whatever the server attached
to the job (its ZeroMQ routing frames).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from splitinfer.errors import ConfigError
from splitinfer.split.placement import synchronize
from splitinfer.split.server import ServerHalf, StepError
from splitinfer.transport import protocol as p
from splitinfer.transport.protocol import ProtocolError
from splitinfer.transport.sessions import Session, SessionTable

log = logging.getLogger(__name__)

DEFAULT_STEP_TOKEN_BUDGET = 512  # tokens one scheduler turn computes: decode steps first, then prefill chunks
# Grouping prompts of different sessions into one forward (SmolLM2 cut 15, one CPU thread, measured: 8 prompts
# x 20 positions took 0.65x the time of 8 forwards, 4 x 80 0.89x, but 4 rows of 30..90 left-padded to 90 took
# 1.17x): rows of similar length only, each padded by at most this share of its real positions.
MAX_PAD_FRACTION = 0.25


@dataclass
class StepJob:
    """A validated step waiting to run; `route` is the server's (where the reply goes)."""

    route: Any
    rid: int
    session: Session
    seq: int
    start: int
    hidden: torch.Tensor
    want_logprob: bool
    done: int = 0  # positions already computed (a chunked prefill in progress)
    draft: list[int] | None = None  # a speculative step's drafted tokens: it runs alone, unchunked
    draft_p: list[float] | None = None  # the drafter's probability of each drafted token (sampling only)
    score: list[int] | None = None  # a scoring step's targets (`protocol.get_score`): it runs alone, unchunked

    @property
    def tokens(self) -> int:
        return int(self.hidden.shape[1])

    @property
    def left(self) -> int:
        return self.tokens - self.done


Reply = tuple[Any, dict]


@dataclass
class ServerStats:
    requests: int = 0
    steps: int = 0
    tokens: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    compute_s: float = 0.0  # time spent in the engine (forward + sampling, device synchronized)
    forwards: int = 0  # forwards through the stages (a batch of steps counts once)
    batched_steps: int = 0  # decode steps that ran in a batch of two or more
    max_batch_seen: int = 0
    prefill_chunks: int = 0
    batched_prefills: int = 0  # prefill chunks that ran in a forward with other sessions' chunks
    verify_steps: int = 0  # speculative steps (a step carrying drafted tokens)
    drafted: int = 0  # drafted tokens they carried
    accepted: int = 0  # drafted tokens the server accepted
    errors: Counter = field(default_factory=Counter)


class Scheduler:
    """Admission, continuous batching, chunked prefill and verify steps over one engine and one
    session table; `submit` and `advance` return the replies that are ready."""

    def __init__(self, engine: ServerHalf, sessions: SessionTable, *, batching: bool = True, max_batch: int = 64,
                 step_token_budget: int = DEFAULT_STEP_TOKEN_BUDGET, stats: ServerStats | None = None,
                 lock: threading.Lock | None = None) -> None:
        for name, v in (("max_batch", max_batch), ("step_token_budget", step_token_budget)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: must be an int >= 1")
        self.engine = engine
        self.sessions = sessions
        self.batching = bool(batching)
        self.max_batch = int(max_batch)
        self.step_token_budget = int(step_token_budget)
        self.stats = stats or ServerStats()
        self.lock = lock or threading.Lock()  # guards the session table against readers in other threads
        self.prefills: deque[StepJob] = deque()  # chunked prefills in progress (batching only)
        self._decoded = 0  # decode tokens computed this turn (they come out of the budget)

    @property
    def busy(self) -> bool:
        """Prefills are in progress: the server should not sleep before the next `advance`."""
        return bool(self.prefills)

    def new_turn(self) -> None:
        self._decoded = 0

    # -- what the server hands over -------------------------------------------------------------
    def join_inflight(self, s: Session, seq: int, start: int, route: Any, rid: int) -> bool:
        """A retry of a prefill still in progress joins it (its reply goes to the latest request)."""
        job = s.inflight
        if job is not None and (job.seq, job.start) == (seq, start):
            job.route, job.rid = route, rid
            return True
        return False

    def submit(self, jobs: list[StepJob]) -> list[Reply]:
        """Run (or queue) validated steps (`submit_groups`), all their replies at once."""
        return [r for replies in self.submit_groups(jobs) for r in replies]

    def submit_groups(self, jobs: list[StepJob]) -> Iterator[list[Reply]]:
        """Run (or queue) validated steps, yielding the replies of each forward as soon as it is done. With
        batching the decode steps of distinct sessions run as batches of at most max_batch and prefills
        are queued for chunks (`advance_groups`); a session's later steps in `jobs` (retries, hostile
        repeats) run after its first, one by one. Without batching, one after another in arrival order."""
        if not self.batching:
            for job in jobs:
                yield [self._run_one(job)]
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
            yield self._run_decode_batch(batch[i:i + self.max_batch])
        for job in rest:
            if job.tokens == 1 or job.draft is not None or job.score is not None:
                yield [self._run_one(job)]
            else:
                yield self._queue_prefill(job)

    def advance(self) -> list[Reply]:
        """One turn of queued prefills (`advance_groups`), all its replies at once."""
        return [r for replies in self.advance_groups() for r in replies]

    def advance_groups(self) -> Iterator[list[Reply]]:
        """One turn of queued prefills: oldest first, for what the decode steps left of the token budget
        (at least a quarter of it), one forward per group (`_prefill_group`); yields each forward's
        replies as soon as it is done, so a prompt finished early in the turn is answered at once."""
        budget = max(self.step_token_budget - self._decoded, self.step_token_budget // 4, 1)
        while self.prefills and budget > 0:
            group = self._prefill_group(budget)
            budget -= sum(n for _, n in group)
            yield self._run_prefill_group(group)

    # -- admission ------------------------------------------------------------------------------
    def admit(self, job: StepJob, pending_tokens: int = 0) -> dict | None:
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

    def error_reply(self, job: StepJob, e: Exception) -> dict:
        if isinstance(e, ProtocolError):
            self.stats.errors[e.code] += 1
            return p.error_reply(job.rid, e.code, e.message)
        log.error("internal error in a step", exc_info=e)
        self.stats.errors[p.INTERNAL] += 1
        return p.error_reply(job.rid, p.INTERNAL, f"{type(e).__name__}: {e}")

    # -- running steps --------------------------------------------------------------------------
    def _timed(self, fn, *args):
        """Run an engine call, counting its time (the device synchronized, so queued work counts)."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            synchronize(self.engine.placement.device)
            self.stats.compute_s += time.perf_counter() - t0

    def _run_one(self, job: StepJob) -> Reply:
        """One step on its own (steps that cannot join a batch, and the unbatched server)."""
        with self.lock:
            try:
                reply = self._run_step(job)
            except Exception as e:
                reply = self.error_reply(job, e)
        return job.route, reply

    def _run_step(self, job: StepJob) -> dict:
        cached = self.admit(job)
        if cached is not None:
            return cached
        s = job.session
        if job.draft is not None:
            return self._verify(job)
        scored = None
        try:
            if job.score is not None:  # logits at every position: the served half scores given tokens
                logits, scored = self._timed(s.state.forward_scored, job.hidden, job.start, job.score)
            else:
                logits = self._timed(s.state.forward, job.hidden, job.start)[0, -1]
        except Exception:
            s.state.rollback(job.start)
            raise
        self.stats.forwards += 1
        reply = self._finish(job, logits)
        if scored is not None:  # the recorded reply gets them too, so a resent step is answered the same
            reply["lps"], reply["greedy"] = scored
        return reply

    def _run_decode_batch(self, jobs: list[StepJob]) -> list[Reply]:
        """Decode steps of distinct sessions as one forward; each is checked alone first, and if the
        batched forward fails they are rerun one by one, so a bad session fails alone."""
        replies: dict[int, dict] = {}
        with self.lock:
            admitted, pending = [], 0
            for job in jobs:
                try:
                    cached = self.admit(job, pending)
                except Exception as e:
                    replies[id(job)] = self.error_reply(job, e)
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
                    replies[id(admitted[0])] = self.error_reply(admitted[0], e)
            elif admitted:
                logits = self._batched_forward(admitted, [j.hidden for j in admitted])
                if logits is not None:
                    self.stats.batched_steps += len(admitted)
                    self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(admitted))
                for i, job in enumerate(admitted):
                    try:
                        replies[id(job)] = (self._finish(job, logits[i]) if logits is not None
                                            else self._run_step(job))
                    except Exception as e:
                        replies[id(job)] = self.error_reply(job, e)
            self._decoded += sum(j.tokens for j in admitted)
        return [(job.route, replies[id(job)]) for job in jobs]

    def _batched_forward(self, jobs: list[StepJob], hiddens: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """The engine's batched forward, or None when it failed (every session rolled back)."""
        try:
            logits = self._timed(self.engine.forward_batch, [j.session.state for j in jobs], hiddens)
        except Exception:
            log.warning("a batched forward of %d sessions failed; running them one by one", len(jobs), exc_info=True)
            return None
        self.stats.forwards += 1
        return logits

    def _queue_prefill(self, job: StepJob) -> list[Reply]:
        """Check a prefill and queue it for chunks (`advance`), or answer it now."""
        with self.lock:
            if self.join_inflight(job.session, job.seq, job.start, job.route, job.rid):
                return []  # a resend that came in the same turn
            try:
                reply = self.admit(job)
            except Exception as e:
                reply = self.error_reply(job, e)
            if reply is None:
                job.session.inflight = job
                self.prefills.append(job)
                return []
        return [(job.route, reply)]

    def _prefill_group(self, budget: int) -> list[tuple[StepJob, int]]:
        """The queued prefills that run in one forward, with their chunk sizes. The oldest always runs, for
        c = min(what it has left, `budget`) positions; other queued prompts whose rest fits in c, padded by
        at most MAX_PAD_FRACTION, join it (in arrival order, while the forward stays within `budget`), so
        every row of the forward finishes its prompt and prompts of similar lengths share forwards.
        A prompt longer than the oldest waits for a later forward (it becomes the oldest in time)."""
        queued = list(self.prefills)
        head = queued[0]
        c = min(head.left, budget)
        group = [(head, c)]
        for job in queued[1:]:
            if len(group) >= self.max_batch or (len(group) + 1) * c > budget:
                break
            if job.left <= c and c - job.left <= MAX_PAD_FRACTION * job.left:
                group.append((job, job.left))
        return group

    def _run_prefill_group(self, group: list[tuple[StepJob, int]]) -> list[Reply]:
        out: list[Reply] = []
        with self.lock:
            live, hiddens = [], []
            for job, n in group:
                if job.session.closed:
                    out.append(self._end_prefill(job, ProtocolError(p.UNKNOWN_SESSION, f"session {job.session.sid!r} "
                                                                   "was closed before its prefill finished")))
                    continue
                live.append((job, n))
                hiddens.append(job.hidden[:, job.done:job.done + n])
            logits = None
            if len(live) > 1:
                logits = self._batched_forward([j for j, _ in live], hiddens)
                if logits is not None:
                    self.stats.batched_prefills += len(live)
            for i, (job, n) in enumerate(live):
                try:
                    if logits is None:
                        row = self._timed(job.session.state.forward, hiddens[i], job.start + job.done)[0, -1]
                        self.stats.forwards += 1
                    else:
                        row = logits[i]
                    self.stats.prefill_chunks += 1
                    job.done += n
                    if job.done == job.tokens:
                        out.append((job.route, self._finish(job, row)))
                        self._drop_prefill(job)
                except Exception as e:
                    out.append(self._end_prefill(job, e))
        return out

    def _end_prefill(self, job: StepJob, e: Exception) -> Reply:
        """A prefill that failed: roll its session back to before the step, answer the error."""
        if not job.session.closed:
            job.session.state.rollback(job.start)
        self._drop_prefill(job)
        return job.route, self.error_reply(job, e)

    def _drop_prefill(self, job: StepJob) -> None:
        try:
            self.prefills.remove(job)
        except ValueError:
            pass
        job.session.inflight = None

    def _verify(self, job: StepJob) -> dict:
        """A speculative step (already admitted): run [x, d1..dγ] in one forward, keep the longest
        accepted prefix of the drafts plus the server's own token, roll the KV back past the first
        rejection (`ServerSession.verify`), and reply with all of them (`toks`)."""
        s = job.session
        try:
            toks = self._timed(s.state.verify, job.hidden, job.start, job.draft, job.draft_p)
        except StepError as e:
            s.state.rollback(job.start)
            raise ProtocolError(p.BAD_FIELD, f"speculative step: {e}") from None
        except Exception:
            s.state.rollback(job.start)
            raise
        self.stats.forwards += 1
        self.stats.verify_steps += 1
        self.stats.drafted += len(job.draft)
        self.stats.accepted += len(toks) - 1
        return self._record(job, p.ok_reply(job.rid, tok=toks[-1], toks=toks, pos=s.state.position, seq=job.seq))

    def _finish(self, job: StepJob, logits: torch.Tensor) -> dict:
        """Sample the step's token from its last position's logits (the engine's session samples) and
        remember the reply (retries)."""
        s = job.session
        reply_fields = getattr(s.state, "reply_fields", None)  # a middle slice (relay hop, U-shape) replies
        try:  # with what its topology says (the next hop's token, the hidden state), not a sampled token
            if reply_fields is not None:
                fields, lp = self._timed(reply_fields, job.want_logprob), None
            else:
                token, lp = self._timed(s.state.sample, logits, job.want_logprob)
                fields = {"tok": token}
        except Exception:
            s.state.rollback(job.start)
            raise
        reply = p.ok_reply(job.rid, **fields, pos=s.state.position, seq=job.seq)
        if lp is not None:
            reply["lp"] = lp
        return self._record(job, reply)

    def _record(self, job: StepJob, reply: dict) -> dict:
        s = job.session
        s.last_seq, s.last_start, s.last_reply = job.seq, job.start, reply
        s.stats["steps"] += 1
        s.stats["tokens"] += job.tokens
        self.stats.steps += 1
        self.stats.tokens += job.tokens
        return reply
