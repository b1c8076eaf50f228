"""Scoring steps (`score` on a step, `RemoteLink.score`): the served half returns the log-probabilities of
given tokens, equal to the in-process server half's, and refuses malformed scoring requests."""

from __future__ import annotations

import pytest
import torch

from splitinfer.split import split_pair
from splitinfer.split.scoring import target_logprobs
from splitinfer.transport import protocol as p
from splitinfer.transport.client import RemoteLink
from splitinfer.transport.payload import RawCodec

from .conftest import open_fields


def _link(srv, lm, cuts=(2,)) -> RemoteLink:
    return RemoteLink(srv.url, fingerprint=lm.fingerprint, cuts=list(cuts), hidden_size=lm.hidden_size,
                      codec="none", vocab_size=lm.vocab_size, timeout_s=5.0)


def test_served_scores_equal_the_in_process_server_half(make_server, tiny_lm):
    srv = make_server(tiny_lm, [2])
    device, server = split_pair(tiny_lm, [2])
    ids = torch.randint(0, tiny_lm.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    hidden = device.hidden(ids)
    targets = ids[0, 8:].tolist()  # the tokens after positions 7..10: the last 4 positions of [0, 11)
    want_lp, want_greedy = target_logprobs(server.logits(hidden[:, :11])[0, 7:11], targets)
    with _link(srv, tiny_lm) as link:
        # two chunks, as a long input goes: the first scores its last position, the second the other three
        lp1, g1 = link.score(device.encode(hidden[:, :8]), 0, targets[:1])
        lp2, g2 = link.score(device.encode(hidden[:, 8:11]), 8, targets[1:])
        assert link.traffic.bytes_up > 11 * tiny_lm.hidden_size * 4  # fp32 up, counted by the link
    assert lp1 + lp2 == pytest.approx(want_lp, abs=1e-5)
    assert g1 + g2 == want_greedy
    assert all(x <= 0 for x in lp1 + lp2)


def test_scoring_requests_are_checked(make_server, raw_client, tiny_lm):
    srv = make_server(tiny_lm, [2])
    c = raw_client(srv.url)
    sid = c.call("open", **open_fields(tiny_lm))["sid"]
    frames = RawCodec().encode(torch.randn(1, 2, tiny_lm.hidden_size)).to_frames()
    for bad, code in (([1, 2, 3], p.BAD_TENSOR), (["a"], p.BAD_FIELD), ([tiny_lm.vocab_size], p.BAD_FIELD),
                      ("12", p.BAD_FIELD)):
        rep = c.call("step", frames, sid=sid, seq=1, start=0, score=bad)
        assert rep["ok"] is False and rep["code"] == code, (bad, rep)
    rep = c.call("step", frames, sid=sid, seq=1, start=0, score=[1], draft=[1])
    assert rep["ok"] is False and rep["code"] == p.BAD_FIELD
    rep = c.call("step", frames, sid=sid, seq=1, start=0, score=[5, 7])  # the session was left untouched
    assert rep["ok"] and len(rep["lps"]) == 2 and len(rep["greedy"]) == 2 and rep["pos"] == 2, rep
    with pytest.raises(ValueError, match="lps"):
        p.reply_scores({"lps": [0.5], "greedy": [True]}, 1)
