"""Split generation, as users call it: re-exports of the split path (`splitinfer.split`) and the
unsplit reference.

    gen = in_process_generator(lm, [15], codec="int8", defense=build_defense("gaussian", sigma=0.1))
    print(gen.generate("What is the capital of France?", 32).text)
"""

from __future__ import annotations

import torch

from splitinfer.models import LoadedModel
from splitinfer.split import (
    TOKEN_REPLY_BYTES,
    DeviceHalf,
    GenerationResult,
    InProcessLink,
    Link,
    SamplingConfig,
    ServerHalf,
    ServerSession,
    SplitGenerator,
    StepError,
    in_process_generator,
    sample_token,
    split_pair,
)

__all__ = [
    "TOKEN_REPLY_BYTES",
    "DeviceHalf",
    "GenerationResult",
    "InProcessLink",
    "Link",
    "SamplingConfig",
    "ServerHalf",
    "ServerSession",
    "SplitGenerator",
    "StepError",
    "in_process_generator",
    "sample_token",
    "split_pair",
    "unsplit_generate",
]


@torch.no_grad()
def unsplit_generate(lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy tokens from the unsplit model via transformers' own `generate` (the reference)."""
    eos = sorted(lm.eos_token_ids) or None
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else 0)
    return out[0, ids.shape[1]:].tolist()
