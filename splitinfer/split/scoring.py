"""Scoring given tokens through the split path (teacher forcing): what an evaluation harness asks of a model.

A loglikelihood request is "how likely is this continuation after this context?": the server half's logits
at the positions before each continuation token, log-softmaxed, read at that token, plus whether every
token was the argmax (lm-evaluation-harness's `is_greedy`). `target_logprobs` is that computation, in one
place: the in-process evaluator (`splitinfer.eval`) and the network server's scoring steps both call it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def target_logprobs(logits: torch.Tensor, targets: Sequence[int] | torch.Tensor) -> tuple[list[float], list[bool]]:
    """Log-probabilities of `targets` (k,) under `logits` (k, V) — row i predicts targets[i] — computed in
    float32 as lm-eval's `hf` model does, and whether each target is the row's argmax."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (k, V), got shape {tuple(logits.shape)}")
    t = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() != logits.shape[0]:
        raise ValueError(f"{t.numel()} targets for {logits.shape[0]} rows of logits")
    lp = torch.log_softmax(logits.float(), dim=-1)
    picked = lp.gather(-1, t[:, None])[:, 0]
    greedy = lp.argmax(-1) == t
    return [float(x) for x in picked.cpu()], [bool(g) for g in greedy.cpu()]
