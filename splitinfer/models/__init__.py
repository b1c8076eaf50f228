"""Loading models and cutting them into stages."""

from splitinfer.models.loading import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    TINY_FAMILIES,
    LoadedModel,
    ModelNotAvailableError,
    cache_dir,
    cache_key,
    cache_root,
    load_model,
    peek_num_layers,
    tiny_model,
)
from splitinfer.models.partition import KVCache, Stage, causal_mask, run_chain, split_model, validate_cuts

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
