"""Device-side defenses, applied before the codec, seeded.

A defense is a callable `defense(hidden, generator=None) -> hidden` with an attribute `acts_on`
(Fisher-shaped noise and the trained adapters, `splitinfer.privacy.trained`, also need
`defense.bind(lm, cut)` before they run):

- `"payload"`: apply it to the device stage's output, before `codec.encode` (Gaussian noise);
- `"embedding"`: attach it as the device stage's `embedding_hook` (dχ-privacy), i.e.
  `dev.embedding_hook = defense.as_hook()`; it then perturbs token embeddings before layer 0.

`attach_defense(dev, defense)` does the right one and returns the function to apply to the payload.
Without an explicit `generator` a defense draws from its own generator, seeded at construction, so
two defenses built with the same seed produce the same noise sequence (`reset()` rewinds it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch

from splitinfer.errors import ConfigError
from splitinfer.registry import Registry


class Defense:
    """Base class: a seeded, device-side perturbation of hidden states or embeddings."""

    name = "none"
    acts_on = "payload"

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, hidden: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.perturb(hidden, generator if generator is not None else self._generator)

    def perturb(self, hidden: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return hidden

    def with_seed(self, seed: int) -> Defense:
        """A copy with the same parameters and its own generator seeded by `seed`."""
        other = copy.copy(self)
        other.seed = int(seed)
        other.reset()
        return other

    def with_noise_seed(self, seed: int) -> Defense:
        """A copy with fresh noise draws but the same secrets (for trained defenses: the same adapter)."""
        return self.with_seed(seed)

    def bind(self, lm, cut: int) -> Defense:
        """The defense ready for `lm` cut at `cut` (Fisher-shaped noise and trained adapters need them;
        see `splitinfer.privacy.trained`); the others return themselves."""
        return self

    @property
    def bound(self) -> bool:
        return True

    def deterministic(self, hidden: torch.Tensor) -> torch.Tensor:
        """The part of the payload map an attacker can reproduce with its own copy (noise is not)."""
        return hidden

    def as_hook(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda h: self(h)

    @property
    def strength(self) -> float:
        return 0.0

    def describe(self) -> dict[str, float | str]:
        return {"name": self.name, "acts_on": self.acts_on, "strength": self.strength}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class NoDefense(Defense):
    """The identity: what the server sees is the device stage's output (through the codec)."""


class GaussianNoise(Defense):
    """Add N(0, (sigma * rms_t)^2) to every element of token t, rms_t being that token's RMS.

    Scaling by each token's RMS keeps the relative noise level the same at every depth and position
    (residual-stream norms grow with depth and the first token is often orders of magnitude larger).
    """

    name = "gaussian"
    acts_on = "payload"

    def __init__(self, sigma: float = 0.1, seed: int = 0) -> None:
        if not (isinstance(sigma, int | float) and not isinstance(sigma, bool) and sigma >= 0 and math.isfinite(sigma)):
            raise ConfigError(f"sigma={sigma!r}: must be a finite number >= 0 (noise std relative to token RMS)")
        self.sigma = float(sigma)
        super().__init__(seed)

    @property
    def strength(self) -> float:
        return self.sigma

    def perturb(self, hidden, generator):
        if self.sigma == 0:
            return hidden
        rms = hidden.pow(2).mean(-1, keepdim=True).sqrt()
        noise = torch.randn(hidden.shape, generator=generator, dtype=torch.float32).to(hidden)
        return hidden + self.sigma * rms * noise

    def describe(self):
        return {**super().describe(), "sigma": self.sigma}


class DChiPrivacy(Defense):
    """dχ-privacy on token embeddings (Feyisetan et al. 2020; as in Split-and-Denoise, Mai et al. 2024).

    Each token embedding gets noise z with density proportional to exp(-eta * ||z||): a uniform
    direction times a Gamma(H, 1/eta) norm (H = hidden size). Smaller eta = more noise. Attach it as
    the device stage's `embedding_hook`.
    """

    name = "dchi"
    acts_on = "embedding"

    def __init__(self, eta: float = 500.0, seed: int = 0) -> None:
        if not (isinstance(eta, int | float) and not isinstance(eta, bool) and eta > 0):
            raise ConfigError(f"eta={eta!r}: must be a number > 0 (privacy parameter; smaller = more noise)")
        self.eta = float(eta)
        super().__init__(seed)

    @property
    def strength(self) -> float:
        return 1.0 / self.eta

    def perturb(self, hidden, generator):
        if math.isinf(self.eta):
            return hidden
        *lead, h = hidden.shape
        direction = torch.randn((*lead, h), generator=generator, dtype=torch.float32)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # Gamma(H, 1/eta) as a sum-free draw: torch's sampler takes no generator, so use the
        # Marsaglia-Tsang-free route through standard normals: Gamma(k, 1) ~ chi2(2k)/2.
        chi = torch.randn((*lead, 2 * h), generator=generator, dtype=torch.float32).pow(2).sum(-1, keepdim=True)
        radius = chi / 2.0 / self.eta
        return hidden + (direction * radius).to(hidden)

    def describe(self):
        return {**super().describe(), "eta": self.eta}


