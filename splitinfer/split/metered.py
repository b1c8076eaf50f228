"""Per-step measurements for benchmarks and fault tests: a link wrapper and the timed unsplit reference.

    gen.link = MeteredLink(gen.link)             # any Link: in-process, simulated, ZeroMQ
    res = gen.generate(ids, 32)
    [r.up_bytes for r in gen.link.steps if r.phase == "decode"], gen.link.wall_s
    tokens, prefill_s, decode_s = timed_unsplit_generate(lm, ids, 32)   # transformers' own generate

A `MeteredLink` records what each step moved, as the inner link counted it (a ZeroMQ link counts its
real frames: envelope, codec header and buffers, retries), and how long the step took on the wall
clock. Everything else (codec, info(), max_chunk_tokens, ...) is the inner link's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splitinfer.codecs.encoded import EncodedTensor
from splitinfer.split.generator import unsplit_generate
from splitinfer.split.link import LinkWrapper, VerifyRequest, phase_of, tokens_of


@dataclass(frozen=True)
class StepRecord:
    """One step through a link: its place, the bytes it moved each way and its wall time."""

    index: int  # 0-based, since the last reset
    start: int  # position of the step's first token
    tokens: int  # positions the step carried
    up_bytes: int
    down_bytes: int
    wall_s: float
    drafted: int = 0  # a speculative step's drafted tokens (0 for a plain step)

    @property
    def phase(self) -> str:
        """prefill or decode; a speculative step (several positions: x and the drafts) is decode."""
        return "decode" if self.drafted else phase_of(self.start, self.tokens)


class MeteredLink(LinkWrapper):
    """Wraps a Link and records every step (`steps`, a list of StepRecord); `on_step(record)`, if given,
    runs after each step (a test can break things mid-generation there)."""

    def __init__(self, inner, on_step: Callable[[StepRecord], None] | None = None) -> None:
        super().__init__(inner)
        self.on_step = on_step
        self.steps: list[StepRecord] = []

    @property
    def wall_s(self) -> list[float]:
        """Wall seconds of every step since the last reset."""
        return [r.wall_s for r in self.steps]

    def step(self, enc: EncodedTensor, start: int) -> int:
        up, down = self.inner.bytes_up, self.inner.bytes_down
        t0 = time.perf_counter()
        token = self.inner.step(enc, start)
        wall = time.perf_counter() - t0
        record = StepRecord(len(self.steps), start, tokens_of(enc), self.inner.bytes_up - up,
                            self.inner.bytes_down - down, wall,
                            len(enc.draft) if isinstance(enc, VerifyRequest) else 0)
        self.steps.append(record)
        if self.on_step is not None:
            self.on_step(record)
        return token

    def reset(self) -> None:
        self.steps = []
        super().reset()


class _TokenTimes:
    """A transformers streamer that timestamps every put (the first is the prompt, then one per token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def timed_unsplit_generate(lm, ids: torch.Tensor, max_new_tokens: int) -> tuple[list[int], float, list[float]]:
    """Greedy tokens of the unsplit model (transformers' own `generate`, the reference), with the
    prefill time (call to first token) and each later token's decode time, in seconds."""
    timer = _TokenTimes()
    t0 = time.perf_counter()
    tokens = unsplit_generate(lm, ids, max_new_tokens, streamer=timer)
    stamps = timer.times[1:]  # after the prompt: one per generated token
    prefill = stamps[0] - t0
    decode = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return tokens, prefill, decode
