"""Learned inverter: a small network per cut that maps payload rows back to tokens.

The black-box-with-auxiliary-data attacker (He et al. 2019's inverse network; the SIP attack of BiSR,
Chen et al. 2024): it queries the device side on public text (through the same defense kind and codec,
with its own noise), and trains `payload rows -> token ids`. Architectures: `linear` (per position),
`gru` (one or two bidirectional GRU layers) or `transformer` (one or two encoder layers). The output
layer scores every vocabulary entry by the dot product of a predicted vector with the public token
embeddings (a learned map into embedding space), trained with a sampled softmax so CPU training stays
cheap. Collection and training stop at `train_budget_s` (and `max_train_tokens`).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from splitinfer import cache
from splitinfer.errors import ConfigError
from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion, embedding_matrix
from splitinfer.privacy.progress import bar, say

log = logging.getLogger(__name__)

ARCHS = ("linear", "gru", "transformer")
_TRAINED = cache.memo("privacy.inverter")  # the last trained inverter, by set-up (see AttackContext.setup_key)


class InverterNet(nn.Module):
    """RMS-normalised payload -> (optional sequence mixer) -> vector in token-embedding space."""

    def __init__(self, hidden_size: int, embed_size: int, arch: str = "gru", width: int = 256, layers: int = 1):
        super().__init__()
        self.arch = arch
        self.inp = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU())
        if arch == "gru":
            self.mixer = nn.GRU(width, width // 2, num_layers=layers, batch_first=True, bidirectional=True)
        elif arch == "transformer":
            layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=2 * width, batch_first=True,
                                               dropout=0.0)
            self.mixer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        else:
            self.mixer = None
        self.out = nn.Linear(width, embed_size)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h / h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)  # depth-independent scale
        x = self.inp(h)
        if self.arch == "gru":
            x = x + self.mixer(x)[0]
        elif self.arch == "transformer":
            x = self.mixer(x)
        return self.out(x)


class LearnedInverter(Attack):
    """Train an inverse network on the attacker's own queries (public text), then read payloads."""

    name = "learned_inverter"
    needs_training = True

    def __init__(self, arch: str = "gru", width: int = 256, layers: int = 1, train_budget_s: float = 60.0,
                 max_train_tokens: int = 16384, seq_len: int = 64, lr: float = 3e-3, batch_seqs: int = 16,
                 negatives: int = 4096, max_steps: int | None = None) -> None:
        if arch not in ARCHS:
            raise ConfigError(f"arch={arch!r}: choose one of {ARCHS}")
        if layers not in (1, 2):
            raise ConfigError(f"layers={layers!r}: the inverter is one or two layers deep")
        if not train_budget_s > 0:
            raise ConfigError(f"train_budget_s={train_budget_s!r}: must be > 0 seconds")
        self.arch, self.width, self.layers = arch, int(width), int(layers)
        self.train_budget_s = float(train_budget_s)
        self.max_train_tokens = int(max_train_tokens)
        self.seq_len, self.lr, self.batch_seqs, self.negatives = int(seq_len), float(lr), int(batch_seqs), int(negatives)
        if max_steps is not None and max_steps < 1:
            raise ConfigError(f"max_steps={max_steps!r}: must be >= 1 or None (train until the time budget)")
        # A step count makes runs comparable across machines and loads; the time budget still caps it.
        self.max_steps = max_steps

    def describe(self):
        return {"name": self.name, "arch": self.arch, "width": self.width, "layers": self.layers,
                "train_budget_s": self.train_budget_s, "max_train_tokens": self.max_train_tokens,
                "max_steps": self.max_steps}

    def prepare(self, ctx: AttackContext) -> None:
        super().prepare(ctx)
        key = None if ctx.setup_key is None else (ctx.setup_key, repr(self.describe()), self.seq_len, self.lr,
                                                 self.batch_seqs, self.negatives)
        if key is not None and key in _TRAINED:  # the same inverter on the same payloads (e.g. hybrid after
            self.net, self.emb, info = _TRAINED[key]  # learned_inverter in one experiment): reuse it
            for name, value in info.items():
                setattr(self, name, value)
            self.prepare_seconds = 0.0
            return
        self._train(ctx)
        if key is not None:
            _TRAINED.clear()  # one at a time: the latest set-up
            _TRAINED[key] = (self.net, self.emb, {n: getattr(self, n) for n in
                                                  ("train_tokens", "train_steps", "collect_seconds")})

    def _train(self, ctx: AttackContext) -> None:
        t0 = time.perf_counter()
        stop = t0 + self.train_budget_s
        if ctx.deadline is not None:
            stop = min(stop, ctx.deadline)
        gen = torch.Generator().manual_seed(ctx.seed + 7)
        torch.manual_seed(ctx.seed + 7)
        emb = embedding_matrix(ctx.lm)
        self.emb = emb
        # 1. collect (payload, ids) pairs: at most 40 % of the budget, the rest trains.
        collect_stop = t0 + 0.4 * (stop - t0)
        say(log, "learned_inverter cut %d: collecting activations, then training a %s inverter (budget %.0f s%s)",
            ctx.cut, self.arch, stop - t0, f", at most {self.max_steps} steps" if self.max_steps else "")
        xs, ys, n = [], [], 0
        with torch.no_grad(), bar(total=self.max_train_tokens, desc="inverter: collect", unit="tok",
                                  leave=False) as progress:
            for ids in ctx.aux_ids:
                if n >= self.max_train_tokens or time.perf_counter() > collect_stop:
                    break
                ids = ids[:, : self.seq_len]
                if ids.shape[1] < 2:
                    continue
                xs.append(ctx.observe(ids)[0].float())
                ys.append(ids[0])
                n += ids.shape[1]
                progress.update(ids.shape[1])
        self.train_tokens = n
        self.collect_seconds = time.perf_counter() - t0
        self.net = InverterNet(ctx.lm.hidden_size, emb.shape[1], self.arch, self.width, self.layers)
        if not xs:
            self.train_steps = 0
            return
        # 2. pad into a batch tensor; train with a sampled softmax over batch tokens + random negatives.
        length = max(len(y) for y in ys)
        x = torch.zeros(len(xs), length, ctx.lm.hidden_size)
        y = torch.full((len(xs), length), -1, dtype=torch.long)
        for i, (a, b) in enumerate(zip(xs, ys, strict=True)):
            x[i, : len(b)] = a
            y[i, : len(b)] = b
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=0.01)
        steps = 0
        self.net.train()
        t_train = time.perf_counter()
        # Without a step count the bar's total is re-estimated from the time left, so its ETA is the budget's.
        progress = bar(total=self.max_steps, desc="inverter: train", unit="step", leave=False)
        while time.perf_counter() < stop and (self.max_steps is None or steps < self.max_steps):
            pick = torch.randint(0, len(xs), (min(self.batch_seqs, len(xs)),), generator=gen)
            xb, yb = x[pick], y[pick]
            valid = yb >= 0
            pos = torch.unique(yb[valid])
            neg = torch.randint(0, emb.shape[0], (self.negatives,), generator=gen)
            vocab = torch.unique(torch.cat([pos, neg]))
            target = torch.searchsorted(vocab, yb[valid])
            logits = self.net(xb)[valid] @ emb[vocab].T
            loss = nn.functional.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            now = time.perf_counter()
            if self.max_steps is None:
                progress.total = steps + int(max(0.0, stop - now) / ((now - t_train) / steps))
            progress.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
            progress.update(1)
        progress.close()
        self.net.eval()
        self.train_steps = steps
        self.final_loss = float(loss.detach()) if steps else float("nan")
        self.prepare_seconds = time.perf_counter() - t0
        say(log, "learned_inverter cut %d: %d steps on %d tokens in %.1f s (loss %.3f)", ctx.cut, steps, n,
            self.prepare_seconds, self.final_loss)

    @torch.no_grad()
    def invert(self, payload, deadline=None):
        t0 = time.perf_counter()
        ids = (self.net(payload.float())[0] @ self.emb.T).argmax(-1)
        return Inversion(ids=ids, seconds=time.perf_counter() - t0)
