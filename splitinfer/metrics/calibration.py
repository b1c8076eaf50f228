"""Calibrate a hardware profile on this machine: time real stages, fit the roofline's free factors.

The roofline of `metrics.hardware` has three factors a datasheet does not give: the compute and memory
efficiencies and the per-layer overhead. `calibrate` times the device stage of a real model (prefill of
a prompt, and one decode step against a KV cache) at several cuts, fits those three factors on some cuts
(least squares on log time over a grid) and reports predicted against measured on the others, so the
figure it prints is checked on cuts it was not fitted on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from splitinfer.metrics.hardware import HardwareProfile, side_time


@dataclass(frozen=True)
class Timing:
    """One measured stage: its cut, its phase and its seconds."""

    cut: int
    phase: str  # prefill (seconds for the whole prompt) | decode (seconds per step)
    seconds: float  # fastest of the repeats


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` runs: on a shared machine the least-disturbed run is the closest to the
    stage's own cost (a median still carries other processes' time when they hold the cores)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def time_device_stages(lm, cuts: list[int], prompt_tokens: int, context_tokens: int, repeats: int,
                       seed: int = 0) -> list[Timing]:
    """Seconds (fastest of `repeats`) of the device stage at each cut: a prefill of `prompt_tokens`, and one decode step
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
        out.append(Timing(cut, "prefill", _best_time(lambda stage=stage, prompt=prompt: stage(prompt), repeats)))
        cache = stage.new_cache()
        stage(ctx, cache=cache)
        pos = torch.tensor([[context_tokens]])

        def step(cache=cache, pos=pos, stage=stage, nxt=nxt):
            stage(nxt, position_ids=pos, cache=cache)
            cache.crop(context_tokens)

        step()
        out.append(Timing(cut, "decode", _best_time(step, repeats)))
    return out


def predict(shape, hw: HardwareProfile, t: Timing, prompt_tokens: int, context_tokens: int,
            bits: int = 32) -> float:
    """The roofline's seconds for a measured timing's stage and phase."""
    comps = shape.side(t.cut, "device")
    r = side_time(shape, comps, hw, t.phase, tokens=prompt_tokens, context=context_tokens, weight_bits=bits,
                  kv_bits=bits)
    return r["s"]


def _costs(shape, t: Timing, prompt_tokens: int, context_tokens: int, bits: int) -> np.ndarray:
    """(components, 2) FLOPs and bytes of a timing's stage, as `side_time` counts them."""
    out = []
    for c in shape.side(t.cut, "device"):
        cost = (shape.prefill_cost(c, prompt_tokens, bits, bits) if t.phase == "prefill"
                else shape.decode_cost(c, context_tokens, bits, bits))
        out.append((cost.flops, cost.bytes))
    return np.array(out, dtype=np.float64)


def fit(shape, hw: HardwareProfile, timings: list[Timing], prompt_tokens: int, context_tokens: int,
        bits: int = 32) -> HardwareProfile:
    """`hw` with the compute/memory efficiency and layer overhead that minimise the squared log error over
    `timings`: an exhaustive grid (25 x 25 x 19 points), evaluated at once with numpy."""
    ce = 0.02 * 1.25 ** np.arange(25)  # 0.02 .. ~4 (peak is nominal; > 1 means the nominal peak was low)
    me = 0.02 * 1.25 ** np.arange(25)
    ov = np.concatenate([[0.0], 5 * 1.4 ** np.arange(18)]) * 1e-6  # 0 .. ~1.5 ms per layer call
    peak, bw = hw.peak_flops(), hw.memory_bandwidth_gbs * 1e9
    loss = np.zeros((ce.size, me.size, ov.size))
    for t in timings:
        fb = _costs(shape, t, prompt_tokens, context_tokens, bits)
        compute = fb[:, 0][None, None, :] / (peak * ce[:, None, None])
        memory = fb[:, 1][None, None, :] / (bw * me[None, :, None])
        roof = np.maximum(compute, memory).sum(-1)  # (ce, me)
        pred = roof[:, :, None] + len(fb) * ov[None, None, :]
        loss += np.log(pred / t.seconds) ** 2
    i, j, k = np.unravel_index(int(np.argmin(loss)), loss.shape)
    return replace(hw, compute_efficiency=float(ce[i]), memory_efficiency=float(me[j]),
                   layer_overhead_us=float(ov[k] * 1e6))
