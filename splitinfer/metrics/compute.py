"""Compute time and memory of each side of a cut, measured on this machine.

Neurosurgeon's approach: profile every layer once (prefill of a prompt, and one decode step against a
KV cache), then the device stage's time at cut k is the sum over embeddings + layers[:k] and the
server's is layers[k:] + norm + head. One profile serves all 31 cuts and every codec.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class LayerProfile:
    """Seconds per component [embeddings, layer 0..L-1, norm+head] for a prefill of `prompt_tokens`
    and for one decode step at `context_tokens` of context; FLOPs per decoded token likewise."""

    prefill_s: list[float]
    decode_s: list[float]
    flops_per_token: list[float]
    prompt_tokens: int
    context_tokens: int

    def device(self, cut: int) -> dict[str, float]:
        return self._side(slice(0, cut + 1))

    def server(self, cut: int) -> dict[str, float]:
        return self._side(slice(cut + 1, None))

    def whole(self) -> dict[str, float]:
        return self._side(slice(None))

    def _side(self, part: slice) -> dict[str, float]:
        return {
            "prefill_s_per_token": sum(self.prefill_s[part]) / self.prompt_tokens,
            "decode_s_per_token": sum(self.decode_s[part]),
            "flops_per_token": sum(self.flops_per_token[part]),
        }


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def component_flops(lm, context_tokens: int) -> list[float]:
    """Approximate FLOPs one decoded token costs in each component (2 per weight + attention)."""
    from splitinfer.models import split_model

    cfg = lm.config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or lm.hidden_size // heads
    stages = split_model(lm, list(range(lm.num_layers + 1)))
    out = []
    for i, st in enumerate(stages):
        if i == 0:  # embedding lookup: no multiply-adds
            out.append(0.0)
            continue
        weights = sum(p.numel() for n, p in st.named_parameters() if p.dim() >= 2 and "embed" not in n)
        attn = 4.0 * context_tokens * heads * head_dim * (st.end_layer - st.start_layer)
        out.append(2.0 * weights + attn)
    return out


@torch.no_grad()
def profile_layers(lm, prompt_tokens: int = 64, context_tokens: int = 128, repeats: int = 3,
                   seed: int = 0) -> LayerProfile:
    """Time every component of `lm` once (median of `repeats`)."""
    from splitinfer.models import split_model

    stages = split_model(lm, list(range(lm.num_layers + 1)))  # embed | layer 0 | ... | layer L-1 | head
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, lm.vocab_size, (1, max(prompt_tokens, context_tokens) + 1), generator=gen)
    prompt, ctx, nxt = ids[:, :prompt_tokens], ids[:, :context_tokens], ids[:, context_tokens:context_tokens + 1]
    pos = torch.tensor([[context_tokens]])
    h = prompt
    for st in stages:  # warm-up: first calls pay for lazy initialisation, not for the layer
        h = st(h)
    prefill, decode = [], []
    h_prompt, h_ctx, h_next = prompt, ctx, nxt
    for st in stages:
        prefill.append(_median_time(lambda st=st, h=h_prompt: st(h), repeats))
        cache = st.new_cache()
        h_ctx_out = st(h_ctx, cache=cache)

        def step(st=st, h=h_next, cache=cache):
            st(h, position_ids=pos, cache=cache)
            if cache is not None:
                cache.crop(context_tokens)

        decode.append(_median_time(step, repeats))
        h_prompt, h_next = st(h_prompt), st(h_next, position_ids=pos, cache=cache)
        h_ctx = h_ctx_out
    return LayerProfile(prefill, decode, component_flops(lm, context_tokens), prompt_tokens, context_tokens)


def memory_metrics(device_stage, server_stage, context_tokens: int) -> dict[str, float]:
    """Bytes each side holds at `context_tokens` of context: stage weights + fp32 KV cache."""
    return {
        "device_param_bytes": device_stage.param_bytes(),
        "device_kv_bytes_per_token": device_stage.kv_bytes_per_token(),
        "device_memory_bytes": device_stage.param_bytes() + device_stage.kv_bytes_per_token() * context_tokens,
        "server_memory_bytes": server_stage.param_bytes() + server_stage.kv_bytes_per_token() * context_tokens,
        "memory_context_tokens": context_tokens,
    }
