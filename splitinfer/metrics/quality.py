"""Quality of the split model against the unsplit one on the same tokens, with 95 % intervals.

Δperplexity %, KL(unsplit ‖ split) per token and top-1 agreement come from teacher-forced windows; the
interval is a paired bootstrap over blocks of `BLOCK_TOKENS` consecutive tokens (paired: the split and
the unsplit model are scored on the same tokens, so what varies is the codec's effect, not the text's
difficulty; blocks keep neighbouring tokens' correlation inside one resampling unit). Greedy exact
match comes from generated continuations, with a Wilson score interval over prompts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

BLOCK_TOKENS = 32
BOOTSTRAP_SAMPLES = 2000
CI_LEVEL = 0.95


def _interval(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.quantile(values, [(1 - CI_LEVEL) / 2, 1 - (1 - CI_LEVEL) / 2])
    return float(lo), float(hi)


class QualityAccumulator:
    """Per-block sums of the statistics over windows; `result()` gives the metrics and their intervals."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.blocks: list[tuple[int, float, float, float, int]] = []  # tokens, nll_ref, nll_split, kl, top1

    @property
    def tokens(self) -> int:
        return sum(b[0] for b in self.blocks)

    @torch.no_grad()
    def add(self, ref_logprobs: torch.Tensor, split_logits: torch.Tensor, targets: torch.Tensor) -> None:
        """ref_logprobs, split_logits: (T, V) for positions predicting `targets` (T,)."""
        split_lp = torch.log_softmax(split_logits.float(), dim=-1)
        idx = targets[:, None]
        nll_ref = -ref_logprobs.gather(-1, idx)[:, 0].double()
        nll_split = -split_lp.gather(-1, idx)[:, 0].double()
        # KL(p_ref || p_split) = sum p_ref (log p_ref - log p_split); clamp tiny negatives from rounding.
        kl = (ref_logprobs.exp() * (ref_logprobs - split_lp)).sum(-1).clamp_min(0.0).double()
        agree = ref_logprobs.argmax(-1) == split_lp.argmax(-1)
        for s in range(0, int(targets.numel()), BLOCK_TOKENS):
            e = s + BLOCK_TOKENS
            self.blocks.append((int(targets[s:e].numel()), float(nll_ref[s:e].sum()), float(nll_split[s:e].sum()),
                                float(kl[s:e].sum()), int(agree[s:e].sum())))

    def result(self) -> dict[str, float]:
        if not self.blocks:
            return {}
        b = np.array(self.blocks, dtype=np.float64)  # (n_blocks, 5)
        tot = b.sum(0)
        n = tot[0]
        out = {
            "ppl_unsplit": math.exp(tot[1] / n),
            "ppl_split": math.exp(tot[2] / n),
            "delta_ppl_pct": 100.0 * math.expm1((tot[2] - tot[1]) / n),
            "kl_mean": tot[3] / n,
            "top1_agreement": tot[4] / n,
            "eval_tokens": int(n),
            "eval_blocks": len(self.blocks),
        }
        rng = np.random.default_rng(self.seed)
        pick = rng.integers(0, len(b), size=(BOOTSTRAP_SAMPLES, len(b)))
        s = b[pick].sum(1)  # (samples, 5)
        stats = {"delta_ppl_pct": 100.0 * np.expm1((s[:, 2] - s[:, 1]) / s[:, 0]),
                 "kl_mean": s[:, 3] / s[:, 0], "top1_agreement": s[:, 4] / s[:, 0]}
        for name, values in stats.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _interval(values)
        return out


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion (sensible at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def first_mismatch(pred: list[int] | torch.Tensor, ref: list[int] | torch.Tensor) -> int:
    """Index of the first differing token, or len(ref) when `pred` reproduces `ref` exactly."""
    pred, ref = list(map(int, pred)), list(map(int, ref))
    for i, r in enumerate(ref):
        if i >= len(pred) or pred[i] != r:
            return i
    return len(ref)


def generation_metrics(matched_prefix: list[int], gen_tokens: int) -> dict[str, float]:
    """Greedy exact-match rate (whole continuation identical, with its Wilson 95 % interval) and the
    mean matched fraction."""
    if not matched_prefix:
        return {}
    n = len(matched_prefix)
    exact = sum(m == gen_tokens for m in matched_prefix)
    lo, hi = wilson_interval(exact, n)
    return {
        "exact_match_rate": exact / n,
        "exact_match_rate_ci_low": lo,
        "exact_match_rate_ci_high": hi,
        "gen_prefix_match": sum(matched_prefix) / (n * gen_tokens),
        "gen_prompts": n,
    }
