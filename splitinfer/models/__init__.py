"""Loading models and cutting them into stages."""

import logging

# The cache helpers live in splitinfer.cache (every cache in one place); the old names stay importable here.
from splitinfer.cache import directory as cache_dir
from splitinfer.cache import key as cache_key
from splitinfer.cache import root as cache_root
from splitinfer.models.loading import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    TINY_FAMILIES,
    LoadedModel,
    ModelNotAvailableError,
    load_model,
    peek_num_layers,
    tiny_model,
)
from splitinfer.models.partition import KVCache, Stage, causal_mask, run_chain, split_model, validate_cuts

# transformers imports torchao (a dependency: splitinfer.models.quantize) when it loads a model; on a CPU-only
# machine torchao then logs a warning per GPU kernel library it cannot load and torch one per enum it
# registers the old way. Neither is news to a user: keep them to errors.
for _noisy in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
    logging.getLogger(_noisy).setLevel(logging.ERROR)

__all__ = [
    "BUNDLED_MODELS",
    "DEFAULT_MODEL",
    "TINY_FAMILIES",
    "KVCache",
    "LoadedModel",
    "ModelNotAvailableError",
    "Stage",
    "cache_dir",
    "cache_key",
    "cache_root",
    "causal_mask",
    "load_model",
    "peek_num_layers",
    "run_chain",
    "split_model",
    "tiny_model",
    "validate_cuts",
]
