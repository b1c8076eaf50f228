"""The two trained payload adapters: `nopeek` (distance-correlation penalty) and `secret_adapter` (a
device-only adapter drawn from a secret)."""

from __future__ import annotations

import math

import torch

from splitinfer.privacy.trained.base import number, token_rms
from splitinfer.privacy.trained.training import TrainedAdapter, dcor_loss


class NoPeek(TrainedAdapter):
    """NoPeek: KL to the unsplit model + `lam` x dCor(input embeddings, payload), row 0 left out."""

    name = "nopeek"

    def __init__(self, lam: float = 1.0, **recipe) -> None:
        self.lam = number("lam", lam, what=" (weight of the distance-correlation penalty)")
        super().__init__(**recipe)

    @property
    def strength(self) -> float:
        return self.lam

    def _params(self):
        return {"lam": self.lam}

    def _aux_loss(self, h, out, emb):
        if self.lam == 0:
            return out.sum() * 0
        return self.lam * torch.stack([dcor_loss(e[1:], o[1:] / token_rms(o[1:])) for e, o in zip(emb, out, strict=True)]).mean()


class SecretAdapter(TrainedAdapter):
    """A fixed secret projection (A, never trained) and a trained output map (B, drawn from the secret),
    keeping a deviation of about `gamma` x |payload| while matching the unsplit model's output (KL)."""

    name = "secret_adapter"
    train_a = False

    def __init__(self, gamma: float = 0.5, weight: float = 10.0, **recipe) -> None:
        self.gamma = number("gamma", gamma, what=" (deviation from the public payload, x its norm)")
        self.weight = number("weight", weight, what=" (penalty keeping the deviation at gamma)")
        super().__init__(**recipe)

    @property
    def strength(self) -> float:
        return self.gamma

    def _params(self):
        return {"gamma": self.gamma, "weight": self.weight}

    def _b_scale(self) -> float:
        return 1.0 / math.sqrt(self.rank)

    @torch.no_grad()
    def _calibrate(self, h: torch.Tensor) -> None:
        rel = float((self.adapter.delta(h).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-6))[:, 1:].mean())
        self.adapter.b.mul_(self.gamma / max(rel, 1e-12))

    def _aux_loss(self, h, out, emb):
        rel = ((out - h).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-6))[:, 1:].mean()
        return self.weight * (rel - self.gamma).pow(2)
