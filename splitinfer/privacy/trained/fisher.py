"""Fisher estimation of the server half and the Fisher-shaped payload noise `fisher_noise`."""

from __future__ import annotations

import logging
import time

import torch

from splitinfer.errors import ConfigError
from splitinfer.privacy.progress import say
from splitinfer.privacy.trained.base import Bindable, FrozenParams, cache_file, load_cached, number, token_rms
from splitinfer.privacy.trained.public_data import public_sequences

log = logging.getLogger(__name__)


def server_fisher(lm, cut: int, *, seqs: int = 16, seq_len: int = 48, seed: int = 0) -> torch.Tensor:
    """Diagonal (empirical, model-sampled) Fisher information of the server half's next-token output with
    respect to the RMS-normalised payload, (H,), averaged over positions of public text (row 0, the
    attention sink, left out). Public (model + cut only); cached."""
    from splitinfer.models import split_model

    path = cache_file("fisher", {"m": lm.fingerprint, "cut": cut, "n": seqs, "T": seq_len, "s": seed})
    if path.exists():
        return load_cached(path, "Fisher diagonal")
    t0 = time.perf_counter()
    dev, srv = split_model(lm, [cut])
    g = torch.Generator().manual_seed(seed + 31)
    total = torch.zeros(lm.hidden_size, dtype=torch.float64)
    count = 0
    with FrozenParams(lm.model), torch.enable_grad():
        for ids in public_sequences(lm, seqs, seq_len, seed=seed):
            with torch.no_grad():
                h = dev(ids).float()
            rms = token_rms(h)
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


class FisherNoise(Bindable):
    """Gaussian payload noise shaped by the inverse diagonal Fisher of the server half (see module doc)."""

    name = "fisher_noise"
    acts_on = "payload"

    def __init__(self, sigma: float = 0.1, max_ratio: float = 10.0, fisher_seqs: int = 16, seed: int = 0) -> None:
        self.sigma = number("sigma", sigma, what=" (mean noise std relative to token RMS)")
        self.max_ratio = number("max_ratio", max_ratio, low=1.0, what=" (largest/smallest per-dimension std)")
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
        return hidden + self.sigma * token_rms(hidden) * self.shape.to(hidden) * noise

    def describe(self):
        return {**super().describe(), "sigma": self.sigma, "max_ratio": self.max_ratio}


def noise_shape(fisher: torch.Tensor, max_ratio: float = 10.0) -> torch.Tensor:
    """Per-dimension std multipliers ∝ F^-1/2, clipped to a `max_ratio` spread, with mean square 1."""
    s = fisher.clamp_min(1e-20).rsqrt()
    s = s / s.pow(2).mean().sqrt()
    lo = float(s.max()) / max_ratio
    s = s.clamp_min(lo)
    return s / s.pow(2).mean().sqrt()
