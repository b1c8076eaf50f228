"""Fair sharing: per-client quotas on sessions held and tokens per second, with the `quota` error code."""

from __future__ import annotations

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.transport.payload import RawCodec
from splitinfer.transport.protocol import ProtocolError
from splitinfer.transport.sessions import QUOTA, SessionLimits, SessionTable

from .conftest import open_fields


class Clock:
    def __init__(self) -> None:
        self.t = 64.0

    def __call__(self) -> float:
        return self.t


def _open(table, client):
    return table.open(lambda: _State(), None, None, None, client)


class _State:  # the bits of a ServerSession the table reads
    position = 0
    caches: list = []

    def cache_bytes(self) -> int:
        return 0


def test_limits_validated():
    for bad in (dict(max_sessions_per_client=-1), dict(client_tokens_per_s=-2.0), dict(client_burst_tokens=1.5),
                dict(max_sessions_per_client=True)):
        with pytest.raises(ConfigError):
            SessionLimits(**bad)
    assert SessionLimits(max_step_tokens=64, client_tokens_per_s=10).burst_tokens == 64
    assert SessionLimits(max_step_tokens=64, client_tokens_per_s=100).burst_tokens == 200


def test_sessions_per_client_quota_counts_each_client_alone():
    table = SessionTable(SessionLimits(max_sessions=10, max_sessions_per_client=2), 8, Clock())
    a = [_open(table, "alice") for _ in range(2)]
    with pytest.raises(ProtocolError) as e:
        _open(table, "alice")
    assert e.value.code == QUOTA and "quota of 2 sessions" in e.value.message
    assert _open(table, "bob") and _open(table, "bob")  # another client is not affected
    table.close(a[0].sid)
    assert _open(table, "alice").client == "alice"


def test_token_rate_quota_is_a_bucket_that_refills():
    clock = Clock()
    table = SessionTable(SessionLimits(max_step_tokens=16, client_tokens_per_s=8.0, client_burst_tokens=20),
                         8, clock)
    s, other = _open(table, "alice"), _open(table, "bob")
    table.reserve(s, 0, 16)
    table.reserve(s, 16, 4)
    with pytest.raises(ProtocolError) as e:
        table.reserve(s, 20, 1)
    assert e.value.code == QUOTA and "retry this step in 0.12 s" in e.value.message
    table.reserve(other, 0, 16)  # bob has his own bucket
    clock.t += 0.125
    table.reserve(s, 20, 1)
    clock.t += 100  # the bucket fills up to its size, no further
    table.reserve(s, 21, 20)
    with pytest.raises(ProtocolError):
        table.reserve(s, 41, 1)


def test_server_refuses_over_quota_with_a_clear_code(make_server, raw_client, tiny_lm):
    limits = SessionLimits(max_sessions_per_client=2, max_step_tokens=8, client_tokens_per_s=1.0,
                           client_burst_tokens=10)
    srv = make_server(tiny_lm, [2], limits=limits)
    c = raw_client(srv.url)
    sids = [c.call("open", **open_fields(tiny_lm))["sid"] for _ in range(2)]
    rep = c.call("open", **open_fields(tiny_lm))  # curve off: the client is its IP address
    assert rep["code"] == QUOTA and "127.0.0.1" in rep["msg"]
    frames = RawCodec().encode(torch.randn(1, 8, tiny_lm.hidden_size)).to_frames()
    assert c.call("step", frames, sid=sids[0], seq=1, start=0)["ok"]
    rep = c.call("step", frames, sid=sids[1], seq=1, start=0)
    assert rep["code"] == QUOTA and "tokens/s" in rep["msg"]
    assert c.call("step", frames, sid=sids[0], seq=1, start=0)["ok"]  # a retry from the cache costs nothing
    assert srv.info()["errors"][QUOTA] == 2
