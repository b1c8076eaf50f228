"""Verifying a decoder type the suite does not test: a small random model of its own classes, shrunk from
its config, must split exactly, or the type is refused with one clear line (checked once per process).

Apart from `adapters` (which only reads configs and modules) because it runs the split itself
(`partition.split_model`, `run_chain`).
"""

from __future__ import annotations

import torch

from splitinfer import cache
from splitinfer.errors import ConfigError
from splitinfer.models.adapters import layer_kinds, random_model, shrink_config, supported_text
from splitinfer.models.loaded import LoadedModel
from splitinfer.models.partition import run_chain, split_model

_VERIFIED = cache.memo("models.verified")  # model_type -> None (splits exactly) or why not


def _verification_layers(config) -> list[int]:
    """The first two layers plus the first of every other attention kind (at most 4)."""
    kinds = layer_kinds(config)
    keep = list(range(min(2, len(kinds))))
    for k in dict.fromkeys(kinds):
        if k not in [kinds[i] for i in keep]:
            keep.append(kinds.index(k))
    return sorted(keep)[:4]


@torch.no_grad()
def verify_decoder(config, *, tol: float = 1e-4) -> None:
    """Refuse (ConfigError) a decoder type whose split does not reproduce it, checked on a small random
    model of its own classes shrunk from `config`: every cut, a left-padded batch longer than a
    4-token sliding window, then two decode steps through per-stage caches. Memoised per model type."""
    mt = config.model_type
    if mt not in _VERIFIED:
        _VERIFIED[mt] = _verify(config, tol)
    why = _VERIFIED[mt]
    if why:
        raise ConfigError(why if why.endswith(supported_text()) else
                          f"model type {mt!r} cannot be split exactly: {why}. {supported_text()}")


def _verify(config, tol: float) -> str | None:
    mt = config.model_type
    try:
        cfg = shrink_config(config, _verification_layers(config), heads=2, mlp=32, vocab=64, window=4)
        model = random_model(cfg)
    except ConfigError as e:
        return str(e)
    except Exception as e:  # a config that does not shrink: we cannot vouch for it
        return f"a small random copy could not be built ({type(e).__name__}: {e})"
    lm = LoadedModel(model, None, mt, f"verify-{mt}", "verify")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    try:
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        worst = 0.0
        for k in range(lm.num_layers + 1):
            stages = split_model(lm, [k])
            caches = [s.new_cache() for s in stages]
            outs = [run_chain(stages, ids[:, :10], position_ids=pos[:, :10], attention_mask=mask[:, :10],
                              caches=caches)]
            for t in (10, 11):
                outs.append(run_chain(stages, ids[:, t:t + 1], position_ids=pos[:, t:t + 1],
                                      attention_mask=mask[:, :t + 1], caches=caches))
            diff = ((torch.cat(outs, 1) - ref).abs() * mask[..., None]).max().item()
            worst = max(worst, diff)
    except ConfigError as e:
        return str(e)
    except Exception as e:
        return f"its layers do not run as a standard decoder stack ({type(e).__name__}: {e})"
    if not worst <= tol:
        return f"on a small random copy the split logits differ from the model's by {worst:.2e} (> {tol:g})"
    return None
