"""A relay hop: a server that runs a middle slice [A, B) and forwards to the next server, which serves
from B (`splitinfer serve --cut A,B --next tcp://HOST:PORT`).

    device [0,A) ──hop 1──▶ edge: SplitServer(RelayEngine [A,B)) ──hop 2──▶ cloud: SplitServer [B,L) + head
    token ◀──────────────────────── token ◀─────────────────────────────── sample

Each hop is an ordinary client-server pair: its own codec (the edge's `--codec`, by default the one
the device opened with), its own sessions (one on the next server per session here), retries and
replay (the edge's link to the next hop is a `ReplicaLink`, so `--next` may list replicas too). A
restarted edge loses its sessions; the device replays into it, and the edge opens fresh sessions on
the next server and replays through them. Every step reply carries `hops`: the bytes and seconds of
this step on each hop after the first, so the device reports bytes and times per hop.

The chain is checked when the edge starts, before its weights load: the next server must serve from
B and hold the same model (`check_next`). The edge then advertises the chain's cuts [A, *next cuts].
"""

from __future__ import annotations

import time
from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.split.middle import MiddleHalf, MiddleSession
from splitinfer.split.server import SamplingConfig, StepError
from splitinfer.transport.client import TransportError
from splitinfer.transport.payload import build_session_codec
from splitinfer.transport.replicas import ReplicaLink, parse_urls


def ask_info(urls: str | list[str], timeout_s: float = 5.0, retries: int = 2) -> dict:
    """The `info` of the server at `urls` (replicas: the first that answers); ConfigError if none does."""
    link = ReplicaLink(urls, start=0, fingerprint="", cuts=[0], hidden_size=1, timeout_s=timeout_s, retries=retries)
    try:
        return link.info()
    except TransportError as e:
        raise ConfigError(f"--next {','.join(link.urls)}: no server answered ({e}); start the next hop first "
                          "(the cloud, then the edge, then the device)") from None
    finally:
        link.close()


def check_next(cuts: list[int], info: dict, num_layers: int, next_urls: str) -> list[int]:
    """The chain's cuts [A, *next cuts] when the next server at `next_urls` (its `info`) serves from B."""
    if len(cuts) != 2:
        raise ConfigError(f"--next needs --cut A,B (this hop runs layers [A, B) and the next serves from B), "
                          f"got --cut {','.join(map(str, cuts))}")
    nxt = info.get("cuts")
    if not isinstance(nxt, list) or not nxt or any(type(c) is not int for c in nxt):
        raise ConfigError(f"--next {next_urls}: its info has no cuts ({str(nxt)[:60]}); is it a splitinfer server?")
    if info.get("layers") not in (None, num_layers):
        raise ConfigError(f"--next {next_urls} serves a model of {info.get('layers')} layers, this hop's has "
                          f"{num_layers}; serve the same model on every hop")
    if nxt[0] != cuts[1]:
        raise ConfigError(f"--next {next_urls} serves layers from {nxt[0]} (its cuts {nxt}), but this hop ends at "
                          f"layer {cuts[1]} (--cut {cuts[0]},{cuts[1]}); start the next server with --cut {cuts[1]} "
                          f"or this one with --cut {cuts[0]},{nxt[0]}")
    if info.get("topology", "chain") != "chain":
        raise ConfigError(f"--next {next_urls} runs a U-shape (it returns hidden states); a relay forwards to a "
                          "server that returns tokens: start it without --u-shape")
    return [cuts[0], *nxt]


