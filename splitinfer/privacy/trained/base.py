"""What the fitted defenses share: binding to (model, cut), their cache files, argument checks, and the two
small tensor helpers (token RMS, frozen model weights during a backward pass)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from splitinfer import cache
from splitinfer.errors import ConfigError
from splitinfer.privacy.defenses import Defense

CACHE_VERSION = 1


def cache_file(name: str, parts: dict) -> Path:
    """The content-addressed file of a fitted artefact: `cache.root()/privacy/<name>-<key>.pt`, the key over
    everything that determines it (model fingerprint, cut, recipe, seed) and CACHE_VERSION."""
    return cache.path("privacy", name, {**parts, "v": CACHE_VERSION})


def load_cached(path: Path, what: str):
    """A cache file written by `torch.save` here, read back as tensors and plain values only (a file a user
    copied in is never unpickled as code); anything else is one line naming the file and what to do."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:
        raise ConfigError(f"cached {what} {path} is not one this version wrote ({type(e).__name__}: "
                          f"{str(e)[:200]}); delete it to compute it again") from None


def number(name: str, value, *, low: float = 0.0, strict: bool = False, what: str = "") -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (strict and value == low):
        raise ConfigError(f"{name}={value!r}: must be a finite number {'>' if strict else '>='} {low}{what}")
    return float(value)


class FrozenParams:
    """Temporarily stop gradients into the model's own weights (only the adapter/input needs them)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = [p for p in module.parameters() if p.requires_grad]

    def __enter__(self):
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p in self.params:
            p.requires_grad_(True)


def token_rms(h: torch.Tensor) -> torch.Tensor:
    return h.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-6)


class Bindable(Defense):
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
