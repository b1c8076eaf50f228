"""Attacks that know the defense (Kerckhoffs): the adaptive white-box and the hybrid.

- `adaptive_whitebox`: the white-box search (`whitebox.py`) with the public device weights, run through
  the attacker's own copy of the defense's deterministic part (`surrogate`: a trained adapter the
  attacker trained with the same public recipe and its own secret) and with distances weighted by the
  server half's diagonal Fisher information (`metric: fisher`; `auto`, the default, uses it against
  fisher_noise, secret_adapter and nopeek and L2, the maximum-likelihood distance, against isotropic noise). A defense that keeps the server's
  output must keep the payload where the server is sensitive; this metric reads the payload there and
  discounts the directions where Fisher-shaped noise or a secret adapter put their perturbation (for
  Fisher-shaped Gaussian noise it is the maximum-likelihood distance).
- `hybrid` (BiSR-style): a learned inverter, trained on payloads produced through the same defense kind
  with the attacker's own secret/seed, proposes each position's top candidates; the adaptive white-box
  search verifies and refines them through the public device stage, with the LM prior on the recovered
  prefix, the probe and the gradient ranking as further candidate lists.
"""

from __future__ import annotations

import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.privacy.attacks.base import AttackContext, Inversion
from splitinfer.privacy.attacks.inverter import LearnedInverter
from splitinfer.privacy.attacks.whitebox import WhiteBoxInversion


class AdaptiveWhiteBox(WhiteBoxInversion):
    """White-box search through the attacker's own defense copy, Fisher-weighted distances."""

    name = "adaptive_whitebox"

    def __init__(self, surrogate: bool = True, metric: str = "auto", **params) -> None:
        super().__init__(surrogate=surrogate, metric=metric, **params)


class HybridInversion(AdaptiveWhiteBox):
    """Inverter top-k candidates, verified and refined through the public device stage."""

    name = "hybrid"

    def __init__(self, inverter: dict | None = None, top_k: int = 32, surrogate: bool = True, metric: str = "auto",
                 **params) -> None:
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k={top_k!r}: must be an integer >= 1 (inverter candidates per position)")
        inverter = dict(inverter or {})
        inverter.pop("name", None)
        self.inverter = LearnedInverter(**inverter)
        self.top_k = top_k
        super().__init__(surrogate=surrogate, metric=metric, **params)

    def describe(self):
        return {**super().describe(), "top_k": self.top_k, "inverter": self.inverter.describe()}

    def prepare(self, ctx: AttackContext) -> None:
        t0 = time.perf_counter()
        self.inverter.prepare(ctx)
        self.train_tokens, self.train_steps = self.inverter.train_tokens, self.inverter.train_steps
        super().prepare(ctx)
        self.prepare_seconds = time.perf_counter() - t0

    def invert(self, payload: torch.Tensor, deadline: float | None = None) -> Inversion:
        with torch.no_grad():
            scores = self.inverter.net(payload.float())[0] @ self.inverter.emb.T
        self._inverter_top = torch.topk(scores, min(self.top_k, scores.shape[-1]), dim=-1).indices
        return super().invert(payload, deadline)

    def _extra_orders(self, i: int) -> list[torch.Tensor]:
        return [self._inverter_top[i]]
