"""Continuous batching on the server: batched decode steps answer what an unbatched server answers (greedy
tokens, log-probs within 1e-4, seeded samples regardless of the batch), a bad session fails alone,
chunked prefill lets decode steps through, a retried prefill in progress is computed once."""

from __future__ import annotations

import argparse

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.transport import protocol as p
from splitinfer.transport import server as server_mod
from splitinfer.transport.payload import RawCodec
from splitinfer.transport.server_config import ServerConfig, add_server_arguments, config_from_args

from .conftest import open_fields

LENGTHS = (1, 3, 5, 8, 13, 2)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):  # many small forwards: two OpenMP threads on a busy 2-core box crawl
    yield


SAMPLING = [{"temperature": 0.0}, {"temperature": 0.8, "top_k": 40, "seed": 7}] * 3


def frames(h):
    return RawCodec().encode(h).to_frames()


def inputs(lm, lengths=LENGTHS, decode_steps=5, seed=0):
    """Per session: its prefill hidden states and `decode_steps` one-position steps (teacher-forced)."""
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, n, lm.hidden_size, generator=g)]
            + [torch.randn(1, 1, lm.hidden_size, generator=g) for _ in range(decode_steps)] for n in lengths]


def drive(client, lm, sessions_inputs, sampling):
    """Open one session per input, then send step k of every session at once and collect the replies:
    {session index: [(tok, lp), ...]}."""
    sids = [client.call("open", **open_fields(lm, sampling=s))["sid"] for s in sampling]
    pos = [0] * len(sids)
    out = {i: [] for i in range(len(sids))}
    for k in range(len(sessions_inputs[0])):
        rids = {}
        for i, sid in enumerate(sids):
            h = sessions_inputs[i][k]
            client.rid += 1
            rids[client.rid] = i
            client.send([p.pack(p.request("step", client.rid, sid=sid, seq=k + 1, start=pos[i], logprob=True)),
                         *frames(h)])
            pos[i] += h.shape[1]
        for _ in rids:
            rep = client.recv()
            assert rep is not None and rep["ok"], rep
            out[rids[rep["rid"]]].append((rep["tok"], rep["lp"]))
    for sid in sids:
        client.call("close", sid=sid)
    return out


def test_batched_server_answers_like_an_unbatched_one(make_server, raw_client, tiny_lm):
    xs = inputs(tiny_lm)
    plain = make_server(tiny_lm, [2], batching=False)
    batched = make_server(tiny_lm, [2], batch_wait_ms=30)  # collect every session's step into one batch
    ref = drive(raw_client(plain.url), tiny_lm, xs, SAMPLING)
    got = drive(raw_client(batched.url), tiny_lm, xs, SAMPLING)
    for i in ref:
        assert [t for t, _ in got[i]] == [t for t, _ in ref[i]], f"session {i}"
        assert max(abs(a - b) for (_, a), (_, b) in zip(got[i], ref[i], strict=True)) < 1e-4
    info = batched.info()["batching"]
    assert info["on"] and info["max_batch_seen"] == len(LENGTHS) and info["batched_steps"] >= 5 * len(LENGTHS)
    assert plain.info()["batching"]["batched_steps"] == 0
    # a seeded sampled session draws the same tokens alone as in a batch of six
    alone = drive(raw_client(batched.url), tiny_lm, xs[1:2], SAMPLING[1:2])
    assert [t for t, _ in alone[0]] == [t for t, _ in got[1]]
    assert max(abs(a - b) for (_, a), (_, b) in zip(alone[0], got[1], strict=True)) < 1e-4


def test_max_batch_caps_a_forward(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2], batch_wait_ms=30, max_batch=2)
    drive(raw_client(srv.url), tiny_lm, inputs(tiny_lm, (2, 3, 4, 5, 6), 2), [{"temperature": 0.0}] * 5)
    assert srv.info()["batching"]["max_batch_seen"] == 2


