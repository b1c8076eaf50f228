"""How much of the prompt an honest-but-curious server can rebuild from the payload it decodes.

`evaluate_privacy(lm, cut, attack=..., defense=..., codec=...)` is the entry point; attacks, defenses,
metrics and the synthetic victims live in their own modules (see README "Privacy").
"""

from splitinfer.privacy.attacks import (
    ATTACKS,
    AdaptiveWhiteBox,
    Attack,
    AttackContext,
    HybridInversion,
    Inversion,
    LearnedInverter,
    LogitLens,
    NearestEmbedding,
    NoAttack,
    PermutationRecovery,
    WhiteBoxInversion,
    available_attacks,
    build_attack,
)
from splitinfer.privacy.defenses import (
    DEFENSES,
    DChiPrivacy,
    Defense,
    GaussianNoise,
    NoDefense,
    SecretPermutation,
    attach_defense,
    available_defenses,
    build_defense,
)
from splitinfer.privacy.evaluate import evaluate_privacy, payload_fn
from splitinfer.privacy.trained import FisherNoise, NoPeek, SecretAdapter, server_fisher
from splitinfer.privacy.victims import Victim, aux_corpus, private_prompts, victim_set

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "AdaptiveWhiteBox",
    "Attack",
    "AttackContext",
    "DChiPrivacy",
    "Defense",
    "FisherNoise",
    "NoPeek",
    "SecretAdapter",
    "server_fisher",
    "GaussianNoise",
    "HybridInversion",
    "Inversion",
    "LearnedInverter",
    "LogitLens",
    "NearestEmbedding",
    "NoAttack",
    "NoDefense",
    "PermutationRecovery",
    "SecretPermutation",
    "Victim",
    "WhiteBoxInversion",
    "attach_defense",
    "available_attacks",
    "available_defenses",
    "aux_corpus",
    "build_attack",
    "build_defense",
    "evaluate_privacy",
    "payload_fn",
    "private_prompts",
    "victim_set",
]