class RelayEngine(MiddleHalf):
    """The engine of a relay hop: the slice [A, B), then the next hop through one link per session."""

    topology = "chain"

    def __init__(self, lm, cuts: list[int], next_urls: str, next_info: dict, *, codec: Any = None,
                 placement=None, timeout_s: float = 5.0, retries: int = 3) -> None:
        from splitinfer.models import split_model

        self.cuts = check_next(cuts, next_info, lm.num_layers, next_urls)
        if next_info.get("fingerprint") not in (None, lm.fingerprint):
            raise ConfigError(f"--next {next_urls} holds model {next_info.get('model')!r} (fingerprint "
                              f"{next_info.get('fingerprint')}), this hop {lm.name!r} ({lm.fingerprint}); load the "
                              "same model (same weights) on every hop")
        super().__init__([split_model(lm, cuts)[1]], _forward_to_next, placement=placement)
        self.lm = lm
        self.next_urls = parse_urls(next_urls)
        self.next_cuts = self.cuts[1:]
        self.hop_codec = None if codec is None else build_session_codec(codec)  # checked now, built per session
        self.hop_codec_spec = codec
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.totals = {"bytes_up": 0, "bytes_down": 0, "seconds": 0.0, "steps": 0, "replays": 0, "failovers": 0}

    def info(self) -> dict:
        return {"relay": {"layers": list(self.layers), "next": self.next_urls, "next_cuts": self.next_cuts,
                          **self.totals}}

    def open_session(self, env: dict, spec: dict):
        """How to make this session: its link to the next hop with the hop's codec (the device's unless
        this server was given its own)."""
        hop_spec = self.hop_codec_spec if self.hop_codec_spec is not None else spec
        build_session_codec(hop_spec)  # a bad spec is the opener's error, before the session exists

        def make(sampling: SamplingConfig) -> MiddleSession:
            s = self.session(sampling)
            link = ReplicaLink(self.next_urls, start=0, fingerprint=self.lm.fingerprint, cuts=self.next_cuts,
                               hidden_size=self.lm.hidden_size, codec=build_session_codec(hop_spec),
                               sampling=sampling, vocab_size=self.lm.vocab_size, timeout_s=self.timeout_s,
                               retries=self.retries)
            s.extra.update(link=link, engine=self, verify=_verify_at_next, rollback=_rollback_next)
            s._on_close = link.close
            return s

        return make


def _encode(link: ReplicaLink, h):
    codec = link.codec
    return codec.encode_step(h) if hasattr(codec, "encode_step") else codec.encode(h)


def _hop_call(session: MiddleSession, call):
    """Run `call(link)` against the next hop; returns (its result, this hop's figures + the next ones')."""
    link: ReplicaLink = session.extra["link"]
    engine: RelayEngine = session.extra["engine"]
    up, down, replays, failovers = link.bytes_up, link.bytes_down, link.replays, link.failovers
    later = [dict(h) for h in link.hops]
    t0 = time.perf_counter()
    try:
        out = call(link)
    except TransportError as e:  # the next hop failed for good: this step fails, the session rolls back
        raise StepError(f"next hop {link.url}: {e}") from None
    hop = {"up": link.bytes_up - up, "down": link.bytes_down - down, "s": time.perf_counter() - t0}
    for key, value in (("bytes_up", hop["up"]), ("bytes_down", hop["down"]), ("seconds", hop["s"]), ("steps", 1),
                       ("replays", link.replays - replays), ("failovers", link.failovers - failovers)):
        engine.totals[key] += value
    deeper = [{"up": h["bytes_up"] - (later[i]["bytes_up"] if i < len(later) else 0),
               "down": h["bytes_down"] - (later[i]["bytes_down"] if i < len(later) else 0),
               "s": h["seconds"] - (later[i]["seconds"] if i < len(later) else 0.0)} for i, h in enumerate(link.hops)]
    return out, [hop, *deeper]


def _forward_to_next(session: MiddleSession, want_logprob: bool) -> dict:
    """A relay step's reply: the step's outputs go to the next hop (chunk by chunk, as they came), and its
    token (and log-probability, when asked) comes back."""
    link: ReplicaLink = session.extra["link"]
    link.want_logprob = want_logprob

    def send(link: ReplicaLink) -> int:
        tok = -1
        for start, h in session.pending:
            tok = link.step(_encode(link, h), start)
        return tok

    tok, hops = _hop_call(session, send)
    fields: dict[str, Any] = {"tok": tok, "hops": hops}
    if want_logprob and link.last_logprob is not None:
        fields["lp"] = link.last_logprob
    return fields


def _verify_at_next(session: MiddleSession, draft, draft_p) -> list[int]:
    start, h = session.take_pending()
    toks, _ = _hop_call(session, lambda link: link.verify(_encode(link, h), start, draft, draft_p))
    return toks


def _rollback_next(session: MiddleSession, position: int) -> None:
    """This hop forgot positions >= `position`: the next hop's session must too. Its kept steps from
    there on are dropped and it is rebuilt from the rest on the next step (open + replay)."""
    link: ReplicaLink = session.extra["link"]
    keep = [i for i, (start, _, _) in enumerate(link.history) if start < position]
    if len(keep) == len(link.history):
        return
    link.history = link.history[:len(keep)]
    link.drafts = {i: d for i, d in link.drafts.items() if i < len(keep)}
    link.sid = None


__all__ = ["RelayEngine", "ask_info", "check_next"]
