"""The server half of the split path: its stages, the codec it decodes, sampling, KV sessions.

A `ServerSession` is one generation's state on the server (the stages' KV caches and the position);
sampling is seeded by (seed, position), so a replayed step draws exactly the same token.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import Stage
from splitinfer.split.errors import StepError
from splitinfer.split.placement import Placement, place_stages
from splitinfer.split.scoring import target_logprobs
from splitinfer.split.wire import resolve_codec


@dataclass(frozen=True)
class SamplingConfig:
    """How the server picks the next token; temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, int | float) and 0.0 <= self.temperature <= 100.0):
            raise ConfigError(f"temperature={self.temperature!r}: must be a number in [0, 100] (0 = greedy)")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0):
            raise ConfigError(f"top_k={self.top_k!r}: must be an int >= 0 (0 = off)")
        if not (isinstance(self.top_p, int | float) and 0.0 < self.top_p <= 1.0):
            raise ConfigError(f"top_p={self.top_p!r}: must be a number in (0, 1] (1 = off)")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**62):
            raise ConfigError(f"seed={self.seed!r}: must be an int in [0, 2**62)")

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
    gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + position) % 2**63)
    return int(torch.multinomial(sampling_probs(logits, cfg), 1, generator=gen))


MAX_DRAFT = 16  # drafted tokens one verify step may carry (the protocol's limit too)


def sampling_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution `sample_token` draws from (temperature, top-k, top-p applied), float32 (V,)."""
    scores = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(scores, min(cfg.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cum = torch.softmax(sorted_scores, -1).cumsum(-1)
        drop = cum - torch.softmax(sorted_scores, -1) >= cfg.top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    return torch.softmax(scores, -1)


def accept_draft(logits: torch.Tensor, start: int, draft: Sequence[int], cfg: SamplingConfig,
                 draft_p: Sequence[float] | None = None) -> list[int]:
    """The tokens a verify step emits: the accepted prefix of `draft` plus one token of the server's own.

    `logits` (γ+1, V) are the server's for positions start..start+γ (the last accepted token, then the
    drafts); the token they pick sits at position start+i+1. Greedy: a draft is accepted while it is the
    argmax, so the output is exactly what per-token decoding gives. Sampling: the standard speculative
    sampling rule (Leviathan et al. 2023, Chen et al. 2023): accept d with probability min(1, p(d)/q(d)),
    on rejection draw from norm(max(0, p - q)); the output distribution is p's. `draft_p[i]` = q(d_i)
    for a drafter whose proposal puts that mass on d_i and the rest nowhere the rule needs: it is exact
    for deterministic drafters (q a point mass, draft_p 1, the default), which every drafter here is.
    Random draws are seeded by (seed, position), so a replayed step emits exactly the same tokens.
    """
    out: list[int] = []
    for i, d in enumerate(draft):
        pos = start + i + 1
        if cfg.greedy:
            t = sample_token(logits[i], cfg, pos)
            out.append(t)
            if t != d:
                return out
            continue
        p = sampling_probs(logits[i], cfg)
        q = 1.0 if draft_p is None else float(draft_p[i])
        gen = torch.Generator().manual_seed((cfg.seed * 1_000_003 + pos) % 2**63 ^ 0x5BEC)
        u = float(torch.rand((), generator=gen))
        pd = float(p[d])
        if u < min(1.0, pd / q):
            out.append(int(d))
            continue
        residual = p.clone()
        residual[d] = max(0.0, pd - q)
        if float(residual.sum()) <= 0.0:  # p is a point mass on d: rejection has probability 0
            out.append(int(d))
            continue
        out.append(int(torch.multinomial(residual / residual.sum(), 1, generator=gen)))
        return out
    out.append(sample_token(logits[len(draft)], cfg, start + len(draft) + 1))
    return out


def cpu_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits as float32 on the CPU: what sampling reads, whatever device and dtype computed them, so the
    seeded CPU stream draws the same token on every device (and a replay anywhere is identical)."""
    return logits.detach().to("cpu", torch.float32)


class LastPositionHead(torch.nn.Module):
    """The LM head applied to the last position only: a step samples from that one, and a prefill of T
    tokens would otherwise pay T x vocab x hidden for logits nobody reads (transformers' `generate`
    skips them too, via logits_to_keep)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h[:, -1:])


def head_on_last_position_only(stage) -> None:
    """Wrap `stage`'s LM head in `LastPositionHead` (only this Stage object changes)."""
    head = getattr(stage, "lm_head", None)
    if isinstance(head, torch.nn.Module) and not isinstance(head, LastPositionHead):
        stage.lm_head = LastPositionHead(head)


