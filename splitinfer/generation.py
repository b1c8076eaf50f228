"""Split generation, as users call it: re-exports of the split path (`splitinfer.split`), including
the unsplit reference `unsplit_generate`.

    gen = in_process_generator(lm, [15], codec="int8", defense=build_defense("gaussian", sigma=0.1))
    print(gen.generate("What is the capital of France?", 32).text)
"""

from __future__ import annotations

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
    unsplit_generate,
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
