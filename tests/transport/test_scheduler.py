"""The scheduler without sockets: validated steps in, replies out. Batched decode steps and prefill chunks
batched across sessions answer what steps run alone answer; the token budget bounds a turn; retries come
from the reply cache; a failed batch is rerun step by step; verify steps and quotas go through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from splitinfer.generation import SamplingConfig
from splitinfer.models import split_model
from splitinfer.split.server import ServerHalf
from splitinfer.transport import protocol as p
from splitinfer.transport import scheduler as scheduler_mod
from splitinfer.transport.scheduler import Scheduler, StepJob
from splitinfer.transport.sessions import SessionLimits, SessionTable


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def make(lm, limits=None, **kw):
    engine = ServerHalf(split_model(lm, [2])[1:], last_position_only=True)
    table = SessionTable(limits or SessionLimits(), engine.kv_bytes_per_token())
    return Scheduler(engine, table, **kw)


def open_session(sch, sampling=None, client=None):
    return sch.sessions.open(lambda: sch.engine.session(sampling), None, None, None, client)


def job(s, seq, start, hidden, rid=None, **kw):
    return StepJob(route=(s.sid, seq), rid=rid if rid is not None else seq, session=s, seq=seq, start=start,
                   hidden=hidden, want_logprob=True, **kw)


def run_all(sch, jobs):
    """Submit, then advance turns until no prefill is left: {route: reply}."""
    out = dict(sch.submit(jobs))
    while sch.busy:
        sch.new_turn()
        out.update(sch.advance())
    return out


def steps(lm, lengths, decode_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, n, lm.hidden_size, generator=g)]
            + [torch.randn(1, 1, lm.hidden_size, generator=g) for _ in range(decode_steps)] for n in lengths]


def drive(sch, xs, sampling):
    """Every session's step k submitted together; returns [[(tok, lp), ...] per session]."""
    sessions = [open_session(sch, sm) for sm in sampling]
    pos = [0] * len(sessions)
    out = [[] for _ in sessions]
    for k in range(len(xs[0])):
        jobs = [job(s, k + 1, pos[i], xs[i][k]) for i, s in enumerate(sessions)]
        reps = run_all(sch, jobs)
        for i, j in enumerate(jobs):
            rep = reps[j.route]
            assert rep["ok"], rep
            out[i].append((rep["tok"], rep["lp"]))
            pos[i] += j.tokens
    return out


def test_batched_decode_and_cross_session_prefill_answer_like_single_steps(tiny_lm):
    xs = steps(tiny_lm, (3, 5, 8, 13, 2, 7), 4)
    sampling = [SamplingConfig(), SamplingConfig(0.8, 40, 1.0, 7)] * 3
    ref = drive(make(tiny_lm, batching=False), xs, sampling)
    sch = make(tiny_lm, step_token_budget=64)
    got = drive(sch, xs, sampling)
    for r, g in zip(ref, got, strict=True):
        assert [t for t, _ in g] == [t for t, _ in r]
        assert max(abs(a - b) for (_, a), (_, b) in zip(g, r, strict=True)) < 1e-4
    st = sch.stats
    assert st.max_batch_seen == 6 and st.batched_steps == 6 * 4
    assert st.batched_prefills >= 2  # prompts of different sessions shared a forward
    assert st.forwards < 6 + 4  # one forward per decode turn, and fewer than one per prompt


def test_the_token_budget_chunks_a_long_prompt_and_decode_steps_go_first(tiny_lm):
    sch = make(tiny_lm, step_token_budget=8)
    g = torch.Generator().manual_seed(1)
    a, b = open_session(sch), open_session(sch)
    assert run_all(sch, [job(a, 1, 0, torch.randn(1, 3, tiny_lm.hidden_size, generator=g))])
    long_ = torch.randn(1, 40, tiny_lm.hidden_size, generator=g)
    assert sch.submit([job(b, 1, 0, long_)]) == [] and sch.busy
    sch.new_turn()
    assert sch.advance() == [] and b.position == 8  # one budget's worth, no reply yet
    decode = job(a, 2, 3, torch.randn(1, 1, tiny_lm.hidden_size, generator=g))
    sch.new_turn()
    assert dict(sch.submit([decode]))[decode.route]["ok"]  # not stuck behind the prompt
    assert sch.advance() == [] and b.position == 8 + 7  # the decode token came out of the budget
    reps = []
    while sch.busy:
        sch.new_turn()
        reps += sch.advance()
    assert len(reps) == 1 and reps[0][1]["pos"] == 40 and sch.stats.prefill_chunks >= 5
    ref = make(tiny_lm, batching=False)
    rb = open_session(ref)
    assert dict(ref.submit([job(rb, 1, 0, long_)]))[(rb.sid, 1)]["tok"] == reps[0][1]["tok"]


