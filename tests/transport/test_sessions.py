"""Session limits (count, tokens, memory, idle time), exactly-once steps, and the open nonce."""

from __future__ import annotations

import pytest
import torch

from splitinfer.transport import RemoteError, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.payload import RawCodec
from splitinfer.transport.sessions import SessionLimits

from .conftest import open_fields


def frames(lm, n):
    return RawCodec().encode(torch.randn(1, n, lm.hidden_size)).to_frames()


def test_limits_validated():
    with pytest.raises(ValueError, match="max_sessions"):
        SessionLimits(max_sessions=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        SessionLimits(idle_timeout_s=-1)


def test_session_limit(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2], limits=SessionLimits(max_sessions=2))
    c = raw_client(srv.url)
    sids = [c.call("open", **open_fields(tiny_lm))["sid"] for _ in range(2)]
    rep = c.call("open", **open_fields(tiny_lm))
    assert rep["code"] == p.SESSION_LIMIT and "2 sessions" in rep["msg"]
    assert c.call("close", sid=sids[0])["ok"]
    assert c.call("open", **open_fields(tiny_lm))["ok"]
    assert srv.session_count == 2


def test_token_limit(make_server, tiny_lm):
    srv = make_server(tiny_lm, [2], limits=SessionLimits(max_tokens_per_session=8))
    gen = remote_generator(tiny_lm, [2], srv.url, codec="none")
    try:
        assert len(gen.generate(torch.tensor([[5, 6, 7, 8, 9]]), 4, stop_at_eos=False).token_ids) == 4
        with pytest.raises(RemoteError) as e:
            gen.generate(torch.tensor([[5, 6, 7, 8, 9]]), 6, stop_at_eos=False)
        assert e.value.code == p.TOKEN_LIMIT and "limit of 8" in str(e.value)
    finally:
        gen.link.close()


def test_memory_limit(make_server, raw_client, tiny_lm):
    from splitinfer.models import split_model

    per_token = sum(s.kv_bytes_per_token() for s in split_model(tiny_lm, [2])[1:])
    srv = make_server(tiny_lm, [2], limits=SessionLimits(max_kv_bytes=10 * per_token))
    c = raw_client(srv.url)
    a = c.call("open", **open_fields(tiny_lm))["sid"]
    b = c.call("open", **open_fields(tiny_lm))["sid"]
    assert c.call("step", frames(tiny_lm, 6), sid=a, seq=1, start=0)["ok"]
    assert srv.session_kv_bytes == 6 * per_token
    rep = c.call("step", frames(tiny_lm, 6), sid=b, seq=1, start=0)
    assert rep["code"] == p.MEMORY_LIMIT
    assert c.call("step", frames(tiny_lm, 4), sid=b, seq=1, start=0)["ok"]  # fits exactly
    c.call("close", sid=a)
    assert srv.session_kv_bytes == 4 * per_token


def test_idle_sessions_are_evicted_and_free_memory(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2], limits=SessionLimits(idle_timeout_s=0.3))
    c = raw_client(srv.url)
    sid = c.call("open", **open_fields(tiny_lm))["sid"]
    assert c.call("step", frames(tiny_lm, 5), sid=sid, seq=1, start=0)["ok"]
    assert srv.session_count == 1 and srv.session_kv_bytes > 0
    assert srv.wait_for_sessions(0, timeout=10)  # the eviction sweep runs once a second
    assert srv.session_count == 0 and srv.session_kv_bytes == 0
    rep = c.call("step", frames(tiny_lm, 1), sid=sid, seq=2, start=5)
    assert rep["code"] == p.UNKNOWN_SESSION and "evicted" in rep["msg"]
    assert c.call("info")["sessions"] == 0


def test_retried_step_is_not_applied_twice(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2])
    c = raw_client(srv.url)
    sid = c.call("open", **open_fields(tiny_lm))["sid"]
    f = frames(tiny_lm, 3)
    first = c.call("step", f, sid=sid, seq=1, start=0)
    again = c.call("step", f, sid=sid, seq=1, start=0)
    assert first["ok"] and {k: again[k] for k in ("tok", "pos", "seq")} == {k: first[k] for k in ("tok", "pos", "seq")}
    assert srv.stats.steps == 1 and first["pos"] == 3
    assert c.call("step", frames(tiny_lm, 1), sid=sid, seq=2, start=3)["pos"] == 4


def test_resent_open_gets_the_same_session(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2])
    c = raw_client(srv.url)
    a = c.call("open", **open_fields(tiny_lm, nonce="abc"))
    b = c.call("open", **open_fields(tiny_lm, nonce="abc"))
    assert a["sid"] == b["sid"] and srv.session_count == 1


def test_sessions_never_mix(make_server, raw_client, tiny_lm):
    """Interleaved steps of two sessions give each the tokens it gets alone."""
    from splitinfer.generation import ServerSession
    from splitinfer.models import split_model

    srv = make_server(tiny_lm, [2])
    c = raw_client(srv.url)
    xs = [torch.randn(1, 4, tiny_lm.hidden_size, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    sids = [c.call("open", **open_fields(tiny_lm))["sid"] for _ in range(2)]
    got = [[], []]
    for t in range(4):
        for i in (0, 1):
            rep = c.call("step", RawCodec().encode(xs[i][:, t:t + 1]).to_frames(), sid=sids[i], seq=t + 1, start=t)
            got[i].append(rep["tok"])
    stages = split_model(tiny_lm, [2])[1:]
    for i in (0, 1):
        alone = ServerSession(stages)
        assert got[i] == [alone.step(xs[i][:, t:t + 1], t) for t in range(4)]


def test_long_prefill_goes_in_chunks(make_server, tiny_lm):
    from splitinfer.generation import unsplit_generate

    srv = make_server(tiny_lm, [2], limits=SessionLimits(max_step_tokens=4))
    gen = remote_generator(tiny_lm, [2], srv.url, codec="none")
    ids = torch.arange(10, 21)[None]  # 11 tokens -> chunks of 4, 4, 3
    try:
        res = gen.generate(ids, 5, stop_at_eos=False)
    finally:
        gen.link.close()
    assert res.token_ids == unsplit_generate(tiny_lm, ids, 5)
    assert srv.stats.steps == 3 + 4
