"""Split generation: the device stage drives the rest of the chain through a link.

The device prefills the prompt through its stage, sends the hidden states across the link, and gets
the next token id back; every later step sends one token's hidden state. Each side keeps its own KV
cache. The server side samples (greedy, temperature, top-k, top-p) with a generator seeded by
(seed, position), so a replayed step draws exactly the same token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from splitinfer.models import LoadedModel, Stage


class StepError(ValueError):
    """A step that does not fit the session's state (wrong start position, too many tokens)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How the server picks the next token; temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, int | float) and 0.0 <= self.temperature <= 100.0):
            raise ValueError(f"temperature={self.temperature!r}: must be a number in [0, 100] (0 = greedy)")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise ValueError(f"top_k={self.top_k!r}: must be an int >= 0 (0 = off)")
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p={self.top_p!r}: must be a number in (0, 1] (1 = off)")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**62):
            raise ValueError(f"seed={self.seed!r}: must be an int in [0, 2**62)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def sample_token(logits: torch.Tensor, cfg: SamplingConfig, position: int) -> int:
    """Pick the next token from one position's logits (V,). Deterministic given (seed, position)."""
    if cfg.greedy:
        if logits.dtype == torch.float32 and logits.dim() == 1 and logits.device.type == "cpu":
            # numpy's argmax: same answer (first maximum; a NaN counts as the maximum), ~10x cheaper
            # than torch's on one thread, and it sits on every decode step's critical path
            return int(logits.detach().numpy().argmax())
        return int(torch.argmax(logits))
    scores = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(scores, min(cfg.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, -1) >= cfg.top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + position) % 2**63)
    return int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))