def test_a_bad_session_in_a_batch_fails_alone(make_server, raw_client, tiny_lm, monkeypatch):
    srv = make_server(tiny_lm, [2], batch_wait_ms=30)
    ref_srv = make_server(tiny_lm, [2], batching=False)
    c, r = raw_client(srv.url), raw_client(ref_srv.url)
    xs = inputs(tiny_lm, (4, 4, 4, 4), 1)
    sids, ref_sids = [], []
    for x in xs:  # the same prefill on both servers
        for cl, lst in ((c, sids), (r, ref_sids)):
            sid = cl.call("open", **open_fields(tiny_lm))["sid"]
            assert cl.call("step", frames(x[0]), sid=sid, seq=1, start=0)["ok"]
            lst.append(sid)
    want = [r.call("step", frames(xs[i][1]), sid=ref_sids[i], seq=2, start=4)["tok"] for i in range(4)]
    c.call("close", sid=sids[3])
    steps = [dict(sid=sids[0], seq=2, start=4),  # fine
             dict(sid=sids[1], seq=2, start=3),  # wrong position
             dict(sid=sids[2], seq=2, start=4),  # fine
             dict(sid=sids[3], seq=2, start=4),  # closed
             dict(sid=sids[0], seq=2, start=4)]  # a retry of the first step in the same batch
    for i, f in enumerate(steps):
        c.send([p.pack(p.request("step", 100 + i, **f)), *frames(xs[min(i, 3) if i < 4 else 0][1])])
    reps = {rep["rid"]: rep for rep in (c.recv() for _ in steps)}
    assert reps[100]["ok"] and reps[100]["tok"] == want[0]
    assert reps[101]["code"] == p.BAD_POSITION
    assert reps[102]["ok"] and reps[102]["tok"] == want[2]
    assert reps[103]["code"] == p.UNKNOWN_SESSION
    assert reps[104]["ok"] and reps[104]["tok"] == want[0]  # answered from the reply cache
    # a batched forward that fails is rerun step by step: each session still gets its own answer
    monkeypatch.setattr(srv.engine, "forward_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    x = torch.randn(1, 1, tiny_lm.hidden_size)
    for i, sid in enumerate((sids[0], sids[2], sids[1])):
        start = 5 if i < 2 else 4
        seq = 3 if i < 2 else 2
        c.send([p.pack(p.request("step", 200 + i, sid=sid, seq=seq, start=start)), *frames(x)])
    reps = {rep["rid"]: rep for rep in (c.recv() for _ in range(3))}
    assert all(reps[200 + i]["ok"] for i in range(3)), reps
    assert reps[200]["pos"] == 6 and reps[202]["pos"] == 5


def test_chunked_prefill_lets_decode_steps_through(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2], step_token_budget=4)
    ref_srv = make_server(tiny_lm, [2], batching=False)
    c, r = raw_client(srv.url), raw_client(ref_srv.url)
    g = torch.Generator().manual_seed(5)
    short = torch.randn(1, 3, tiny_lm.hidden_size, generator=g)
    long_ = torch.randn(1, 96, tiny_lm.hidden_size, generator=g)
    a, b = (c.call("open", **open_fields(tiny_lm))["sid"] for _ in range(2))
    assert c.call("step", frames(short), sid=a, seq=1, start=0)["ok"]
    c.send([p.pack(p.request("step", 50, sid=b, seq=1, start=0, logprob=True)), *frames(long_)])
    c.send([p.pack(p.request("step", 50, sid=b, seq=1, start=0, logprob=True)), *frames(long_)])  # a resend
    decode = torch.randn(1, 1, tiny_lm.hidden_size, generator=g)
    c.send([p.pack(p.request("step", 51, sid=a, seq=2, start=3)), *frames(decode)])
    first, second = c.recv(), c.recv()
    assert first["rid"] == 51 and first["ok"], "the decode step waited for the whole prefill"
    assert second["rid"] == 50 and second["ok"] and second["pos"] == 96, second
    assert c.recv(timeout_ms=300) is None  # the resent prefill was computed and answered once
    info = srv.info()
    assert info["batching"]["prefill_chunks"] >= 96 // 4 and info["steps"] == 3
    rb = r.call("open", **open_fields(tiny_lm))["sid"]
    ref = r.call("step", frames(long_), sid=rb, seq=1, start=0, logprob=True)
    assert ref["tok"] == second["tok"] and abs(ref["lp"] - second["lp"]) < 1e-4
    # a retry after it finished comes from the reply cache; a close mid-prefill ends it with an error
    assert c.call("step", frames(long_), sid=b, seq=1, start=0)["tok"] == second["tok"]
    c.send([p.pack(p.request("step", 60, sid=b, seq=2, start=96)), *frames(long_)])
    c.send([p.pack(p.request("close", 61, sid=b))])
    reps = {rep["rid"]: rep for rep in (c.recv(), c.recv())}
    assert reps[61]["ok"] and reps[60]["code"] == p.UNKNOWN_SESSION
    assert c.call("step", frames(decode), sid=a, seq=3, start=4)["ok"]  # the other session is unaffected


def test_batching_settings_are_checked_and_reach_the_server(tiny_lm):
    for bad in (dict(max_batch=0), dict(step_token_budget=0), dict(batch_wait_ms=-1), dict(max_batch=True)):
        with pytest.raises(ConfigError):
            server_mod.SplitServer(tiny_lm, [2], **bad)
    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--no-batching", "--max-batch", "8", "--batch-wait-ms", "2",
                                              "--step-token-budget", "64"]), ServerConfig())
    assert (cfg.batching, cfg.max_batch, cfg.batch_wait_ms, cfg.step_token_budget) == (False, 8, 2.0, 64)
    assert config_from_args(parser.parse_args([]), ServerConfig()).batching is True
    cfg.cut = 2
    srv = cfg.build(tiny_lm)
    assert srv.info()["batching"]["on"] is False and srv.info()["batching"]["max_batch"] == 8
