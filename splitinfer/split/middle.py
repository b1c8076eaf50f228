"""A server half that holds a middle slice of the model: layers [a, b) and no head.

Two topologies use it: a relay hop (its output goes on to the next server, `transport.relay`) and a
U-shaped split (its output goes back to the device, which runs the last layers and the head,
`split.ushape`). The scheduler drives a `MiddleSession` as it drives a `ServerSession`: `forward`
runs a step (or one chunk of a prefill) through the slice, then `reply_fields` says what the step's
reply carries instead of a sampled token (the next hop's token, or the encoded hidden state). The
hidden states of a chunked prefill are kept until its last chunk and leave together.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from splitinfer.errors import ConfigError
from splitinfer.models import Stage
from splitinfer.split.placement import Placement, place_stages
from splitinfer.split.server import SamplingConfig, ServerHalf, StepError, run_session_stages
from splitinfer.split.wire import resolve_codec

# what a step's output becomes: (session, want_logprob) -> the reply's fields
Finisher = Callable[["MiddleSession", bool], dict[str, Any]]


class MiddleSession:
    """One generation's state on a middle slice: its KV caches, its position, and the hidden states of
    the step in progress (`pending`), handed to `finish` when the step's last chunk has run."""

    def __init__(self, stages: Sequence[Stage], placement: Placement, sampling: SamplingConfig,
                 max_tokens: int | None, finish: Finisher, on_close: Callable[[], None] | None = None) -> None:
        self.stages = list(stages)
        self.placement = placement
        self.sampling = sampling
        self.max_tokens = max_tokens
        self.caches = [s.new_cache() for s in self.stages]
        self.position = 0
        self.pending: list[tuple[int, torch.Tensor]] = []  # (start, output) of the chunks of this step
        self._finish = finish
        self._on_close = on_close
        self.extra: dict[str, Any] = {}  # what the finisher keeps per session (the next hop's link)

    @property
    def hidden_size(self) -> int:
        return self.stages[0].hidden_size

    def cache_bytes(self) -> int:
        return sum(c.nbytes() for c in self.caches if c is not None)

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor, start: int) -> torch.Tensor:
        """Run the slice on positions start..start+T-1; returns its output (1, T, H) and keeps it."""
        h = run_session_stages(self, hidden, start)
        if self.pending and self.pending[-1][0] + self.pending[-1][1].shape[1] != start:
            self.pending = []  # a new step: what an abandoned one kept is stale
        out = h.to("cpu", torch.float32)
        self.pending.append((start, out))
        return out

    def reply_fields(self, want_logprob: bool = False) -> dict[str, Any]:
        """The step's reply (its chunks' outputs leave now); a failure leaves `pending` for the rollback."""
        fields = self._finish(self, want_logprob)
        self.pending = []
        return fields

    def take_pending(self) -> tuple[int, torch.Tensor]:
        """(start, output of every position of the step in progress)."""
        if not self.pending:
            raise StepError("no step in progress: forward a step before finishing it")
        return self.pending[0][0], torch.cat([h for _, h in self.pending], dim=1)

    def verify(self, hidden: torch.Tensor, start: int, draft, draft_p=None) -> list[int]:
        verify = self.extra.get("verify")
        if verify is None:
            raise StepError("this server returns hidden states, not tokens: it cannot verify drafted tokens; "
                            "run the device without --speculate")
        self.forward(hidden, start)
        try:
            toks = verify(self, draft, draft_p)
        finally:
            self.pending = []
        self.rollback(start + len(toks))
        return toks

    def rollback(self, position: int) -> None:
        """Forget everything from `position` on (a step that failed or drafts that were rejected)."""
        for c in self.caches:
            if c is not None:
                c.crop(position)
        self.position = min(self.position, position)
        self.pending = [(s, h) for s, h in self.pending if s < position]
        hook = self.extra.get("rollback")
        if hook is not None:
            hook(self, position)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