class ServerSession:
    """The server side of one generation: the remaining stages, their KV caches and the sampler."""

    def __init__(self, stages: Sequence[Stage], sampling: SamplingConfig | None = None,
                 max_tokens: int | None = None) -> None:
        if not stages or not stages[-1].is_last:
            raise ValueError("a server session needs the chain's stages up to and including the last one")
        self.stages = list(stages)
        self.sampling = sampling or SamplingConfig()
        self.max_tokens = max_tokens
        self.caches = [s.new_cache() for s in self.stages]
        self.position = 0

    @property
    def hidden_size(self) -> int:
        return self.stages[0].hidden_size

    def cache_bytes(self) -> int:
        return sum(c.nbytes() for c in self.caches if c is not None)

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Run the chain on hidden states for positions start..start+T-1; returns logits (1, T, V)."""
        if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[-1] != self.hidden_size:
            raise StepError(f"hidden states must have shape (1, T, {self.hidden_size}), got {tuple(hidden.shape)}")
        if start != self.position:
            raise StepError(f"step starts at position {start} but the session is at {self.position}; "
                            "resend from the session's position or replay the session")
        n = hidden.shape[1]
        if n == 0:
            raise StepError("a step must carry at least one position")
        if self.max_tokens is not None and start + n > self.max_tokens:
            raise StepError(f"session would hold {start + n} tokens, over its limit of {self.max_tokens}")
        pos = torch.arange(start, start + n)[None]
        h = hidden.to(torch.float32)
        for stage, cache in zip(self.stages, self.caches, strict=True):
            h = stage(h, position_ids=pos, cache=cache)
        self.position += n
        return h

    def step(self, hidden: torch.Tensor, start: int) -> int:
        """Run one step and return the sampled next token id."""
        logits = self.forward(hidden, start)
        return sample_token(logits[0, -1], self.sampling, self.position)

    def rollback(self, position: int) -> None:
        """Forget everything from `position` on (for a step that must be redone)."""
        for c in self.caches:
            if c is not None:
                c.crop(position)
        self.position = min(self.position, position)


class Link(Protocol):
    """Carries a device step to the server side and brings back the next token id."""

    bytes_up: int
    bytes_down: int

    def step(self, hidden: torch.Tensor, start: int) -> int: ...
    def reset(self) -> None: ...
    def close(self) -> None: ...


class InProcessLink:
    """A link with no network: optionally encodes/decodes with a codec and counts the real bytes."""

    TOKEN_REPLY_BYTES = 4  # an int32 token id

    def __init__(self, session_factory, codec=None) -> None:
        self._factory = session_factory
        self.codec = codec
        self.session: ServerSession = session_factory()
        self.bytes_up = 0
        self.bytes_down = 0
        self.messages = 0

    def step(self, hidden: torch.Tensor, start: int) -> int:
        if self.codec is not None:
            enc = self.codec.encode(hidden)
            self.bytes_up += enc.nbytes
            hidden = self.codec.decode(enc)
        else:
            self.bytes_up += hidden.numel() * hidden.element_size()
        self.messages += 1
        token = self.session.step(hidden, start)
        self.bytes_down += self.TOKEN_REPLY_BYTES
        return token

    def reset(self) -> None:
        self.session = self._factory()
        self.bytes_up = self.bytes_down = self.messages = 0

    def close(self) -> None:
        pass


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    bytes_up: int
    bytes_down: int
    prefill_s: float
    decode_s: list[float] = field(default_factory=list)

    @property
    def decode_s_per_token(self) -> float:
        return sum(self.decode_s) / len(self.decode_s) if self.decode_s else float("nan")


class SplitGenerator:
    """Generates text with the device stage here and the rest of the chain behind a link."""

    def __init__(self, lm: LoadedModel, device_stage: Stage, link: Link) -> None:
        if not lm.is_causal_lm:
            raise ValueError(f"model {lm.name!r} is an encoder ({lm.family}); generation needs a causal LM")
        if not device_stage.is_first:
            raise ValueError("the device stage must be the chain's first stage")
        self.lm = lm
        self.device_stage = device_stage
        self.link = link

    @torch.no_grad()
    def generate(self, prompt: str | torch.Tensor, max_new_tokens: int = 32, *, chat: bool = True,
                 stop_at_eos: bool = True, on_token=None) -> GenerationResult:
        """Generate up to `max_new_tokens`; `on_token(token_ids_so_far)` is called after each token."""
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be an int >= 1")
        ids = self.lm.encode_prompt(prompt, chat=chat) if isinstance(prompt, str) else prompt
        if ids.dim() == 1:
            ids = ids[None]
        if ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ValueError(f"prompt ids must have shape (1, T>0), got {tuple(ids.shape)}")
        self.link.reset()
        cache = self.device_stage.new_cache()
        eos = self.lm.eos_token_ids if stop_at_eos else set()

        t0 = time.perf_counter()
        token = self.link.step(self.device_stage(ids, cache=cache), 0)
        prefill_s = time.perf_counter() - t0
        tokens, decode_s = [token], []
        if on_token is not None:
            on_token(tokens)
        pos = ids.shape[1]
        while len(tokens) < max_new_tokens and token not in eos:
            t0 = time.perf_counter()
            hidden = self.device_stage(torch.tensor([[token]]), cache=cache)
            token = self.link.step(hidden, pos)
            decode_s.append(time.perf_counter() - t0)
            tokens.append(token)
            if on_token is not None:
                on_token(tokens)
            pos += 1
        return GenerationResult(self.lm.decode(tokens), tokens, ids.shape[1], self.link.bytes_up,
                                self.link.bytes_down, prefill_s, decode_s)


def in_process_generator(lm: LoadedModel, cuts, codec=None, sampling: SamplingConfig | None = None,
                         ) -> SplitGenerator:
    """Cut `lm` and wire the halves together in this process (the quickest way to try a split)."""
    from splitinfer.models import split_model

    stages = split_model(lm, cuts)
    link = InProcessLink(lambda: ServerSession(stages[1:], sampling), codec=codec)
    return SplitGenerator(lm, stages[0], link)


@torch.no_grad()
def unsplit_generate(lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy tokens from the unsplit model via transformers' own `generate` (the reference)."""
    eos = sorted(lm.eos_token_ids) or None
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            do_sample=False, eos_token_id=eos, pad_token_id=eos[0] if eos else 0)
    return out[0, ids.shape[1]:].tolist()
