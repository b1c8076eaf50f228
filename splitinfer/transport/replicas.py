"""Server replicas by client-side failover: `--server tcp://A,tcp://B,tcp://C`.

Why on the client and not behind a broker (zguide's load-balancing broker): the client already keeps
what a session needs to move (its encoded frames, for replay), so a session survives any one server
with no state anywhere else; a broker would be one more process to keep alive (a single point of
failure unless it is replicated too) and one more hop on every decode step. Each client starts on a
random replica (spreading a fleet's load) and moves on when its replica stops answering: the Lazy
Pirate gives up on it (`timeout_s` x (retries + 1)), the link connects to the next replica, opens a
session and replays its history there (sampling is seeded by position, so the text is the same). A
replica that refuses for lack of room (`session_limit`, `memory_limit`) is moved past the same way.

`ReplicaLink` is a `RemoteLink` with a list of addresses; with one address it is a `RemoteLink` that
also sums the per-hop figures a relay chain reports in its replies (`hops`).
"""

from __future__ import annotations

import random
import time
from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.transport import protocol as p
from splitinfer.transport.client import RemoteError, RemoteLink, TransportTimeout

# a replica that answers these is full, not broken: the session moves to the next one too
SPILL_CODES = (p.SESSION_LIMIT, p.MEMORY_LIMIT)


def parse_urls(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """`tcp://A:1,tcp://B:2` (or a list) -> the addresses, each checked, no duplicates."""
    urls = [u.strip() for u in (text.split(",") if isinstance(text, str) else list(text))]
    for u in urls:
        if not u.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"server address {u!r} must look like tcp://HOST:PORT (a comma list for replicas: "
                              "tcp://127.0.0.1:5555,tcp://127.0.0.1:5556)")
    if len(set(urls)) != len(urls):
        raise ConfigError(f"server list {','.join(urls)} names a replica twice; give each address once")
    return urls


class ReplicaLink(RemoteLink):
    """A `RemoteLink` over one or more replicas of the same server, failing over by replay.

    `failovers` counts the moves; `failover_s` holds, per move, the seconds the step that hit the
    silent replica took until the new replica answered it (detection + reconnect + open + replay).
    `hops` sums what the servers after the first one reported in their step replies (a relay chain)."""

    def __init__(self, urls, *, start: int | None = None, max_failovers: int | None = None, **kwargs: Any) -> None:
        self.urls = parse_urls(urls)
        self.index = random.randrange(len(self.urls)) if start is None else start % len(self.urls)
        super().__init__(self.urls[self.index], **kwargs)
        self.max_failovers = 2 * len(self.urls) if max_failovers is None else int(max_failovers)
        self.failovers = 0
        self.failover_s: list[float] = []
        self.hops: list[dict[str, float]] = []

    # -- failover around every operation that talks to the server ---------------------------------
    def _with_failover(self, fn, *args):
        t0, moved = time.perf_counter(), 0
        while True:
            try:
                out = fn(*args)
            except (TransportTimeout, RemoteError) as e:
                full = isinstance(e, RemoteError) and e.code in SPILL_CODES
                if len(self.urls) == 1 or moved >= self.max_failovers or not (full or isinstance(e, TransportTimeout)):
                    raise
                self._fail_over()
                moved += 1
                continue
            if moved:
                self.failover_s.append(time.perf_counter() - t0)
            return out

    def _fail_over(self) -> None:
        """Give up on this replica: the next one in the list, a new session there (replayed on next use)."""
        self._disconnect()
        self.index = (self.index + 1) % len(self.urls)
        self.url = self.urls[self.index]
        self.sid = None
        self.failovers += 1

    def step(self, enc, start: int):
        return self._with_failover(super().step, enc, start)

    def verify(self, enc, start: int, draft, draft_p=None):
        return self._with_failover(super().verify, enc, start, draft, draft_p)

    def max_chunk_tokens(self, hidden) -> int:
        return self._with_failover(super().max_chunk_tokens, hidden)

    def info(self) -> dict:
        return self._with_failover(super().info)

    # -- per-hop figures of a relay chain ------------------------------------------------------
    def _step_request(self, frames, start, draft=None, draft_p=None, score=None) -> dict:
        rep = super()._step_request(frames, start, draft, draft_p, score)
        hops = rep.get("hops") if rep.get("ok") else None
        if isinstance(hops, list):
            for i, hop in enumerate(hops[:16]):
                if not isinstance(hop, dict):
                    continue
                while len(self.hops) <= i:
                    self.hops.append({"bytes_up": 0, "bytes_down": 0, "seconds": 0.0, "steps": 0})
                for key, field in (("bytes_up", "up"), ("bytes_down", "down"), ("seconds", "s")):
                    v = hop.get(field)
                    if type(v) in (int, float):
                        self.hops[i][key] += v
                self.hops[i]["steps"] += 1
        return rep

    def reset(self) -> None:
        super().reset()
        self.hops = []
