"""Rehearsal: keep a busy-polling side's critical path warm while it waits for the other side.

In a split decode step each side waits while the other computes (~25-35 ms for SmolLM2 on one
CPU thread). Whatever it does while waiting, the code of its next step goes cold: the first
layers and the wire code after a wait run measurably slower than the same code run back to back
(`scripts/bench_idle_gap.py`; about 2 % of a decode step on our test machine, sleeping or
spinning alike). A side that busy-polls (`busy_poll_ms`) can spend the wait rehearsing instead:
between polls it runs the same code on dummies, so the real step finds its instructions, branch
history and allocator state warm.

The rehearsal runs a *shadow* of the side's stages: the model's own architecture classes and
config, shrunk to 8-wide heads, a 16-wide MLP and a 64-token vocabulary, one layer per stage,
randomly initialised (it never sees the real weights or any user data), cut like the real model. It
also encodes and decodes a dummy hidden state with the session's codec and packs and parses an
envelope. One rehearsal takes ~0.4 ms, but the socket is polled before every shadow module, so a
message waits ~15 us (median) before the rehearsal gives way to it. The shadow compute is
rehearsed only while torch runs one intra-op thread (see `Rehearsal.__call__`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import torch

from splitinfer.models import LoadedModel, split_model
from splitinfer.transport import payload as pl
from splitinfer.transport import protocol as p

log = logging.getLogger(__name__)

SHADOW_HEAD_DIM = 8
SHADOW_MLP = 16
SHADOW_VOCAB = 64


def shadow_plan(cuts: list[int], num_layers: int) -> tuple[list[int], list[int]]:
    """Which real layers the shadow copies (the first of every stage that has layers) and where the
    shadow is cut so that its stages line up with the real ones (a stage without layers stays so)."""
    bounds = [0, *cuts, num_layers]
    firsts, shadow_cuts = [], []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        if i:
            shadow_cuts.append(len(firsts))
        if hi > lo:
            firsts.append(lo)
    return firsts, shadow_cuts


def shadow_model(lm: LoadedModel, cuts: list[int]) -> tuple[LoadedModel, list[int]] | None:
    """A randomly initialised copy of `lm`'s architecture with tiny widths and one layer per stage of
    `cuts`, and the cuts that give it the same stages. None (logged) for an architecture we cannot
    shrink: the rehearsal is then skipped."""
    from splitinfer.models import adapters

    firsts, cuts_out = shadow_plan(list(cuts), lm.num_layers)
    if not lm.is_causal_lm:
        log.info("no rehearsal for %s: the %s encoder has no shadow", lm.name, lm.family)
        return None
    try:
        cfg = adapters.shrink_config(lm.config, firsts, head_dim=SHADOW_HEAD_DIM, mlp=SHADOW_MLP, vocab=SHADOW_VOCAB)
        model = adapters.random_model(cfg)
    except Exception as e:  # a config that does not shrink this way
        log.info("no rehearsal for %s: cannot build a shadow model (%s: %s)", lm.name, type(e).__name__, e)
        return None
    shadow = LoadedModel(model, None, lm.family, f"shadow-{lm.name}", "shadow", source="rehearsal shadow")
    return shadow, cuts_out


PAST = 8  # rehearse a decode step with this many earlier positions in the cache, like a real one


class _Interrupted(Exception):
    """A message arrived mid-rehearsal: drop the rehearsal, serve the message."""


class Rehearsal:
    """Runs one side's step path on dummies: `rehearsal(check)` returns False if `check()` (is a
    message waiting?) turned true first. Checks run before every shadow module, so a message waits
    at most one tiny module (~10-50 us), not a whole rehearsal. Never raises: an error switches the
    rehearsal off for good and is logged once."""

    def __init__(self, compute: Callable[[], object], modules: list[torch.nn.Module], codec, hidden_size: int,
                 *, server: bool, state: object = None) -> None:
        self._compute = compute
        self.state = state  # the shadow's ServerSession (server) or KV cache (device), for inspection
        self._check: Callable[[], bool] | None = None
        for m in modules:
            m.register_forward_pre_hook(self._hook)
        self._server = server
        self._hidden_size = hidden_size
        self._wire: dict[str, list] = {}  # codec key -> wire steps
        self._steps: list = []
        self._wire_only: list = []
        self._codec = None
        self.runs = self.interrupted = 0
        self.failed: str | None = None
        self.use_codec(codec)

    def use_codec(self, codec) -> None:
        """Rehearse the wire path of `codec` from now on (the codec of the session last served)."""
        if codec is self._codec:  # the server calls this after every step: usually the same codec
            return
        self._codec = codec
        key = repr(pl.codec_spec(codec))
        if key not in self._wire:
            if len(self._wire) >= 8:
                self._wire.clear()
            try:
                self._wire[key] = _wire_steps(codec, self._hidden_size, server=self._server)
            except Exception as e:  # a codec that cannot encode a zero state: rehearse the compute only
                log.info("rehearsal skips the wire path of codec %s (%s: %s)", key[:80], type(e).__name__, e)
                self._wire[key] = []
        wire = self._wire[key]
        self._steps = [*wire, self._compute] if self._server else [self._compute, *wire]
        self._wire_only = list(wire)

    def _hook(self, module, args) -> None:
        self._give_way()

    def _give_way(self) -> None:
        """Between two pieces of a rehearsal: stop it if a message waits."""
        if self._check is not None:
            os.sched_yield()  # let ZeroMQ's I/O thread in at once, as a plain busy poll does
            if self._check():
                raise _Interrupted

    def _off(self, e: Exception) -> None:
        self.failed = f"{type(e).__name__}: {e}"
        log.warning("rehearsal switched off after an error: %s", self.failed)

    def __call__(self, check: Callable[[], bool] | None = None) -> bool:
        if self.failed:
            return False
        self._check = check
        try:
            with torch.no_grad():
                # With several intra-op threads the shadow's parallel regions would keep torch's worker
                # threads spinning on the other cores (the other side's, on one machine): rehearse the
                # compute only single-threaded, where it pays (bench_transport runs 1 thread a side).
                for step in self._steps if torch.get_num_threads() == 1 else self._wire_only:
                    step()
                    self._give_way()
            self.runs += 1
            return True
        except _Interrupted:
            self.interrupted += 1
            return False
        except Exception as e:  # a rehearsal must never disturb serving
            self._off(e)
            return False
        finally:
            self._check = None


def _wire_steps(codec, hidden_size: int, *, server: bool) -> list:
    dummy = torch.zeros(1, 1, hidden_size)
    frames = [bytes(memoryview(f)) for f in codec.encode(dummy).to_frames()]
    envelope = p.request("step", 1, sid="0" * 32, seq=1, start=PAST)
    reply = p.ok_reply(1, tok=0, pos=PAST + 1, seq=1)
    env_bytes, reply_bytes = p.pack(envelope), p.pack(reply)
    if server:
        return [lambda: p.unpack(env_bytes),
                lambda: pl.decode_hidden(codec, frames, hidden_size, 1),
                lambda: p.pack(reply)]
    return [lambda: codec.encode(dummy).to_frames(),
            lambda: p.pack(envelope),
            lambda: p.unpack(reply_bytes)]


def _modules(stages) -> list[torch.nn.Module]:
    return [m for st in stages for m in st.modules() if m is not st]


def server_rehearsal(lm: LoadedModel, cuts: list[int], codec, head_wrapper=None) -> Rehearsal | None:
    """What a busy-polling server runs between polls: its stages' shadow on one decode token (after
    PAST earlier positions), sampling, and the wire path of a decode step with `codec`."""
    from splitinfer.generation import ServerSession, sample_token

    built = shadow_model(lm, cuts)
    if built is None:
        return None
    shadow, cuts_out = built
    stages = split_model(shadow, cuts_out)[1:]
    if head_wrapper is not None:
        head_wrapper(stages[-1])
    session = ServerSession(stages)
    with torch.no_grad():
        session.forward(torch.zeros(1, PAST, shadow.hidden_size), 0)
    x = torch.zeros(1, 1, shadow.hidden_size)

    def compute():
        try:
            logits = session.forward(x, PAST)[0, -1]
            sample_token(logits, session.sampling, PAST + 1)
        finally:
            session.rollback(PAST)

    return Rehearsal(compute, _modules(stages), codec, lm.hidden_size, server=True, state=session)


def device_rehearsal(lm: LoadedModel, cuts: list[int], codec) -> Rehearsal | None:
    """What a busy-polling client runs between polls: its device stage's shadow on one decode token
    and the wire path of a decode step with `codec`."""
    built = shadow_model(lm, cuts)
    if built is None:
        return None
    shadow, cuts_out = built
    stage = split_model(shadow, cuts_out)[0]
    cache = stage.new_cache()
    with torch.no_grad():
        stage(torch.ones(1, PAST, dtype=torch.long), cache=cache)
    tok = torch.tensor([[1]])

    def compute():
        try:
            stage(tok, cache=cache)  # as SplitGenerator calls it: positions follow the cache
        finally:
            if cache is not None:
                cache.crop(PAST)

    return Rehearsal(compute, _modules([stage]), codec, lm.hidden_size, server=False, state=cache)
