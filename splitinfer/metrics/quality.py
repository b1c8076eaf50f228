"""Quality of the split model against the unsplit one on the same tokens, with 95 % intervals.

Δperplexity %, KL(unsplit ‖ split) per token and top-1 agreement come from teacher-forced windows; the
interval is a paired bootstrap over blocks of `BLOCK_TOKENS` consecutive tokens (paired: the split and
the unsplit model are scored on the same tokens, so what varies is the codec's effect, not the text's
difficulty; blocks keep neighbouring tokens' correlation inside one resampling unit). Greedy exact
match comes from generated continuations, with a Wilson score interval over prompts. `split_quality`
is the one evaluator of a split path the privacy utilities use; a sweep job (`experiment.evaluate_split`)
feeds the same accumulator from its cached reference. The intervals themselves: `splitinfer.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from splitinfer.stats import interval, resample_indices, wilson_interval

BLOCK_TOKENS = 32


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
        s = b[resample_indices(len(b), self.seed)].sum(1)  # (samples, 5)
        stats = {"delta_ppl_pct": 100.0 * np.expm1((s[:, 2] - s[:, 1]) / s[:, 0]),
                 "kl_mean": s[:, 3] / s[:, 0], "top1_agreement": s[:, 4] / s[:, 0]}
        for name, values in stats.items():
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = interval(values)
        return out


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


Logits = Callable[[torch.Tensor], torch.Tensor]  # token ids (1, T) -> logits (1, T, V)


@torch.no_grad()
def split_quality(unsplit: Logits, split: Logits, windows: Iterable[torch.Tensor], *, seed: int = 0,
                  prompts: Sequence[torch.Tensor] = (), continuations: Sequence[Sequence[int]] = (),
                  gen_tokens: int = 0) -> dict[str, float]:
    """The quality figures of a split path against the unsplit model, each with its 95 % interval.

    Teacher-forced on `windows` (token ids (1, T)): Δperplexity %, KL and top-1 agreement with their paired
    block-bootstrap intervals (`QualityAccumulator`). For each prompt (1, P) with the unsplit model's greedy
    continuation: whether the split, replayed teacher-forced along it, picks every one of its first
    `gen_tokens` tokens (exact-match rate with its Wilson interval; a continuation that stopped early at an
    end-of-sequence token is not comparable and is left out). Keys as `QualityAccumulator.result` and
    `generation_metrics`."""
    acc = QualityAccumulator(seed=seed)
    for ids in windows:
        if ids.shape[1] < 2:
            continue
        ref = torch.log_softmax(unsplit(ids).float()[0, :-1], -1)
        acc.add(ref, split(ids).float()[0, :-1], ids[0, 1:])
    out = acc.result()
    matched = []
    for prompt, want in zip(prompts, continuations, strict=True):
        if len(want) < gen_tokens:
            continue
        want = torch.as_tensor(list(want[:gen_tokens]), dtype=torch.long)
        pred = split(torch.cat([prompt, want[None, :-1]], 1))[0, prompt.shape[1] - 1:].argmax(-1)
        matched.append(first_mismatch(pred, want))
    out.update(generation_metrics(matched, gen_tokens))
    return out
