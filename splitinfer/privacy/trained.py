"""Defenses that need the model and the cut: Fisher-shaped noise and trained device-side adapters.

- `fisher_noise` (`sigma`): Gaussian noise on the payload whose per-dimension std follows the diagonal
  inverse Fisher information of the (public, frozen) server half's output with respect to the payload,
  so each dimension costs the same expected KL; the total noise energy equals `gaussian`'s at the same
  `sigma` (std = sigma x each token's RMS on average).
- `nopeek` (`lam`): a low-rank adapter on the device stage's output, trained on public text with the task
  loss (KL from the unsplit model's next-token distribution to the frozen server half's) plus
  `lam` x distance correlation(input embeddings, payload) (NoPeek, Vepakomma et al. 2020).
- `secret_adapter` (`gamma`): a device-only adapter drawn from a secret (its seed) that the server never
  sees: a fixed secret projection, then a trained map, adding a deviation of about `gamma` x the
  payload's norm, trained to keep the frozen server half's output distribution (KL) while it keeps
  that deviation.

All three act on the payload (`acts_on == "payload"`), so they run unchanged through `DeviceHalf` on
the real wire. They are built from the config without the model; `bind(lm, cut)` (done by
`evaluate_privacy` and the Hydra job once the model is loaded) computes the Fisher diagonal or trains
the adapter. Both are cached in the content-addressed cache (`splitinfer.models.cache_root()/privacy/`),
keyed by the model's fingerprint, the cut, the recipe and the seed: a second job with the same set-up
loads in milliseconds. The adapter's seed is its secret: `with_seed(s)` trains (or loads) the adapter
for secret `s`, which is how an attacker gets its own copy (same recipe, its own secret).
"""

from __future__ import annotations

import copy
import logging
import math
import time

import torch
from torch import nn

from splitinfer.errors import ConfigError
from splitinfer.privacy.defenses import DEFENSES, Defense
from splitinfer.privacy.progress import say

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def _cache_dir():
    from splitinfer.models import cache_dir

    return cache_dir("privacy")


def _key(parts: dict) -> str:
    from splitinfer.models import cache_key

    return cache_key({**parts, "v": CACHE_VERSION})


def _number(name: str, value, *, low: float = 0.0, strict: bool = False, what: str = "") -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ConfigError(f"{name}={value!r}: must be a finite number {'>' if strict else '>='} {low}{what}")
    return float(value)


_DATA_MEMO: dict = {}


def public_sequences(lm, n: int, seq_len: int, *, split: str = "train", seed: int = 0) -> list[torch.Tensor]:
    """Public token windows (1, seq_len): the auxiliary corpus (Python docs + Faker requests on auxiliary
    templates; never victims). `split="train"` keeps 4 of every 5 texts (defense training), `"heldout"`
    the fifth (utility). A model without a tokenizer gets seeded random ids."""
    memo = (lm.fingerprint, n, seq_len, split, seed)
    if memo in _DATA_MEMO:
        return _DATA_MEMO[memo]
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    if lm.tokenizer is None:
        out = [torch.randint(3, lm.vocab_size, (1, seq_len), generator=g) for _ in range(n)]
    else:
        from splitinfer.privacy.victims import aux_corpus

        texts = [t for i, t in enumerate(aux_corpus()) if (i % 5 == 0) == (split == "heldout")]
        windows = []
        for t in texts:
            ids = lm.tokenizer(t, return_tensors="pt")["input_ids"]
            windows += [ids[:, s: s + seq_len] for s in range(0, ids.shape[1] - seq_len + 1, seq_len)]
        order = torch.randperm(len(windows), generator=g).tolist()
        out = [windows[i] for i in order[:n]]
    _DATA_MEMO[memo] = out
    return out