class SecretPermutation(Defense):
    """A secret permutation of the payload's hidden channels, drawn from the seed (the secret).

    The residual stream of a pre-norm transformer is permutation-equivariant: a server half whose weights
    are permuted the same way (norm weights, the input columns of the projections that read the stream,
    the output rows of those that write it, the head's columns) computes exactly what the public server
    half computes on the unpermuted payload. The device owner provisions such folded weights once; here
    the server stage un-permutes at its entry (`server_entry`, installed as the stage's `entry_hook` by
    `splitinfer.split.install_server_entry`), which is the same function. So utility is exact (Δppl 0)
    and the payload is no longer in the public model's coordinates, which defeats a white-box attacker
    that assumes it is. It does not defeat one that knows the defense (Kerckhoffs): the channels keep
    their statistics, so the permutation can be recovered from the device's traffic
    (`attack=permutation_recovery`, the hidden-state alignment attack, arXiv 2505.18332); a server that
    holds the folded weights can also read it off them by weight matching
    (`splitinfer.privacy.folding`, which also builds those weights). There is no strength knob.

    The defense needs the server's cooperation (the folded weights): splitinfer runs it in process (sweeps,
    `generate` without `--server`, the privacy experiments); a remote device refuses it, since a plain
    `serve` holds the public weights.
    """

    name = "secret_permutation"
    acts_on = "payload"
    needs_server = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._perms: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _pair(self, hidden_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hidden_size not in self._perms:
            perm = torch.randperm(hidden_size, generator=torch.Generator().manual_seed(self.seed + 104729))
            self._perms[hidden_size] = (perm, torch.argsort(perm))
        return self._perms[hidden_size]

    def permutation(self, hidden_size: int) -> torch.Tensor:
        """The secret: payload channel j carries the public channel `perm[j]`."""
        return self._pair(hidden_size)[0]

    def with_seed(self, seed: int) -> Defense:
        other = super().with_seed(seed)
        other._perms = {}
        return other

    def with_noise_seed(self, seed: int) -> Defense:
        return self  # no noise: the same secret

    @property
    def strength(self) -> float:
        return 1.0

    def perturb(self, hidden, generator):
        return hidden[..., self.permutation(hidden.shape[-1])]

    def deterministic(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.perturb(hidden, self._generator)

    def server_entry(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the server's folded weights amount to: the payload back in the public coordinates."""
        return hidden[..., self._pair(hidden.shape[-1])[1]]

    def describe(self):
        return {**super().describe(), "secret": "channel permutation"}


# Every defense, listed here. The fitted ones subclass Defense in splitinfer.privacy.trained, which imports this
# module: they are named by "module:class" and imported on first lookup.
DEFENSES: Registry[type[Defense]] = Registry(
    "defense", {"none": NoDefense, "gaussian": GaussianNoise, "dchi": DChiPrivacy,
                "secret_permutation": SecretPermutation,
                "fisher_noise": "splitinfer.privacy.trained.fisher:FisherNoise",
                "nopeek": "splitinfer.privacy.trained.adapters:NoPeek",
                "secret_adapter": "splitinfer.privacy.trained.adapters:SecretAdapter"},
    example="defense=gaussian defense.sigma=0.1")


def available_defenses() -> list[str]:
    return DEFENSES.names()


def build_defense(spec: str | dict | Defense | None = None, *, name: str | None = None, **params) -> Defense:
    """A defense from a name (`"gaussian"`), a dict with `name` and parameters, an instance, or None.

    Hydra configs call it as `_target_: splitinfer.privacy.build_defense` with `name: ...`.
    """
    if isinstance(spec, Defense):
        return spec
    if isinstance(spec, dict) or hasattr(spec, "items"):
        params = {**{k: v for k, v in dict(spec).items() if k not in ("name", "_target_")}, **params}
        spec = dict(spec).get("name")
    spec = spec if spec is not None else name
    if spec is None:
        return NoDefense()
    return DEFENSES.get(spec)(**params)


def attach_defense(dev, defense: Defense | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Install an embedding-level defense as `dev.embedding_hook`; return what to apply to the payload.

    The experiment calls this once per job on the device stage, then sends
    `codec.encode(post(dev(ids)))` where `post` is the returned function (identity for dχ).
    """
    if defense is not None and not defense.bound:
        raise ConfigError(f"defense {defense.name!r} depends on the model and the cut: bind it first "
                          "(defense = defense.bind(lm, cut)); evaluate_privacy and the Hydra job do")
    if defense is None or isinstance(defense, NoDefense):
        dev.embedding_hook = None
        return lambda h: h
    if defense.acts_on == "embedding":
        if not getattr(dev, "is_first", False):
            raise ConfigError(f"defense {defense.name!r} acts on embeddings and needs the first (device) stage")
        dev.embedding_hook = defense.as_hook()
        return lambda h: h
    dev.embedding_hook = None
    return defense
