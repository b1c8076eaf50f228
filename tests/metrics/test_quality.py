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
