"""No-training baselines: nearest token embedding and the logit lens."""

from __future__ import annotations

import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion, embedding_matrix


class NoAttack(Attack):
    """Reports only the attack-free figures (distance correlation, utility); inverts nothing."""

    name = "none"

    def invert(self, payload, deadline=None):
        return Inversion(ids=torch.full((payload.shape[1],), -1, dtype=torch.long))


class NearestEmbedding(Attack):
    """Each payload row is read as the token whose input embedding is closest in cosine similarity."""

    name = "nearest_embedding"

    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        e = embedding_matrix(ctx.lm)
        self._unit = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def invert(self, payload, deadline=None):
        t0 = time.perf_counter()
        h = payload[0].float()
        h = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        ids = (h @ self._unit.T).argmax(-1)
        return Inversion(ids=ids, seconds=time.perf_counter() - t0)


def final_norm_and_head(lm):
    """(final norm, LM head) modules of a causal LM, found by the model family's adapter."""
    from splitinfer.models.adapters import final_norm_and_head as parts

    return parts(lm)


class LogitLens(Attack):
    """Apply the final norm and LM head to the payload (nostalgebraist 2020) and read the argmax.

    `shift=0` reads row i as token i (what shallow layers still hold); `shift=1` reads row i as the
    model's guess for token i+1 (what deep layers hold), with row 0 read as token 0.
    """

    name = "logit_lens"

    def __init__(self, shift: int = 0) -> None:
        if shift not in (0, 1):
            raise ConfigError(f"shift={shift!r}: must be 0 (current token) or 1 (next token)")
        self.shift = shift

    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        self._norm, self._head = final_norm_and_head(ctx.lm)

    @torch.no_grad()
    def invert(self, payload, deadline=None):
        t0 = time.perf_counter()
        ids = self._head(self._norm(payload.float()))[0].argmax(-1)
        if self.shift:
            ids = torch.cat([ids[:1], ids[:-1]])
        return Inversion(ids=ids, seconds=time.perf_counter() - t0)

    def describe(self):
        return {"name": self.name, "shift": self.shift}
