"""What every reliability scenario shares: the server's small caps, the clients' prompts and sampling, the
fault-free reference each client's output must equal, and a ping."""

from __future__ import annotations

import torch

from splitinfer.split import SamplingConfig, in_process_generator
from splitinfer_testing.reliability.harness import CUT, Dealer

SERVER_ARGS = ("--max-message-bytes", "65536", "--max-tokens", "512")  # small caps: oversize is cheap to send
MAX_MESSAGE_BYTES = 65536


def prompt(i: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(3, vocab, (1, 4 + i % 5), generator=g)


def sampling(i: int) -> SamplingConfig:
    # Sampled, not greedy: a tiny random model's greedy text repeats one token, which would hide a
    # replayed or skipped step; seeded by (seed, position), so every run draws the same tokens.
    return SamplingConfig(temperature=0.8, top_k=40, seed=100 + i)


def reference_tokens(lm, i: int, new_tokens: int) -> list[int]:
    """The single-client, fault-free output of client i: the same split, in one process, no network."""
    gen = in_process_generator(lm, [CUT], sampling=sampling(i))
    return gen.generate(prompt(i, lm.vocab_size), new_tokens, stop_at_eos=False).token_ids


def ping(url: str, curve=None) -> bool:
    """The server at `url` answers a ping (with these CurveZMQ client keys, if any)."""
    with Dealer(url, curve=curve) as d:
        rep = d.call("ping", timeout_ms=2000)
    return bool(rep and rep.get("ok"))