@contextmanager
def _all_position_logits(stage):
    """Let the last stage return logits for every position while a verify step runs (a server may wrap
    its head to compute the last position only; such a wrapper keeps the real head as `.head`)."""
    head = getattr(stage, "lm_head", None)
    inner = getattr(head, "head", None)
    if not isinstance(inner, torch.nn.Module):
        yield
        return
    stage.lm_head = inner
    try:
        yield
    finally:
        stage.lm_head = head


@torch.no_grad()
def run_session_stages(session, hidden: torch.Tensor, start: int) -> torch.Tensor:
    """A session's step through its stages: check it against the session (shape, position, token limit),
    run positions start..start+T-1 on the session's device and dtype through its KV caches, and move the
    session on. `session`: a `ServerSession`, or a middle slice's `MiddleSession` (stages, caches,
    placement, position, max_tokens, hidden_size)."""
    if hidden.dim() != 3 or hidden.shape[0] != 1 or hidden.shape[-1] != session.hidden_size:
        raise StepError(f"hidden states must have shape (1, T, {session.hidden_size}), got {tuple(hidden.shape)}")
    if start != session.position:
        raise StepError(f"step starts at position {start} but the session is at {session.position}; "
                        "resend from the session's position or replay the session")
    n = hidden.shape[1]
    if n == 0:
        raise StepError("a step must carry at least one position")
    if session.max_tokens is not None and start + n > session.max_tokens:
        raise StepError(f"session would hold {start + n} tokens, over its limit of {session.max_tokens}")
    pos = torch.arange(start, start + n, device=session.placement.device)[None]
    h = hidden.to(session.placement.device, session.placement.dtype)
    for stage, cache in zip(session.stages, session.caches, strict=True):
        h = stage(h, position_ids=pos, cache=cache)
    session.position += n
    return h


class ServerSession:
    """The server side of one generation: the remaining stages, their KV caches and the sampler."""

    def __init__(self, stages: Sequence[Stage], sampling: SamplingConfig | None = None,
                 max_tokens: int | None = None, placement: Placement | None = None) -> None:
        if not stages or not stages[-1].is_last:
            raise ConfigError("a server session needs the chain's stages up to and including the last one")
        self.stages = list(stages)
        self.sampling = sampling or SamplingConfig()
        self.max_tokens = max_tokens
        self.placement = placement or Placement()  # where the stages are (ServerHalf placed them)
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
        return run_session_stages(self, hidden, start)

    def forward_scored(self, hidden: torch.Tensor, start: int,
                       targets: Sequence[int]) -> tuple[torch.Tensor, tuple[list[float], list[bool]]]:
        """`forward` with logits at every position (teacher forcing): the last position's logits (V,) to
        sample from, and the log-probabilities of `targets` under the last len(targets) positions with
        whether each is the argmax (`split.scoring.target_logprobs`, the in-process evaluator's computation)."""
        with _all_position_logits(self.stages[-1]):
            logits = self.forward(hidden, start)[0]
        k = len(targets)
        return logits[-1], target_logprobs(logits[len(logits) - k:], targets)

    def step(self, hidden: torch.Tensor, start: int) -> int:
        """Run one step and return the sampled next token id."""
        logits = self.forward(hidden, start)
        return self.sample(logits[0, -1])[0]

    def sample(self, logits: torch.Tensor, want_logprob: bool = False) -> tuple[int, float | None]:
        """The next token from the last position's logits (V,) (CPU float32, seeded by the session's
        position), and its log-probability when asked. A failure rolls nothing back: callers do."""
        logits = cpu_logits(logits)
        token = sample_token(logits, self.sampling, self.position)
        lp = float(torch.log_softmax(logits, -1)[token]) if want_logprob else None
        return token, lp

    def verify(self, hidden: torch.Tensor, start: int, draft: Sequence[int],
               draft_p: Sequence[float] | None = None) -> list[int]:
        """A speculative step: `hidden` covers positions start..start+γ ([last token x, d1..dγ] after the
        device stage); returns the k accepted drafts plus the server's next token (k+1 ids, see
        `accept_draft`). Afterwards the KV caches hold positions up to start+k (`position` == start+k+1):
        everything past the first rejected draft is rolled back. A bad step changes nothing."""
        draft = list(draft)
        if not 0 < len(draft) <= MAX_DRAFT:
            raise StepError(f"a verify step carries 1..{MAX_DRAFT} drafted tokens, got {len(draft)}")
        vocab = self.stages[-1].vocab_size
        if any(type(d) is not int or not 0 <= d < vocab for d in draft):
            raise StepError(f"drafted tokens must be ids in [0, {vocab}), got {draft[:MAX_DRAFT]}")
        if draft_p is not None:
            draft_p = [float(q) for q in draft_p]
            if len(draft_p) != len(draft) or not all(0.0 < q <= 1.0 for q in draft_p):
                raise StepError(f"draft_p must give one probability in (0, 1] per drafted token, got {draft_p}")
        if hidden.dim() == 3 and hidden.shape[1] != len(draft) + 1:
            raise StepError(f"a verify step with {len(draft)} drafted tokens carries {len(draft) + 1} positions "
                            f"(the last accepted token, then the drafts), got {hidden.shape[1]}")
        with _all_position_logits(self.stages[-1]):
            logits = self.forward(hidden, start)
        try:
            tokens = accept_draft(cpu_logits(logits[0]), start, draft, self.sampling, draft_p)
        except Exception:
            self.rollback(start)
            raise
        self.rollback(start + len(tokens))
        return tokens

    def rollback(self, position: int) -> None:
        """Forget everything from `position` on (for a step that must be redone)."""
        for c in self.caches:
            if c is not None:
                c.crop(position)
        self.position = min(self.position, position)


