"""Attacks an honest-but-curious server can run on the payload it decodes."""

from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion, check_cut
from splitinfer.privacy.attacks.baselines import LogitLens, NearestEmbedding, NoAttack
from splitinfer.privacy.attacks.inverter import LearnedInverter
from splitinfer.privacy.attacks.whitebox import WhiteBoxInversion

ATTACKS: dict[str, type[Attack]] = {
    "none": NoAttack,
    "nearest_embedding": NearestEmbedding,
    "logit_lens": LogitLens,
    "learned_inverter": LearnedInverter,
    "whitebox": WhiteBoxInversion,
}


def available_attacks() -> list[str]:
    return sorted(ATTACKS)


def build_attack(spec: str | dict | Attack | None = None, *, name: str | None = None,
                 time_budget_s: float | None = None, **params) -> Attack:
    """An attack from a name (`"whitebox"`), a dict with `name` and parameters, or an instance.

    Hydra configs call it as `_target_: splitinfer.privacy.build_attack` with `name: ...`;
    `time_budget_s` is kept on the attack and used by `evaluate_privacy` when it is given none.
    """
    if isinstance(spec, Attack):
        return spec
    if isinstance(spec, dict) or hasattr(spec, "items"):
        params = {**{k: v for k, v in dict(spec).items() if k not in ("name", "_target_")}, **params}
        spec = dict(spec).get("name")
    spec = spec if spec is not None else name
    if not isinstance(spec, str) or spec not in ATTACKS:
        raise ValueError(f"unknown attack {spec!r}; choose one of {available_attacks()} (e.g. attack=whitebox)")
    budget = params.pop("time_budget_s", time_budget_s)
    attack = ATTACKS[spec](**params)
    if budget is not None:
        if not (isinstance(budget, int | float) and budget > 0):
            raise ValueError(f"time_budget_s={budget!r}: must be > 0 seconds or null (no limit)")
        attack.time_budget_s = float(budget)
    return attack


__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "Inversion",
    "LearnedInverter",
    "LogitLens",
    "NearestEmbedding",
    "NoAttack",
    "WhiteBoxInversion",
    "available_attacks",
    "build_attack",
    "check_cut",
]
