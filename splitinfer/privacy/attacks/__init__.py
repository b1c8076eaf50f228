"""Attacks an honest-but-curious server can run on the payload it decodes."""

from splitinfer.errors import ConfigError
from splitinfer.privacy.attacks.base import Attack, AttackContext, Inversion, check_cut
from splitinfer.privacy.attacks.baselines import LogitLens, NearestEmbedding, NoAttack
from splitinfer.privacy.attacks.hybrid import AdaptiveWhiteBox, HybridInversion
from splitinfer.privacy.attacks.inverter import LearnedInverter
from splitinfer.privacy.attacks.permutation import PermutationRecovery
from splitinfer.privacy.attacks.whitebox import WhiteBoxInversion
from splitinfer.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack", {
    "none": NoAttack,
    "nearest_embedding": NearestEmbedding,
    "logit_lens": LogitLens,
    "learned_inverter": LearnedInverter,
    "whitebox": WhiteBoxInversion,
    "adaptive_whitebox": AdaptiveWhiteBox,
    "hybrid": HybridInversion,
    "permutation_recovery": PermutationRecovery,
}, example="attack=whitebox")


def available_attacks() -> list[str]:
    return ATTACKS.names()


def _run_size(attack: Attack, budget, victims, victim_tokens, victim_chat) -> Attack:
    """Check and set the run-size attributes every attack config carries (see `Attack`)."""
    if budget is not None:
        if isinstance(budget, bool) or not (isinstance(budget, int | float) and budget > 0):
            raise ConfigError(f"time_budget_s={budget!r}: must be > 0 seconds or null (no limit)")
        attack.time_budget_s = float(budget)
    for key, value in (("victims", victims), ("victim_tokens", victim_tokens)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "victims" else 2):
            raise ConfigError(f"{key}={value!r}: must be an integer >= {1 if key == 'victims' else 2} or null "
                              f"({'4 victims' if key == 'victims' else 'the whole prompt'})")
        setattr(attack, key, int(value))
    if victim_chat is not None:
        if not isinstance(victim_chat, bool):
            raise ConfigError(f"victim_chat={victim_chat!r}: must be true, false or null (true)")
        attack.victim_chat = victim_chat
    return attack


def build_attack(spec: str | dict | Attack | None = None, *, name: str | None = None,
                 time_budget_s: float | None = None, victims: int | None = None, victim_tokens: int | None = None,
                 victim_chat: bool | None = None, **params) -> Attack:
    """An attack from a name (`"whitebox"`), a dict with `name` and parameters, or an instance.

    Hydra configs call it as `_target_: splitinfer.privacy.build_attack` with `name: ...`. The run-size
    keys (`time_budget_s`, `victims`, `victim_tokens`, `victim_chat`) are kept on the attack and used by
    `evaluate_privacy` when it is not given its own.
    """
    if isinstance(spec, Attack):
        return spec
    if isinstance(spec, dict) or hasattr(spec, "items"):
        params = {**{k: v for k, v in dict(spec).items() if k not in ("name", "_target_")}, **params}
        spec = dict(spec).get("name")
    spec = spec if spec is not None else name
    ATTACKS.get(spec)  # an unknown name: the choices and the closest match
    size = {"budget": params.pop("time_budget_s", time_budget_s), "victims": params.pop("victims", victims),
            "victim_tokens": params.pop("victim_tokens", victim_tokens),
            "victim_chat": params.pop("victim_chat", victim_chat)}
    return _run_size(ATTACKS[spec](**params), **size)


__all__ = [
    "ATTACKS",
    "AdaptiveWhiteBox",
    "HybridInversion",
    "Attack",
    "AttackContext",
    "Inversion",
    "LearnedInverter",
    "LogitLens",
    "NearestEmbedding",
    "NoAttack",
    "PermutationRecovery",
    "WhiteBoxInversion",
    "available_attacks",
    "build_attack",
    "check_cut",
]