def test_admission_retries_and_a_failed_batch_rerun_alone(tiny_lm, monkeypatch):
    sch = make(tiny_lm)
    xs = steps(tiny_lm, (4, 4, 4), 1, seed=2)
    sessions = [open_session(sch) for _ in xs]
    run_all(sch, [job(s, 1, 0, x[0]) for s, x in zip(sessions, xs, strict=True)])
    ref = make(tiny_lm, batching=False)
    ref_sessions = [open_session(ref) for _ in xs]
    run_all(ref, [job(s, 1, 0, x[0]) for s, x in zip(ref_sessions, xs, strict=True)])
    want = [dict(ref.submit([job(s, 2, 4, x[1])]))[(s.sid, 2)]["tok"] for s, x in zip(ref_sessions, xs, strict=True)]
    monkeypatch.setattr(sch.engine, "forward_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    jobs = [job(sessions[0], 2, 4, xs[0][1]), job(sessions[1], 2, 3, xs[1][1]), job(sessions[2], 2, 4, xs[2][1]),
            job(sessions[0], 2, 4, xs[0][1], rid=99)]
    reps = [r for _, r in sch.submit(jobs)]
    assert reps[0]["tok"] == want[0] and reps[2]["tok"] == want[2]  # rerun one by one after the batch failed
    assert reps[1]["code"] == p.BAD_POSITION
    assert reps[3]["rid"] == 99 and reps[3]["tok"] == want[0]  # the retry, answered from the reply cache
    assert sch.stats.errors[p.BAD_POSITION] == 1


def test_closed_session_mid_prefill_and_quota_and_verify(tiny_lm):
    sch = make(tiny_lm, SessionLimits(client_tokens_per_s=1.0, client_burst_tokens=20), step_token_budget=4)
    g = torch.Generator().manual_seed(3)
    s = open_session(sch, client="alice")
    assert sch.submit([job(s, 1, 0, torch.randn(1, 12, tiny_lm.hidden_size, generator=g))]) == []
    sch.advance()
    sch.sessions.close(s.sid)
    (_, rep), = sch.advance()
    assert rep["code"] == p.UNKNOWN_SESSION and not sch.busy
    t = open_session(sch, client="alice")  # 12 of alice's 20 tokens are spent
    (_, rep), = sch.submit([job(t, 1, 0, torch.randn(1, 9, tiny_lm.hidden_size, generator=g))])
    assert rep["code"] == p.QUOTA
    u = open_session(sch, client="bob")
    run_all(sch, [job(u, 1, 0, torch.randn(1, 5, tiny_lm.hidden_size, generator=g))])
    (_, rep), = sch.submit([job(u, 2, 5, torch.randn(1, 3, tiny_lm.hidden_size, generator=g), draft=[1, 2])])
    assert rep["ok"] and rep["toks"] and rep["pos"] == 5 + len(rep["toks"]) and sch.stats.verify_steps == 1


def test_the_scheduler_module_has_no_sockets_and_the_server_no_model_work():
    """scheduler.py imports no ZeroMQ; server.py calls no forward, sampling or batch function itself."""
    def imports(path):
        tree = ast.parse(Path(path).read_text())
        return {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
               {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    assert not any("zmq" in m for m in imports(scheduler_mod.__file__))
    import subprocess
    import sys

    code = "import sys, splitinfer.transport.scheduler; print('zmq' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip() == "False"  # nor anything it imports
    server_src = Path(scheduler_mod.__file__).with_name("server.py").read_text()
    for name in ("sample_token", "forward_batch", ".forward(", "argmax", "log_softmax", "multinomial"):
        assert name not in server_src, name
