"""Known-answer tests for the leakage metrics."""

import pytest
import torch

from splitinfer.privacy.metrics import (
    UnicodeWordTokenizer,
    distance_correlation,
    exact_match,
    pii_recovered,
    rouge_l,
    token_accuracy,
)


def test_token_accuracy_and_mask():
    true = torch.tensor([1, 2, 3, 4])
    pred = torch.tensor([1, 9, 3, 9])
    assert token_accuracy(pred, true) == 0.5
    assert token_accuracy(pred, true, torch.tensor([True, False, True, False])) == 1.0
    assert exact_match(pred, true, torch.tensor([True, False, True, False]))
    assert not exact_match(pred, true)
    with pytest.raises(ValueError, match="tokens"):
        token_accuracy(pred[:3], true)


def test_rouge_l_known_answers():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("dog", "the cat sat") == 0.0
    # LCS "the sat" = 2 of 3 on both sides -> F1 2/3
    assert rouge_l("the dog sat", "the cat sat") == pytest.approx(2 / 3)
    # Japanese is scored per character instead of dropped
    assert UnicodeWordTokenizer().tokenize("血液検査 OK") == ["血", "液", "検", "査", "ok"]
    assert rouge_l("血液検査", "血液検査の結果") == pytest.approx(2 * 4 / (4 + 7))


def test_pii_recovered_whole_items_only():
    pii = [("name", "Jane Doe"), ("phone", "555-0100"), ("medical", "貧血")]
    assert pii_recovered("Hi, I'm Jane  Doe, call 555-0101. 貧血です", pii) == [True, False, True]


def test_distance_correlation_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    assert distance_correlation(x, x) == pytest.approx(1.0, abs=1e-9)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g))
    assert distance_correlation(x, 3 * x @ q + 5) == pytest.approx(1.0, abs=1e-6)  # similarity transform
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    independent, noisy, nonlinear = (distance_correlation(a, b), distance_correlation(a, a + 0.5 * b),
                                     distance_correlation(a, a**2))
    assert independent < 0.25 < nonlinear < noisy < 1.0  # dCor also sees non-linear dependence
    y = torch.randn(64, 8, generator=g)
    assert distance_correlation(x, torch.zeros(64, 3)) == 0.0
    with pytest.raises(ValueError, match="rows"):
        distance_correlation(x, y[:10])
