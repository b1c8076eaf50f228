"""The U-shaped split over ZeroMQ, and the one place `generate` picks its topology.

Server: `splitinfer serve --cut a,b --u-shape` serves a `UShapeEngine` (the middle slice [a, b) of
`split.ushape`), whose step replies carry the slice's hidden state as raw frames after the envelope,
encoded with the downlink codec the device named at open: no token ids, no logits.
Device: `splitinfer generate --cut a,b --u-shape --server URL` runs [0, a) and [b, L) + head here;
`RemoteHiddenLink` is the ZeroMQ link whose steps return those frames (retries, replay and replica
failover as every `ReplicaLink`), and `split.ushape.UShapeLink` turns them into tokens.
"""

from __future__ import annotations

from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.split.middle import MiddleHalf, MiddleSession
from splitinfer.split.server import SamplingConfig
from splitinfer.split.ushape import (
    UShapeLink,
    check_downlink_codec,
    check_ushape_cuts,
    ushape_device,
    ushape_finisher,
)
from splitinfer.split.wire import codec_spec
from splitinfer.transport import protocol as p
from splitinfer.transport.client import TransportError
from splitinfer.transport.payload import build_session_codec
from splitinfer.transport.replicas import ReplicaLink


class UShapeEngine(MiddleHalf):
    """A U-shape's server engine: layers [a, b), replying with the hidden state (downlink codec per session)."""

    topology = "u"

    def __init__(self, lm, cuts, *, placement=None) -> None:
        from splitinfer.models import split_model

        self.cuts = check_ushape_cuts(cuts, lm.num_layers)
        super().__init__([split_model(lm, self.cuts)[1]], ushape_finisher(None), placement=placement)

    def refuse_step(self, *, score=None, want_logprob: bool = False) -> str | None:
        if want_logprob:
            return ("logprob: a U-shape server returns hidden states and the device samples, so it has no "
                    "log-probabilities; drop `logprob` (the device's tail computes them)")
        return super().refuse_step(score=score, want_logprob=want_logprob)

    def open_session(self, env: dict, spec: dict):
        """Each session's downlink codec: `down_codec` from the open (the uplink's by default), stateless."""
        down_spec = env.get("down_codec", spec)
        codec = build_session_codec(down_spec)
        try:
            check_downlink_codec(codec)
        except ConfigError as e:
            raise p.ProtocolError(p.BAD_CODEC, str(e)) from None

        def make(sampling: SamplingConfig) -> MiddleSession:
            s = self.session(sampling)
            s.extra["down_codec"] = codec
            return s

        return make


class RemoteHiddenLink(ReplicaLink):
    """A link to a U-shape server: `step(enc, start)` returns the hidden state's frames (as bytes).

    Its history keeps a placeholder token per step, so a replay into a new session (after a restart or
    a failover) rebuilds the server's KV state without touching the device's: the device tail already
    holds those positions."""

    def __init__(self, urls, *, down_codec: Any = None, **kwargs: Any) -> None:
        super().__init__(urls, **kwargs)
        self.down_codec = check_downlink_codec(down_codec if down_codec is not None else codec_spec(self.codec))
        self.open_extra = {"topology": "u", "down_codec": codec_spec(self.down_codec)}
        self.last_down: list[bytes] = []

    def _tokens(self, rep: dict, start: int, draft) -> list[int]:
        frames = rep.get(p.FRAMES_KEY)
        if draft is not None or not frames or len(frames) > p.MAX_FRAMES:
            raise TransportError(f"the server at {self.url} sent no hidden state for position {start}; is it a "
                                 "U-shape server (`splitinfer serve --u-shape`)?")
        self.last_down = [bytes(f) for f in frames]
        return [0]

    def step(self, enc, start: int) -> list[bytes]:
        super().step(enc, start)
        return self.last_down


def remote_ushape_generator(lm, cuts, servers, codec=None, down_codec=None, sampling: SamplingConfig | None = None,
                            *, defense=None, placement=None, **link_kwargs: Any):
    """A U-shaped split whose middle runs at `servers` (one address, or a comma list of replicas)."""
    from splitinfer.split.generator import SplitGenerator
    from splitinfer.transport.payload import default_codec

    device, tail = ushape_device(lm, cuts, default_codec() if codec is None else codec, defense, sampling,
                                 placement)
    link = RemoteHiddenLink(servers, fingerprint=lm.fingerprint, cuts=check_ushape_cuts(cuts, lm.num_layers),
                            hidden_size=lm.hidden_size, codec=device.codec, sampling=sampling,
                            vocab_size=lm.vocab_size, down_codec=down_codec, **link_kwargs)
    return SplitGenerator(lm, device, UShapeLink(link, tail, link.down_codec, lm.hidden_size))


def connect(lm, cuts, servers: str, *, codec=None, down_codec=None, u_shape: bool = False, sampling=None,
            defense=None, placement=None, **kwargs: Any):
    """The generator `splitinfer generate --server ...` drives: a chain (one server, a relay's first hop,
    or replicas of either) or a U-shape, always through a `ReplicaLink` (per-hop figures, failover)."""
    if u_shape:
        return remote_ushape_generator(lm, cuts, servers, codec, down_codec, sampling, defense=defense,
                                       placement=placement, **kwargs)
    if down_codec is not None:
        raise ConfigError("--down-codec is the U-shape's downlink codec; add --u-shape (a chain returns tokens)")
    from splitinfer.transport.client import remote_generator

    return remote_generator(lm, cuts, servers, codec=codec, sampling=sampling, defense=defense,
                            placement=placement, link_cls=ReplicaLink, **kwargs)
