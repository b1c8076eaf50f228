"""The payload adapter and its training loop through the frozen server half (the base of `nopeek` and
`secret_adapter`); the public training states are kept in the `privacy.training_data` memo."""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from torch import nn

from splitinfer import cache
from splitinfer.errors import ConfigError
from splitinfer.privacy.defenses import Defense
from splitinfer.privacy.progress import say
from splitinfer.privacy.trained.base import Bindable, FrozenParams, cache_file, load_cached, number, token_rms
from splitinfer.privacy.trained.public_data import public_sequences

log = logging.getLogger(__name__)
_TRAIN_MEMO = cache.memo("privacy.training_data")  # (fingerprint, cut, n, seq_len) -> states; one at a time


class LowRankAdapter(nn.Module):
    """h -> h + rms(h) * B gelu(A h/rms(h)): a device-side residual adapter on the payload (rank r)."""

    def __init__(self, hidden: int, rank: int, generator: torch.Generator, b_scale: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, hidden, generator=generator) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.randn(hidden, rank, generator=generator) * b_scale)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        rms = token_rms(h)
        return rms * (nn.functional.gelu((h / rms) @ self.a.T) @ self.b.T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.delta(h).to(h)


class TrainedAdapter(Bindable):
    """Base of `nopeek` and `secret_adapter`: a payload adapter trained through the frozen server half.

    Recipe (also the Hydra config keys): `rank`, `steps` (optimizer steps), `train_budget_s` (CPU
    wall-clock cap; what it reached is cached, `train_info["steps_done"]` says how far), `batch_seqs` x
    `seq_len` public tokens per step from `train_seqs` public windows, `lr`."""

    acts_on = "payload"
    train_a = True

    def __init__(self, rank: int = 32, steps: int = 40, train_budget_s: float = 120.0, train_seqs: int = 32,
                 seq_len: int = 48, batch_seqs: int = 2, lr: float = 3e-3, seed: int = 0) -> None:
        for key, value, low in (("rank", rank, 1), ("steps", steps, 1), ("train_seqs", train_seqs, 1),
                                ("seq_len", seq_len, 4), ("batch_seqs", batch_seqs, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{key}={value!r}: must be an integer >= {low}")
        self.rank, self.steps, self.train_seqs, self.seq_len, self.batch_seqs = rank, steps, train_seqs, seq_len, batch_seqs
        self.train_budget_s = number("train_budget_s", train_budget_s, strict=True, what=" (CPU seconds)")
        self.lr = number("lr", lr, strict=True)
        self.adapter = None
        self.train_info: dict = {}
        super().__init__(seed)

    def recipe(self) -> dict:
        return {"name": self.name, "rank": self.rank, "steps": self.steps, "train_seqs": self.train_seqs,
                "seq_len": self.seq_len, "batch_seqs": self.batch_seqs, "lr": self.lr, **self._params()}

    def _params(self) -> dict:
        return {}

    def describe(self):
        return {**super().describe(), **self.recipe(), "seed": self.seed}

    def with_seed(self, seed: int) -> Defense:
        """A copy with secret `seed`: its own adapter, trained (or loaded) now when this one is bound."""
        other = copy.copy(self)
        other.seed = int(seed)
        other.adapter, other._lm, other._cut = None, None, None
        other.reset()
        return other.bind(self._lm, self._cut) if self.bound else other

    def with_noise_seed(self, seed: int) -> Defense:
        return self  # deterministic: no noise, and the secret stays

    def _setup(self) -> None:
        path = cache_file("adapter", {"m": self._lm.fingerprint, "cut": self._cut, "seed": self.seed, **self.recipe()})
        g = torch.Generator().manual_seed(self.seed * 7919 + 13)
        self.adapter = LowRankAdapter(self._lm.hidden_size, self.rank, g, self._b_scale())
        if path.exists():
            saved = load_cached(path, "adapter")
            self.adapter.load_state_dict(saved["state"])
            self.train_info = {**saved["info"], "cached": True}
        else:
            self.train_info = {**self._train(g), "cached": False}
            # cached even when the CPU budget stopped it early (`steps_done` says how far it got), so every
            # later use of this secret (utility, attacks, the wire) is the same adapter
            torch.save({"state": self.adapter.state_dict(), "info": self.train_info}, path)
        self.adapter.requires_grad_(False)

    def _b_scale(self) -> float:
        return 0.0

    def _calibrate(self, h: torch.Tensor) -> None:
        """Called once with the public training states before the first step (secret_adapter: start at
        the target deviation)."""

    def _train(self, g: torch.Generator) -> dict:
        from splitinfer.models import split_model

        lm, cut = self._lm, self._cut
        t0 = time.perf_counter()
        dev, srv = split_model(lm, [cut])
        data = _training_data(lm, cut, self.train_seqs, self.seq_len, dev, srv)
        self._calibrate(data["h"])
        params = [self.adapter.b] + ([self.adapter.a] if self.train_a else [])
        opt = torch.optim.Adam(params, lr=self.lr)
        steps, kl, aux = 0, float("nan"), float("nan")
        with FrozenParams(lm.model), torch.enable_grad():
            while steps < self.steps and time.perf_counter() - t0 < self.train_budget_s:
                pick = torch.randint(0, len(data["h"]), (self.batch_seqs,), generator=g)
                h, ref, emb = data["h"][pick], data["ref"][pick].float(), data["emb"][pick]
                out = self.adapter(h)
                logp = torch.log_softmax(srv(out).float(), -1)
                kl_t = (ref.exp() * (ref - logp)).sum(-1).mean()
                aux_t = self._aux_loss(h, out, emb)
                loss = kl_t + aux_t
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                kl, aux = float(kl_t.detach()), float(aux_t.detach())
        info = {"steps_done": steps, "train_s": time.perf_counter() - t0, "final_kl": kl, "final_aux": aux}
        with torch.no_grad():
            h = data["h"][: min(8, len(data["h"]))]
            info["rel_deviation"] = float((self.adapter.delta(h).norm(dim=-1) / h.norm(dim=-1))[:, 1:].mean())
        say(log, "%s cut %d seed %d: %d steps in %.1f s (KL %.4f, aux %.4f, deviation %.2f x |h|)", self.name, cut,
            self.seed, steps, info["train_s"], kl, aux, info["rel_deviation"])
        return info

    def _aux_loss(self, h, out, emb) -> torch.Tensor:
        raise NotImplementedError

    def perturb(self, hidden, generator):
        self._need_bound()
        with torch.no_grad():
            return self.adapter(hidden.float()).to(hidden)

    def deterministic(self, hidden: torch.Tensor) -> torch.Tensor:
        """The defense's payload map (no noise): what a white-box attacker applies to its own candidates
        when it runs its own copy of the defense (surrogate). Differentiable in `hidden`."""
        self._need_bound()
        return self.adapter(hidden.float()).to(hidden)


@torch.no_grad()
def _training_data(lm, cut, n, seq_len, dev, srv) -> dict[str, torch.Tensor]:
    memo = (lm.fingerprint, cut, n, seq_len)
    if memo not in _TRAIN_MEMO:
        ids = torch.cat(public_sequences(lm, n, seq_len, split="train"))
        h = torch.cat([dev(ids[i: i + 8]).float() for i in range(0, len(ids), 8)])
        # fp16 keeps the V-wide reference (32 x 48 x 49k for SmolLM2) at ~150 MB
        ref = torch.cat([torch.log_softmax(srv(h[i: i + 8]).float(), -1).half() for i in range(0, len(ids), 8)])
        emb = lm.model.get_input_embeddings()(ids).float()
        _TRAIN_MEMO.clear()  # one (model, cut) at a time: reference log-probs are V-wide
        _TRAIN_MEMO[memo] = {"h": h, "ref": ref, "emb": emb}
    return _TRAIN_MEMO[memo]


def dcor_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Differentiable sample distance correlation between rows of x (n, p) and y (n, q)."""
    def centred(z):
        d = torch.cdist(z, z)
        return d - d.mean(0, keepdim=True) - d.mean(1, keepdim=True) + d.mean()

    a, b = centred(x.float()), centred(y.float())
    dvar = (a * a).mean() * (b * b).mean()
    return ((a * b).mean().clamp_min(0) / dvar.sqrt().clamp_min(1e-12)).sqrt()
