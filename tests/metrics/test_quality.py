"""Quality metrics: identical logits give zero loss; a known perturbation gives the expected numbers."""

from __future__ import annotations

import math

import pytest
import torch

from splitinfer.metrics.quality import QualityAccumulator, first_mismatch, generation_metrics


def test_identical_logits_are_perfect():
    logits = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 32, (10,))
    acc = QualityAccumulator()
    acc.add(torch.log_softmax(logits, -1), logits, targets)
    r = acc.result()
    assert r["delta_ppl_pct"] == pytest.approx(0.0, abs=1e-9)
    assert r["kl_mean"] == pytest.approx(0.0, abs=1e-7)
    assert r["top1_agreement"] == 1.0 and r["eval_tokens"] == 10


def test_known_perturbation():
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    split = torch.log(torch.tensor([[0.25, 0.75]]))
    acc = QualityAccumulator()
    acc.add(ref, split, torch.tensor([0]))
    r = acc.result()
    assert r["ppl_unsplit"] == pytest.approx(2.0) and r["ppl_split"] == pytest.approx(4.0)
    assert r["delta_ppl_pct"] == pytest.approx(100.0)
    assert r["kl_mean"] == pytest.approx(0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75))
    assert r["top1_agreement"] == 0.0  # argmax 0 (tie -> first) vs 1


def test_generation_match():
    assert first_mismatch([1, 2, 3], [1, 2, 3]) == 3
    assert first_mismatch([1, 9, 3], [1, 2, 3]) == 1
    assert first_mismatch([], [1]) == 0
    g = generation_metrics([4, 2], gen_tokens=4)
    assert g["exact_match_rate"] == 0.5 and g["gen_prefix_match"] == 0.75


@torch.no_grad()
def test_split_quality_of_a_copy_is_exact_and_of_a_changed_model_is_not():
    from splitinfer.metrics.quality import split_quality
    from splitinfer.models import tiny_model

    tiny_llama = tiny_model("llama")

    g = torch.Generator().manual_seed(0)
    windows = [torch.randint(3, tiny_llama.vocab_size, (1, 40), generator=g) for _ in range(3)]
    prompts = [torch.randint(3, tiny_llama.vocab_size, (1, 6), generator=g) for _ in range(2)]

    def unsplit(ids):
        return tiny_llama.model(ids).logits

    def greedy(ids, n):  # the unsplit model's own greedy continuation
        out = []
        for _ in range(n):
            out.append(int(unsplit(ids)[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[out[-1]]])], 1)
        return out

    wants = [greedy(p, 4) for p in prompts]
    same = split_quality(unsplit, unsplit, windows, prompts=prompts, continuations=wants, gen_tokens=4)
    assert same["delta_ppl_pct"] == pytest.approx(0.0, abs=1e-9)
    assert same["delta_ppl_pct_ci_low"] == pytest.approx(0.0, abs=1e-9) == same["delta_ppl_pct_ci_high"]
    assert same["top1_agreement"] == 1.0 and same["exact_match_rate"] == 1.0 and same["eval_tokens"] == 3 * 39
    assert same["exact_match_rate_ci_low"] < 1.0  # 2 prompts: the Wilson interval stays wide

    def noisy(ids):
        return unsplit(ids) + 3.0 * torch.randn(1, ids.shape[1], tiny_llama.vocab_size, generator=g)

    hurt = split_quality(unsplit, noisy, windows, prompts=prompts, continuations=wants, gen_tokens=4)
    assert hurt["kl_mean"] > 0.1 and hurt["top1_agreement"] < 1.0
    for k in ("delta_ppl_pct", "kl_mean", "top1_agreement"):
        assert hurt[f"{k}_ci_low"] <= hurt[k] <= hurt[f"{k}_ci_high"], k
    # a continuation that stopped early (an end-of-sequence token) is not comparable: left out
    short = split_quality(unsplit, unsplit, windows[:1], prompts=prompts, continuations=[wants[0], wants[1][:2]],
                          gen_tokens=4)
    assert short["gen_prompts"] == 1
