"""Leakage metrics: token accuracy, exact match, ROUGE-L, PII recovery, distance correlation."""

from __future__ import annotations

import re
import unicodedata

import torch

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_WORDS = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")


class UnicodeWordTokenizer:
    """Words for alphabetic scripts, one token per character for CJK (rouge-score's default tokenizer
    drops every non-ASCII character, which would score Japanese prompts as empty)."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(unicodedata.normalize("NFKC", text).lower())


def token_accuracy(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Share of positions where the recovered token equals the true one (over `mask` positions)."""
    pred, true = pred.reshape(-1), true.reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"pred has {pred.numel()} tokens but true has {true.numel()}")
    m = torch.ones_like(true, dtype=torch.bool) if mask is None else mask.reshape(-1).bool()
    n = int(m.sum())
    return float(((pred == true) & m).sum()) / n if n else float("nan")


def exact_match(pred: torch.Tensor, true: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """Every counted position recovered."""
    return token_accuracy(pred, true, mask) == 1.0


def rouge_l(pred_text: str, true_text: str) -> float:
    """ROUGE-L F1 with the maintained `rouge-score` implementation (Unicode-aware tokenizer)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=UnicodeWordTokenizer())
    return float(scorer.score(true_text, pred_text)["rougeL"].fmeasure)


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", s)).strip()


def pii_recovered(pred_text: str, pii: list[tuple[str, str]]) -> list[bool]:
    """For each private item, whether it appears whole in the recovered text."""
    text = _norm(pred_text)
    return [_norm(value) in text for _, value in pii]


def distance_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Sample distance correlation (Székely et al. 2007) between rows of x (n, p) and y (n, q).

    1 when one is a similarity transform of the other, near 0 for independent samples; used as the
    attack-free leakage measure between the input embeddings and the payload.
    """
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"need the same number (>= 2) of rows, got {x.shape[0]} and {y.shape[0]}")

    def centred(z):
        d = torch.cdist(z, z)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x), centred(y)
    dcov_xy = (a * b).mean()
    dvar = (a * a).mean() * (b * b).mean()
    if dvar <= 0:
        return 0.0
    return float(torch.sqrt(torch.clamp(dcov_xy, min=0) / torch.sqrt(dvar)))
