"""The split path, in one place: a device half, a server half, and links that only move frames.

    prompt ids ─▶ DeviceHalf: stage (embeddings + layers 0..k-1) ─▶ defense ─▶ codec.encode ─┐
                                                                        Link (frames, counted)│
    next token ◀── ServerHalf: sample ◀── stages (layers k..L-1 + norm + head) ◀── decode ◀──┘

Every recipe composes these: `splitinfer generate` (in-process, simulated or over ZeroMQ), one Hydra
sweep job (bandwidth, quality and latency inputs), the privacy evaluator (what the server decodes is
what the attacker sees), and the benchmarks. Bytes are counted once, by the link, as the frames it moved.
"""

from splitinfer.codecs.raw import RawCodec
from splitinfer.split.device import DeviceHalf, install_defense, install_server_entry
from splitinfer.split.generator import (
    GenerationResult,
    SplitGenerator,
    bind_to,
    in_process_generator,
    split_pair,
    unsplit_generate,
)
from splitinfer.split.link import (
    TOKEN_REPLY_BYTES,
    InProcessLink,
    Link,
    LinkWrapper,
    Traffic,
    VerifyRequest,
    phase_of,
    tokens_of,
)
from splitinfer.split.metered import MeteredLink, StepRecord, timed_unsplit_generate
from splitinfer.split.server import SamplingConfig, ServerHalf, ServerSession, StepError, sample_token
from splitinfer.split.simulated import SimulatedLink
from splitinfer.split.speculative import (
    GammaController,
    SpeculativeGenerator,
    SpeculativeResult,
    parse_speculate,
)
from splitinfer.split.wire import codec_spec, resolve_codec

__all__ = [
    "TOKEN_REPLY_BYTES",
    "DeviceHalf",
    "GenerationResult",
    "InProcessLink",
    "Link",
    "LinkWrapper",
    "MeteredLink",
    "RawCodec",
    "SamplingConfig",
    "ServerHalf",
    "ServerSession",
    "SimulatedLink",
    "SplitGenerator",
    "StepRecord",
    "StepError",
    "Traffic",
    "bind_to",
    "codec_spec",
    "in_process_generator",
    "install_defense",
    "install_server_entry",
    "phase_of",
    "resolve_codec",
    "sample_token",
    "tokens_of",
    "split_pair",
    "unsplit_generate",
    "GammaController",
    "SpeculativeGenerator",
    "SpeculativeResult",
    "VerifyRequest",
    "parse_speculate",
    "timed_unsplit_generate",
]
