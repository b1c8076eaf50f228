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
from splitinfer.split.link import Traffic, phase_of


@dataclass(frozen=True)
class StepRecord:
    """One step through a link: its place, the bytes it moved each way and its wall time."""

    index: int  # 0-based, since the last reset
    start: int  # position of the step's first token
    tokens: int  # positions the step carried
    up_bytes: int
    down_bytes: int
    wall_s: float

    @property
    def phase(self) -> str:
        return phase_of(self.start, self.tokens)


def _tokens_of(enc: EncodedTensor) -> int:
    shape = enc.header.get("shape") or [1, 1, 1]
    return int(shape[1]) if len(shape) == 3 else 1


class MeteredLink:
    """Wraps a Link and records every step (`steps`, a list of StepRecord); `on_step(record)`, if given,
    runs after each step (a test can break things mid-generation there)."""

    def __init__(self, inner, on_step: Callable[[StepRecord], None] | None = None) -> None:
        self.inner = inner
        self.on_step = on_step
        self.steps: list[StepRecord] = []

    @property
    def traffic(self) -> Traffic:
        return self.inner.traffic

    @property
    def bytes_up(self) -> int:
        return self.inner.bytes_up

    @property
    def bytes_down(self) -> int:
        return self.inner.bytes_down

    @property
    def wall_s(self) -> list[float]:
        """Wall seconds of every step since the last reset."""
        return [r.wall_s for r in self.steps]

    def step(self, enc: EncodedTensor, start: int) -> int:
        up, down = self.inner.bytes_up, self.inner.bytes_down
        t0 = time.perf_counter()
        token = self.inner.step(enc, start)
        wall = time.perf_counter() - t0
        record = StepRecord(len(self.steps), start, _tokens_of(enc), self.inner.bytes_up - up,
                            self.inner.bytes_down - down, wall)
        self.steps.append(record)
        if self.on_step is not None:
            self.on_step(record)
        return token

    def reset(self) -> None:
        self.steps = []
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str):  # codec, info(), max_chunk_tokens, replays, ... of the inner link
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


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
    eos = sorted(lm.eos_token_ids) or None
    timer = _TokenTimes()
    t0 = time.perf_counter()
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else 0, streamer=timer)
    tokens = out[0, ids.shape[1]:].tolist()
    stamps = timer.times[1:]  # after the prompt: one per generated token
    prefill = stamps[0] - t0
    decode = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return tokens, prefill, decode
