"""Speculative steps over ZeroMQ: same greedy text as per-token split, exactly-once retries, replay.

Needs the server side of the verify step (`SplitServer` calls `session.state.verify(hidden, start, draft,
draft_p)` for a step with `draft` and replies toks/tok/pos; it sets `splitinfer.transport.server
.SUPPORTS_DRAFT = True`). Until then these tests are skipped.
"""

from __future__ import annotations

import pytest
import torch

from splitinfer.split import MeteredLink, in_process_generator
from splitinfer.split.drafters import NGramDrafter
from splitinfer.split.speculative import SpeculativeGenerator
from splitinfer.transport import SplitServer, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport import server as server_module

from .lossy_proxy import LossyProxy

needs_server = pytest.mark.skipif(not getattr(server_module, "SUPPORTS_DRAFT", False),
                                  reason="SplitServer does not run verify steps yet (SUPPORTS_DRAFT)")

IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12, 13]])
N = 24


class Oracle:
    """Drafts the per-token split text (always right) except every third token (wrong): both paths run."""

    name, uses_hidden = "oracle", False

    def __init__(self, ref):
        self.ref = ref

    def start(self, prompt_ids):
        self.n = len(prompt_ids)

    def propose(self, context, gamma):
        done = len(context) - self.n
        return [t if (done + i) % 3 else (t + 1) % 256 for i, t in enumerate(self.ref[done:done + gamma])]


@pytest.fixture(scope="module")
def expected(tiny_lm):
    return in_process_generator(tiny_lm, [2]).generate(IDS, N, stop_at_eos=False).token_ids


def spec_remote(lm, url, drafter, hook=None, **kw):
    gen = remote_generator(lm, [2], url, codec="none", **kw)
    link = MeteredLink(gen.link, on_step=(lambda r: hook(r.index + 1)) if hook else None)
    return SpeculativeGenerator(lm, gen.device, link, drafter, gamma=3), gen.link


@needs_server
def test_remote_speculative_text_equals_per_token_split(tiny_lm, make_server, expected):
    srv = make_server(tiny_lm)
    for drafter in (NGramDrafter(), Oracle(expected)):
        gen, link = spec_remote(tiny_lm, srv.url, drafter)
        try:
            res = gen.generate(IDS, N, stop_at_eos=False)
        finally:
            link.close()
        assert res.token_ids == expected
        assert res.rounds < N - 1 and res.drafted > 0
        assert link.traffic.decode_msgs == res.rounds


@needs_server
def test_server_restarted_mid_generation_replays_verify_steps(tiny_lm, expected):
    servers = [SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()]
    port = servers[0].port

    def restart(n):
        if n == 4:
            servers[-1].stop()
            servers.append(SplitServer(tiny_lm, [2], port=port, poll_ms=20).start())

    gen, link = spec_remote(tiny_lm, servers[0].url, Oracle(expected), restart, timeout_s=2)
    try:
        res = gen.generate(IDS, N, stop_at_eos=False)
    finally:
        link.close()
        for s in servers:
            s.stop()
    assert res.token_ids == expected and link.replays == 1 and link.drafts


@needs_server
def test_lost_verify_reply_is_resent_from_cache_not_reapplied(tiny_lm, expected):
    """A proxy on the wire loses the reply to the 3rd step (a verify step) once."""
    srv = SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()
    proxy = LossyProxy(srv.url, drop_seq=3)
    gen, link = spec_remote(tiny_lm, proxy.url, Oracle(expected), timeout_s=1.0)
    try:
        res = gen.generate(IDS, N, stop_at_eos=False)
    finally:
        link.close()
        proxy.close()
        srv.stop()
    assert res.token_ids == expected and proxy.dropped.is_set()
    assert link.resends >= 1 and link.replays == 0  # >= 1: a loaded server may see a spurious resend too


@needs_server
def test_bad_drafts_are_refused_and_change_nothing(tiny_lm, make_server):
    srv = make_server(tiny_lm)
    gen = remote_generator(tiny_lm, [2], srv.url, codec="none")
    link = gen.link
    try:
        gen.generate(IDS, 2, stop_at_eos=False)  # open a session and prefill
        hidden = gen.device.encode(gen.device.hidden(torch.tensor([[1, 2]])))
        pos = IDS.shape[1] + 1
        with pytest.raises(Exception, match="draft|hidden states"):
            link.verify(hidden, pos, [1, 2, 3])  # 3 drafts need 4 positions
    finally:
        link.close()


def test_protocol_checks_draft_fields():
    assert p.get_draft({}) == (None, None)
    assert p.get_draft({"draft": [1, 2], "draft_p": [1, 0.5]}, 10) == ([1, 2], [1.0, 0.5])
    for env in ({"draft": []}, {"draft": [1] * 17}, {"draft": [10]}, {"draft": ["a"]}, {"draft_p": [1.0]},
                {"draft": [1], "draft_p": [0.0]}, {"draft": [1], "draft_p": [1.0, 1.0]}):
        with pytest.raises(p.ProtocolError):
            p.get_draft(env, 10)
    with pytest.raises(p.ProtocolError, match="4 hidden states"):
        p.check_draft_positions(2, [1, 2, 3])
    p.check_draft_positions(4, [1, 2, 3])


def test_reply_tokens_must_continue_the_draft():
    assert p.reply_tokens({"tok": 7}, 10, None) == [7]
    assert p.reply_tokens({"toks": [1, 2, 9], "tok": 9, "pos": 13}, 10, [1, 2, 3], 50) == [1, 2, 9]
    for rep in ({"toks": [2, 9], "tok": 9, "pos": 12}, {"toks": [1, 9], "tok": 9, "pos": 13},
                {"toks": [1, 9], "tok": 1, "pos": 12}, {"toks": [], "tok": 1, "pos": 10},
                {"toks": [1, 2, 3, 4, 5], "tok": 5, "pos": 15}, {"toks": [1, 99], "tok": 99, "pos": 12}):
        with pytest.raises(ValueError):
            p.reply_tokens(rep, 10, [1, 2, 3], 50)