class _FrozenParams:
    """Temporarily stop gradients into the model's own weights (only the adapter/input needs them)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def _rms(h: torch.Tensor) -> torch.Tensor:
    return h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)


def server_fisher(lm, cut: int, *, seqs: int = 16, seq_len: int = 48, seed: int = 0) -> torch.Tensor:
    """Diagonal (empirical, model-sampled) Fisher information of the server half's next-token output with
    respect to the RMS-normalised payload, (H,), averaged over positions of public text (row 0, the
    attention sink, left out). Public (model + cut only); cached."""
    from splitinfer.models import split_model

    path = _cache_dir() / f"fisher-{_key({'m': lm.fingerprint, 'cut': cut, 'n': seqs, 'T': seq_len, 's': seed})}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)  # tensors and plain values only: never unpickles code
    t0 = time.perf_counter()
    dev, srv = split_model(lm, [cut])
    g = torch.Generator().manual_seed(seed + 31)
    total = torch.zeros(lm.hidden_size, dtype=torch.float64)
    count = 0
    with _FrozenParams(lm.model), torch.enable_grad():
        for ids in public_sequences(lm, seqs, seq_len, seed=seed):
            with torch.no_grad():
                h = dev(ids).float()
            rms = _rms(h)
            hn = (h / rms).detach().requires_grad_(True)
            logp = torch.log_softmax(srv(hn * rms).float()[0], -1)
            with torch.no_grad():
                y = torch.multinomial(logp.exp(), 1, generator=g)[:, 0]
            (grad,) = torch.autograd.grad(logp.gather(-1, y[:, None]).sum(), hn)
            total += grad[0, 1:].double().pow(2).sum(0)
            count += grad.shape[1] - 1
    fisher = (total / max(count, 1)).float()
    torch.save(fisher, path)
    say(log, "fisher cut %d: diagonal Fisher of the server half from %d tokens in %.1f s", cut, count,
        time.perf_counter() - t0)
    return fisher


class _Bindable(Defense):
    """A defense that needs (lm, cut) before it runs; `bind` returns a bound copy."""

    def __init__(self, seed: int = 0) -> None:
        self._lm = None
        self._cut = None
        super().__init__(seed)

    @property
    def bound(self) -> bool:
        return self._lm is not None

    def bind(self, lm, cut: int) -> Defense:
        if self._lm is lm and self._cut == int(cut):
            return self
        other = copy.copy(self)
        other._lm, other._cut = lm, int(cut)
        other._setup()
        return other

    def _setup(self) -> None:
        raise NotImplementedError

    def _need_bound(self) -> None:
        if not self.bound:
            raise ConfigError(f"defense {self.name!r} depends on the model and the cut: call "
                              f"defense.bind(lm, cut) first (evaluate_privacy and the Hydra job do)")

    def describe(self):
        return {**super().describe(), **({"cut": self._cut} if self._cut is not None else {})}


class FisherNoise(_Bindable):
    """Gaussian payload noise shaped by the inverse diagonal Fisher of the server half (see module doc)."""

    name = "fisher_noise"
    acts_on = "payload"

    def __init__(self, sigma: float = 0.1, max_ratio: float = 10.0, fisher_seqs: int = 16, seed: int = 0) -> None:
        self.sigma = _number("sigma", sigma, what=" (mean noise std relative to token RMS)")
        self.max_ratio = _number("max_ratio", max_ratio, low=1.0, what=" (largest/smallest per-dimension std)")
        if isinstance(fisher_seqs, bool) or not isinstance(fisher_seqs, int) or fisher_seqs < 1:
            raise ConfigError(f"fisher_seqs={fisher_seqs!r}: must be an integer >= 1 (public sequences)")
        self.fisher_seqs = fisher_seqs
        self.shape = None
        super().__init__(seed)

    @property
    def strength(self) -> float:
        return self.sigma

    def _setup(self) -> None:
        self.fisher = server_fisher(self._lm, self._cut, seqs=self.fisher_seqs)
        self.shape = noise_shape(self.fisher, self.max_ratio)

    def perturb(self, hidden, generator):
        self._need_bound()
        if self.sigma == 0:
            return hidden
        noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32).to(hidden)
        return hidden + self.sigma * _rms(hidden) * self.shape.to(hidden) * noise

    def describe(self):
        return {**super().describe(), "sigma": self.sigma, "max_ratio": self.max_ratio}


def noise_shape(fisher: torch.Tensor, max_ratio: float = 10.0) -> torch.Tensor:
    """Per-dimension std multipliers ∝ F^-1/2, clipped to a `max_ratio` spread, with mean square 1."""
    s = fisher.clamp_min(1e-20).rsqrt()
    s = s / s.pow(2).mean().sqrt()
    lo = float(s.max()) / max_ratio
    s = s.clamp_min(lo)
    return s / s.pow(2).mean().sqrt()


class LowRankAdapter(nn.Module):
    """h -> h + rms(h) * B gelu(A h/rms(h)): a device-side residual adapter on the payload (rank r)."""

    def __init__(self, hidden: int, rank: int, generator: torch.Generator, b_scale: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, hidden, generator=generator) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.randn(hidden, rank, generator=generator) * b_scale)

    def delta(self, h: torch.Tensor) -> torch.Tensor:
        rms = _rms(h)
        return rms * (nn.functional.gelu((h / rms) @ self.a.T) @ self.b.T)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.delta(h).to(h)


class TrainedAdapter(_Bindable):
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
        self.train_budget_s = _number("train_budget_s", train_budget_s, strict=True, what=" (CPU seconds)")
        self.lr = _number("lr", lr, strict=True)
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
        key = _key({"m": self._lm.fingerprint, "cut": self._cut, "seed": self.seed, **self.recipe()})
        path = _cache_dir() / f"adapter-{key}.pt"
        g = torch.Generator().manual_seed(self.seed * 7919 + 13)
        self.adapter = LowRankAdapter(self._lm.hidden_size, self.rank, g, self._b_scale())
        if path.exists():
            saved = torch.load(path, weights_only=True)  # tensors and plain values only: never unpickles code
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
        with _FrozenParams(lm.model), torch.enable_grad():
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


_TRAIN_MEMO: dict = {}


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


class NoPeek(TrainedAdapter):
    """NoPeek: KL to the unsplit model + `lam` x dCor(input embeddings, payload), row 0 left out."""

    name = "nopeek"

    def __init__(self, lam: float = 1.0, **recipe) -> None:
        self.lam = _number("lam", lam, what=" (weight of the distance-correlation penalty)")
        super().__init__(**recipe)

    @property
    def strength(self) -> float:
        return self.lam

    def _params(self):
        return {"lam": self.lam}

    def _aux_loss(self, h, out, emb):
        if self.lam == 0:
            return out.sum() * 0
        return self.lam * torch.stack([dcor_loss(e[1:], o[1:] / _rms(o[1:])) for e, o in zip(emb, out, strict=True)]).mean()


class SecretAdapter(TrainedAdapter):
    """A fixed secret projection (A, never trained) and a trained output map (B, drawn from the secret),
    keeping a deviation of about `gamma` x |payload| while matching the unsplit model's output (KL)."""

    name = "secret_adapter"
    train_a = False

    def __init__(self, gamma: float = 0.5, weight: float = 10.0, **recipe) -> None:
        self.gamma = _number("gamma", gamma, what=" (deviation from the public payload, x its norm)")
        self.weight = _number("weight", weight, what=" (penalty keeping the deviation at gamma)")
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


for _name, _cls in (("fisher_noise", FisherNoise), ("nopeek", NoPeek), ("secret_adapter", SecretAdapter)):
    if _name not in DEFENSES:
        DEFENSES.register(_name, _cls)
