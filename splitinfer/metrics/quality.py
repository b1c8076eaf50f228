"""Quality of the split model against the unsplit one on the same tokens.

Δperplexity %, KL(unsplit ‖ split) per token and top-1 agreement from teacher-forced windows; greedy
exact match from generated continuations.
"""

from __future__ import annotations

import math

import torch


class QualityAccumulator:
    """Sums per-token statistics over windows; `result()` turns them into the reported metrics."""

    def __init__(self) -> None:
        self.tokens = 0
        self.nll_ref = 0.0
        self.nll_split = 0.0
        self.kl = 0.0
        self.top1_agree = 0

    @torch.no_grad()
    def add(self, ref_logprobs: torch.Tensor, split_logits: torch.Tensor, targets: torch.Tensor) -> None:
        """ref_logprobs, split_logits: (T, V) for positions predicting `targets` (T,)."""
        split_lp = torch.log_softmax(split_logits.float(), dim=-1)
        idx = targets[:, None]
        self.nll_ref -= float(ref_logprobs.gather(-1, idx).sum())
        self.nll_split -= float(split_lp.gather(-1, idx).sum())
        # KL(p_ref || p_split) = sum p_ref (log p_ref - log p_split); clamp tiny negatives from rounding.
        kl = (ref_logprobs.exp() * (ref_logprobs - split_lp)).sum(-1).clamp_min(0.0)
        self.kl += float(kl.sum())
        self.top1_agree += int((ref_logprobs.argmax(-1) == split_lp.argmax(-1)).sum())
        self.tokens += int(targets.numel())

    def result(self) -> dict[str, float]:
        if not self.tokens:
            return {}
        ppl_ref = math.exp(self.nll_ref / self.tokens)
        ppl_split = math.exp(self.nll_split / self.tokens)
        return {
            "ppl_unsplit": ppl_ref,
            "ppl_split": ppl_split,
            "delta_ppl_pct": 100.0 * (ppl_split / ppl_ref - 1.0),
            "kl_mean": self.kl / self.tokens,
            "top1_agreement": self.top1_agree / self.tokens,
            "eval_tokens": self.tokens,
        }


def first_mismatch(pred: list[int] | torch.Tensor, ref: list[int] | torch.Tensor) -> int:
    """Index of the first differing token, or len(ref) when `pred` reproduces `ref` exactly."""
    pred, ref = list(map(int, pred)), list(map(int, ref))
    for i, r in enumerate(ref):
        if i >= len(pred) or pred[i] != r:
            return i
    return len(ref)


def generation_metrics(matched_prefix: list[int], gen_tokens: int) -> dict[str, float]:
    """Greedy exact-match rate (whole continuation identical) and mean matched fraction."""
    if not matched_prefix:
        return {}
    n = len(matched_prefix)
    return {
        "exact_match_rate": sum(m == gen_tokens for m in matched_prefix) / n,
        "gen_prefix_match": sum(matched_prefix) / (n * gen_tokens),
        "gen_prompts": n,
    }
