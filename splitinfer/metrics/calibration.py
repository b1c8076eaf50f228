"""Calibrate a hardware profile on this machine: time real stages, fit the roofline's free factors.

The roofline of `metrics.hardware` has three factors a datasheet does not give: the compute and memory
efficiencies and the per-layer overhead. `calibrate` times the device stage of a real model (prefill of
a prompt, and one decode step against a KV cache) at several cuts, fits those three factors on some cuts
(least squares on log time over a grid) and reports predicted against measured on the others, so the
figure it prints is checked on cuts it was not fitted on.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import torch

from splitinfer.metrics.compute import _median_time
from splitinfer.metrics.hardware import HardwareProfile, side_time


@dataclass(frozen=True)
class Timing:
    """One measured stage: its cut, phase, seconds (median) and the shape's FLOPs/bytes for it."""

    cut: int
    phase: str  # prefill (seconds for the whole prompt) | decode (seconds per step)
    seconds: float


@torch.no_grad()
def time_device_stages(lm, cuts: list[int], prompt_tokens: int, context_tokens: int, repeats: int,
                       seed: int = 0) -> list[Timing]:
    """Median seconds of the device stage at each cut: a prefill of `prompt_tokens`, and one decode step
    at `context_tokens` of context (the cache cropped back after each step, so every step sees the same
    context)."""
    from splitinfer.models import split_model

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.vocab_size, (1, context_tokens + 1), generator=gen)
    out = []
    for cut in cuts:
        stage = split_model(lm, [cut])[0]
        prompt, ctx, nxt = ids[:, :prompt_tokens], ids[:, :context_tokens], ids[:, context_tokens:]
        stage(prompt)  # warm-up
        out.append(Timing(cut, "prefill", _median_time(lambda stage=stage, prompt=prompt: stage(prompt), repeats)))
        cache = stage.new_cache()
        stage(ctx, cache=cache)
        pos = torch.tensor([[context_tokens]])

        def step(cache=cache, pos=pos, stage=stage, nxt=nxt):
            stage(nxt, position_ids=pos, cache=cache)
            cache.crop(context_tokens)

        step()
        out.append(Timing(cut, "decode", _median_time(step, repeats)))
    return out


def predict(shape, hw: HardwareProfile, t: Timing, prompt_tokens: int, context_tokens: int,
            bits: int = 32) -> float:
    """The roofline's seconds for a measured timing's stage and phase."""
    comps = shape.side(t.cut, "device")
    r = side_time(shape, comps, hw, t.phase, tokens=prompt_tokens, context=context_tokens, weight_bits=bits,
                  kv_bits=bits)
    return r["s"]


def fit(shape, hw: HardwareProfile, timings: list[Timing], prompt_tokens: int, context_tokens: int,
        bits: int = 32) -> HardwareProfile:
    """`hw` with compute/memory efficiency and layer overhead that minimise the squared log error over
    `timings` (a coarse-to-fine grid: three factors, a few thousand roofline evaluations)."""
    def loss(p: HardwareProfile) -> float:
        return sum(math.log(predict(shape, p, t, prompt_tokens, context_tokens, bits) / t.seconds) ** 2
                   for t in timings)

    best, best_loss = hw, loss(hw)
    ce_grid = [0.02 * 1.25 ** i for i in range(25)]  # 0.02 .. ~4 (peak is nominal; > 1 means it was low)
    me_grid = [0.02 * 1.25 ** i for i in range(25)]
    ov_grid = [0.0] + [5 * 1.4 ** i for i in range(18)]  # 0 .. ~1.5 ms per layer (Python + thread wake-ups)
    for ce, me, ov in itertools.product(ce_grid, me_grid, ov_grid):
        p = replace(hw, compute_efficiency=ce, memory_efficiency=me, layer_overhead_us=ov)
        v = loss(p)
        if v < best_loss:
            best, best_loss = p, v
    return best
