"""Server-side sessions: one KV cache per client generation, with limits and idle eviction.

A session is keyed by a random id the server makes (so a restarted server never mistakes an old id for
a new session). It remembers its last sequence number and last reply, so a retried step is answered
from that cache instead of being applied twice.

Fair sharing: per-client quotas (`max_sessions_per_client`, `client_tokens_per_s`) so one client cannot
hold every session or take the whole batch. A client is its CURVE public key when authentication is
on, else its IP address (so with curve off, every client on one host shares one quota). A refused
request gets the error code `quota` (QUOTA) and a message saying what to do.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.split import ServerSession
from splitinfer.transport.protocol import (
    FORBIDDEN,
    MEMORY_LIMIT,
    QUOTA,
    SESSION_LIMIT,
    TOKEN_LIMIT,
    UNKNOWN_SESSION,
    ProtocolError,
)

__all__ = ["QUOTA", "Session", "SessionLimits", "SessionTable"]  # QUOTA: a client over its quota


@dataclass(frozen=True)
class SessionLimits:
    """What one server holds at most; hitting a limit gives the client a clear error code."""

    max_sessions: int = 64
    max_tokens_per_session: int = 2048
    max_step_tokens: int = 2048  # longest prefill chunk one step may carry
    idle_timeout_s: float = 300.0  # a session unused this long is evicted (its KV cache freed)
    max_kv_bytes: int = 4 * 2**30  # all sessions' KV caches together
    max_sessions_per_client: int = 0  # sessions one client (CURVE key, else IP address) may hold; 0 = no quota
    client_tokens_per_s: float = 0.0  # tokens per second one client may have computed (bucket); 0 = no quota
    client_burst_tokens: int = 0  # the bucket's size; 0 = max(max_step_tokens, 2 s of client_tokens_per_s)

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_tokens_per_session", "max_step_tokens", "max_kv_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name}={v!r}: must be an int >= 1")
        if not isinstance(self.idle_timeout_s, int | float) or not self.idle_timeout_s > 0:
            raise ConfigError(f"idle_timeout_s={self.idle_timeout_s!r}: must be a number > 0 (seconds)")
        for name in ("max_sessions_per_client", "client_burst_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name}={v!r}: must be an int >= 0 (0 = no quota)")
        v = self.client_tokens_per_s
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0:
            raise ConfigError(f"client_tokens_per_s={v!r}: must be a number >= 0 (0 = no quota)")

    @property
    def burst_tokens(self) -> int:
        if self.client_burst_tokens:
            return self.client_burst_tokens
        return max(self.max_step_tokens, int(2 * self.client_tokens_per_s))


@dataclass
class Session:
    sid: str
    state: ServerSession
    codec: Any
    nonce: str | None
    owner: str | None  # the CURVE client key that opened it, when authentication is on
    last_used: float
    last_seq: int = 0
    last_start: int = -1
    last_reply: dict | None = None
    closed: bool = False
    inflight: Any = None  # the server's StepJob of a chunked prefill in progress (a retry joins it)
    stats: dict = field(default_factory=lambda: {"steps": 0, "tokens": 0})
    client: str | None = None  # who the quotas count it against (CURVE key, else IP address)

    @property
    def position(self) -> int:
        return self.state.position


class SessionTable:
    """All live sessions plus the accounting behind the limits (tokens, KV bytes, idle time)."""

    def __init__(self, limits: SessionLimits, kv_bytes_per_token: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.kv_bytes_per_token = kv_bytes_per_token
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._by_nonce: dict[str, str] = {}
        self.evicted = 0
        self._buckets: dict[str | None, list[float]] = {}  # client -> [tokens left, time of last refill]

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def kv_bytes(self) -> int:
        """KV-cache bytes the sessions hold (from token counts; equals the caches' real size in fp32)."""
        return sum(s.position for s in self._sessions.values()) * self.kv_bytes_per_token

    def kv_bytes_actual(self) -> int:
        return sum(s.state.cache_bytes() for s in self._sessions.values())

    def by_nonce(self, nonce: str | None) -> Session | None:
        sid = self._by_nonce.get(nonce) if nonce else None
        return self._sessions.get(sid) if sid else None

    def sessions_of(self, client: str | None) -> int:
        return sum(1 for s in self._sessions.values() if s.client == client)

    def open(self, make_state: Callable[[], ServerSession], codec: Any, nonce: str | None,
             owner: str | None, client: str | None = None) -> Session:
        quota = self.limits.max_sessions_per_client
        if quota and self.sessions_of(client) >= quota:
            self.evict_idle()
        if quota and self.sessions_of(client) >= quota:
            raise ProtocolError(QUOTA, f"this client ({client}) holds its quota of {quota} sessions on this "
                                       "server; close finished sessions or retry later")
        if len(self._sessions) >= self.limits.max_sessions:
            self.evict_idle()
        if len(self._sessions) >= self.limits.max_sessions:
            raise ProtocolError(SESSION_LIMIT, f"the server holds its limit of {self.limits.max_sessions} sessions; "
                                               "close finished sessions or retry later")
        sid = secrets.token_hex(12)
        s = Session(sid, make_state(), codec, nonce, owner, self.clock(), client=client)
        self._sessions[sid] = s
        if nonce:
            self._by_nonce[nonce] = sid
        return s

    def get(self, sid: str, owner: str | None) -> Session:
        s = self._sessions.get(sid)
        if s is None:
            raise ProtocolError(UNKNOWN_SESSION, f"no session {sid!r} (closed, evicted after "
                                                 f"{self.limits.idle_timeout_s:g} s idle, or the server restarted); "
                                                 "open a new session and replay")
        if s.owner != owner:
            raise ProtocolError(FORBIDDEN, f"session {sid!r} belongs to another client")
        s.last_used = self.clock()
        return s

    def reserve(self, s: Session, start: int, n: int, pending_tokens: int = 0) -> None:
        """Refuse a step that would break the token or memory limit (before computing anything);
        `pending_tokens` are those of other steps already admitted to the same batch."""
        lim = self.limits
        if start + n > lim.max_tokens_per_session:
            raise ProtocolError(TOKEN_LIMIT, f"session would hold {start + n} tokens, over the server's limit of "
                                             f"{lim.max_tokens_per_session} per session; start a new generation")
        need = self.kv_bytes() + (n + pending_tokens) * self.kv_bytes_per_token
        if need > lim.max_kv_bytes:
            raise ProtocolError(MEMORY_LIMIT, f"KV caches of all {len(self)} sessions would take {need} bytes, over "
                                              f"the server's limit of {lim.max_kv_bytes}; retry later")
        self.charge(s.client, n)

    def charge(self, client: str | None, n: int) -> None:
        """Take n tokens from the client's bucket (refilled at client_tokens_per_s), or refuse the step
        with QUOTA and the wait after which it would pass."""
        rate = self.limits.client_tokens_per_s
        if not rate:
            return
        size = self.limits.burst_tokens
        now = self.clock()
        left, t = self._buckets.get(client, (float(size), now))
        left = min(float(size), left + (now - t) * rate)
        if n > left:
            self._buckets[client] = [left, now]
            wait = (min(n, size) - left) / rate
            raise ProtocolError(QUOTA, f"this client ({client}) is over its quota of {rate:g} tokens/s on this "
                                       f"server; retry this step in {wait:.2f} s")
        self._buckets[client] = [left - n, now]

    def close(self, sid: str) -> bool:
        s = self._sessions.pop(sid, None)
        if s is None:
            return False
        s.closed = True
        if s.nonce and self._by_nonce.get(s.nonce) == sid:
            del self._by_nonce[s.nonce]
        s.state.caches = []  # free the KV tensors now, not when the last reference goes
        close = getattr(s.state, "close", None)  # a relay hop's session closes its link to the next hop
        if callable(close):
            close()
        return True

    def evict_idle(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        stale = [sid for sid, s in self._sessions.items() if now - s.last_used > self.limits.idle_timeout_s]
        for sid in stale:
            self.close(sid)
        self.evicted += len(stale)
        return len(stale)