class MiddleHalf:
    """The engine of a middle slice (layers [a, b), no head), duck-typed to what the scheduler and the
    socket server use of `ServerHalf`: `decode`, `session`, `kv_bytes_per_token`, `placement`.

    `finish` turns a step's output into its reply (see `Finisher`); `on_session(session)` equips a new
    session (e.g. with its link to the next hop). Steps run one at a time (`batches` is False): a relay
    waits on the next hop per session, and a U-shape's reply is a tensor per session."""

    batches = False

    def __init__(self, stages: Sequence[Stage], finish: Finisher, *, codec=None,
                 placement: Placement | None = None, max_tokens: int | None = None,
                 on_session: Callable[[MiddleSession], None] | None = None) -> None:
        if not stages or stages[0].is_first or stages[-1].is_last:
            raise ConfigError("a middle slice holds neither the embeddings nor the head: cut the model at two "
                              "points a < b and give it the stage [a, b)")
        self.placement = placement or Placement()
        self.stages = place_stages(stages, self.placement)
        self.codec = resolve_codec(codec)
        self.finish = finish
        self.max_tokens = max_tokens
        self.on_session = on_session
        self.decode_s = 0.0

    @property
    def hidden_size(self) -> int:
        return self.stages[0].hidden_size

    @property
    def layers(self) -> tuple[int, int]:
        return self.stages[0].start_layer, self.stages[-1].end_layer

    def kv_bytes_per_token(self) -> int:
        return sum(s.kv_bytes_per_token(self.placement.dtype.itemsize) for s in self.stages)

    def refuse_step(self, *, score=None, want_logprob: bool = False) -> str | None:
        """Why this slice cannot run a step asking for these (None = it can): the socket server answers
        `bad_field` with it before the step runs. A scoring step needs the head's logits at every position,
        which no middle slice has: score against a single-cut server."""
        if score is not None:
            return (f"score: this server runs the middle slice [{self.layers[0]}, {self.layers[1]}) of a relay or "
                    "U-shape and has no head to score with; score against a single-cut server "
                    "(splitinfer serve --cut K) or drop `score` from the step")
        return None

    def decode(self, enc, codec=None) -> torch.Tensor:
        return ServerHalf.decode(self, enc, codec)  # the same decode as every server half

    def session(self, sampling: SamplingConfig | None = None, max_tokens: int | None = None) -> MiddleSession:
        s = MiddleSession(self.stages, self.placement, sampling or SamplingConfig(), max_tokens or self.max_tokens,
                          self.finish)
        if self.on_session is not None:
            self.on_session(s)
        return s

    def forward_batch(self, sessions, hiddens):  # pragma: no cover - batching is off for middle slices
        raise StepError("a middle slice runs steps one at a time")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _relay_in_process(session: MiddleSession, want_logprob: bool) -> dict[str, Any]:
    """An in-process relay step: each chunk's output, encoded with the hop's codec, goes through the
    session's `InProcessLink` to the next half; its token comes back."""
    link = session.extra["link"]
    codec = link.server.codec
    tok = -1
    for start, h in session.pending:
        tok = link.step(codec.encode_step(h) if hasattr(codec, "encode_step") else codec.encode(h), start)
    return {"tok": tok}


class _ChainSession(MiddleSession):
    def step(self, hidden: torch.Tensor, start: int) -> int:
        """Forward and reply in one go (what an `InProcessLink` asks of a session)."""
        self.forward(hidden, start)
        return self.reply_fields()["tok"]


class ChainHop(MiddleHalf):
    """A relay hop in one process: its slice, then an `InProcessLink` to the next half per session
    (the next half decodes with its own codec: the hop's)."""

    def __init__(self, stage: Stage, codec, next_half) -> None:
        super().__init__([stage], _relay_in_process, codec=codec)
        self.next_half = next_half

    def session(self, sampling: SamplingConfig | None = None, max_tokens: int | None = None) -> MiddleSession:
        from splitinfer.split.link import InProcessLink

        s = _ChainSession(self.stages, self.placement, sampling or SamplingConfig(), max_tokens or self.max_tokens,
                          self.finish)
        s.extra["link"] = InProcessLink(self.next_half)
        return s


def in_process_chain(lm, cuts: Sequence[int], codecs: Sequence[Any], sampling: SamplingConfig | None = None):
    """A relay chain in one process with a codec per hop: device [0, c0) -codecs[0]-> [c0, c1) -codecs[1]->
    ... -> [ck, L) + head. Returns (DeviceHalf, the link to the first hop, `hop_links`): `hop_links()` lists
    the current generation's links, hop 1 first, each counting its own traffic. The served chain
    (`splitinfer serve --next`) gives the same tokens with the same codecs."""
    from splitinfer.models import split_model
    from splitinfer.split.device import DeviceHalf
    from splitinfer.split.link import InProcessLink

    stages = split_model(lm, list(cuts))
    if len(codecs) != len(cuts):
        raise ConfigError(f"a chain with cuts {list(cuts)} has {len(cuts)} hops: give one codec per hop, "
                          f"got {len(codecs)}")
    nxt: Any = ServerHalf(stages[-1:], codec=codecs[-1], sampling=sampling)
    for stage, codec in zip(reversed(stages[1:-1]), reversed(codecs[:-1]), strict=True):
        nxt = ChainHop(stage, codec, nxt)
    first = InProcessLink(nxt)

    def hop_links() -> list:
        links, link = [first], first
        while "link" in getattr(link.session, "extra", {}):
            link = link.session.extra["link"]
            links.append(link)
        return links

    return DeviceHalf(stages[0], codec=codecs[0]), first, hop_links
