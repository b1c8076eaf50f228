"""What every attack shares: the context it is prepared with and the inversion interface."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import LoadedModel


@dataclass
class AttackContext:
    """What the server-side attacker knows when it prepares for a cut.

    `observe(ids)` reproduces the device side on the attacker's own inputs (public weights, the same
    defense kind and codec, but the attacker's own noise seed): what a black-box attacker with
    auxiliary data can collect to train on. `aux_ids` are tokenized public texts (never victims).
    """

    lm: LoadedModel
    cut: int
    observe: Callable[[torch.Tensor], torch.Tensor]
    aux_ids: list[torch.Tensor] = field(default_factory=list)
    seed: int = 0
    deadline: float | None = None  # time.perf_counter() value after which work must stop
    # True when the payload is the device output itself (no defense, no codec): the attacker then
    # accepts only exact matches (it knows the set-up; Kerckhoffs).
    noiseless: bool = False
    # The attacker's own instance of the defense (same kind and parameters, its own seed/secret), bound to
    # the model and cut; None without a defense. White-box attacks with `surrogate` run candidates through
    # its deterministic part.
    defense: object = None
    # A hash of the set-up the attacker's own payloads come from (model, cut, defense and its attacker
    # seed, codec, seed): attacks that train on them may reuse what they trained for the same key.
    setup_key: str | None = None
    # Payloads of the victim device's other requests (not the victims; the server sees them, never their
    # text), computed on first call: what an attack on a secret that stays fixed across requests (a
    # channel permutation) learns it from. None outside `evaluate_privacy`.
    traffic: Callable[[], list[torch.Tensor]] | None = None
    chat: bool = True  # the victims' prompts are in the chat template (the attacker knows the app's format)
    max_tokens: int | None = None  # ... and cut to this many tokens (None: whole prompts)
    codec_lossless: bool = True  # the codec returns the payload bit for bit (none, or fp32)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline


@dataclass
class Inversion:
    """Recovered token ids (T,) for one payload; -1 where the attack did not get to (time budget)."""

    ids: torch.Tensor
    complete: bool = True
    seconds: float = 0.0
    verified: int = 0  # positions confirmed by an exact match / ratio test (white-box only)
    candidates: int = 0  # candidate tokens run through the device stage (white-box only)
    # median over positions of the chosen candidate's distance to the payload row, relative to the row's
    # norm (white-box only): ~1e-7 for an exact match; how far the nearest match got under a defense
    match_dist: float = float("nan")


class Attack:
    """An honest-but-curious server's attack: `prepare` once per (model, cut, defense), then `invert`.

    The run-size attributes are set by `build_attack` from the config (`conf/attack/*.yaml`), so one
    config says how big a default run is; `evaluate_privacy`'s own arguments take precedence.
    """

    name = "attack"
    needs_training = False
    time_budget_s: float | None = None  # whole attack (set-up + inversion); None = no limit
    victims: int | None = None  # how many Faker victims; None = evaluate_privacy's default (4)
    victim_tokens: int | None = None  # each victim's prompt cut to this many tokens; None = whole prompt
    victim_chat: bool | None = None  # wrap victims in the chat template; None = yes

    def prepare(self, ctx: AttackContext) -> None:
        self.ctx = ctx

    def invert(self, payload: torch.Tensor, deadline: float | None = None) -> Inversion:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


def embedding_matrix(lm: LoadedModel) -> torch.Tensor:
    """The public token-embedding table (V, H)."""
    return lm.model.get_input_embeddings().weight.detach()


def check_cut(lm: LoadedModel, cut: int) -> int:
    """Fail before any work when the model has no such cut (0..L)."""
    from splitinfer.models import validate_cuts

    if isinstance(cut, bool) or not isinstance(cut, int):
        raise ConfigError(f"cut {cut!r} is not an int; this model has {lm.num_layers} layers, so cut must be in "
                         f"0..{lm.num_layers}")
    return validate_cuts([cut], lm.num_layers)[0]