class ServerHalf:
    """The server's part of the split path, the one engine behind every link (in-process, simulated,
    ZeroMQ): decode a codec message -> place it on the half's device and dtype -> forward one step or a
    batch (`forward_batch`) -> sample on CPU logits (`ServerSession.sample`).

    `decode(enc)` turns a received codec message into the float32 CPU hidden state; `session()` starts
    one generation's KV state; `logits(hidden)` runs the stages without a cache (teacher-forced
    evaluation). `placement` puts the stages on a device and dtype (copies, see `split.placement`);
    `last_position_only` makes steps compute the LM head for the last position only (a server's steps
    sample from that one; `logits` and verify steps still get every position).
    """

    def __init__(self, stages: Sequence[Stage], codec=None, sampling: SamplingConfig | None = None,
                 max_tokens: int | None = None, placement: Placement | None = None,
                 last_position_only: bool = False) -> None:
        if not stages or not stages[-1].is_last:
            raise ConfigError("a server half needs the chain's stages up to and including the last one")
        self.placement = placement or Placement()
        self.stages = place_stages(stages, self.placement)
        if last_position_only:
            if self.stages[-1] is stages[-1]:  # not copied: wrap the head of a stage object of our own
                self.stages[-1] = copy.copy(stages[-1])
                self.stages[-1]._modules = dict(stages[-1]._modules)
            head_on_last_position_only(self.stages[-1])
        self.codec = resolve_codec(codec)
        self.sampling = sampling or SamplingConfig()
        self.max_tokens = max_tokens
        self.decode_s = 0.0  # seconds spent decoding payloads (codec cost on the server)

    @property
    def hidden_size(self) -> int:
        return self.stages[0].hidden_size

    @property
    def vocab_size(self) -> int:
        return self.stages[-1].vocab_size

    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token of a session adds, at the placement's dtype."""
        return sum(s.kv_bytes_per_token(self.placement.dtype.itemsize) for s in self.stages)

    def decode(self, enc, codec=None) -> torch.Tensor:
        """A codec message -> the hidden state it carries, float32 on the CPU with the shape in its header
        (`codec`: a session's own codec instance, else this half's). Placement happens in the forward."""
        t0 = time.perf_counter()
        h = (codec or self.codec).decode(enc)
        shape = enc.header.get("shape")
        if isinstance(h, torch.Tensor):
            h = h.to("cpu", torch.float32)
            if shape is not None and list(h.shape) != list(shape):
                h = h.reshape(shape)
        self.decode_s += time.perf_counter() - t0
        return h

    def session(self, sampling: SamplingConfig | None = None, max_tokens: int | None = None) -> ServerSession:
        return ServerSession(self.stages, sampling or self.sampling, max_tokens or self.max_tokens, self.placement)

    def forward_batch(self, sessions: Sequence[ServerSession], hiddens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One forward for the steps of several sessions (decode steps or prefill chunks of any lengths);
        returns each step's last-position logits, CPU float32 (V,). See `splitinfer.split.batch`."""
        from splitinfer.split.batch import forward_batch

        return list(cpu_logits(forward_batch(sessions, list(hiddens))))

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor, *, position_ids=None, attention_mask=None) -> torch.Tensor:
        """Run the stages on a whole sequence with no KV cache (teacher forcing); (B, T, V), float32 CPU
        when the half is placed elsewhere."""
        dev, dt = self.placement.device, self.placement.dtype
        h = hidden.to(dev, dt) if hidden.is_floating_point() else hidden.to(dev)
        with _all_position_logits(self.stages[-1]):
            for stage in self.stages:
                h = stage(h, position_ids=None if position_ids is None else position_ids.to(dev),
                          attention_mask=None if attention_mask is None else attention_mask.to(dev))
        return h if self.placement.is_default else cpu_logits(h)
