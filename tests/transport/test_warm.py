"""Rehearsal (splitinfer.transport.warm): the shadow model mirrors the real stages, a rehearsal runs and
can be interrupted without leaving state behind, never touches the real model, and a server and client
that rehearse while busy-polling give exactly the unsplit answers."""

from __future__ import annotations

import logging

import pytest
import torch

from splitinfer.generation import unsplit_generate
from splitinfer.models import split_model, tiny_model
from splitinfer.transport import payload as pl
from splitinfer.transport import remote_generator
from splitinfer.transport.server import _head_on_last_position_only
from splitinfer.transport.wait import WaitPolicy
from splitinfer.transport.warm import (
    PAST,
    Rehearsal,
    device_rehearsal,
    server_rehearsal,
    shadow_model,
    shadow_plan,
)

# The shadow compute is rehearsed single-threaded only (last test); run these tests that way.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("cuts, firsts, shadow_cuts", [
    ([15], [0, 15], [1]),
    ([1], [0, 1], [1]),
    ([0], [0], [0]),          # a device stage with no layers (embedding only) stays without layers
    ([30], [0], [1]),         # a server stage with no layers (norm + head only) likewise
    ([4, 20], [0, 4, 20], [1, 2]),
    ([0, 30], [0], [0, 1]),
])
def test_shadow_plan_keeps_the_stage_shapes(cuts, firsts, shadow_cuts):
    assert shadow_plan(cuts, 30) == (firsts, shadow_cuts)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gpt2"])
@pytest.mark.parametrize("cuts", [[2], [0], [4], [1, 3]])
def test_shadow_stages_line_up_with_the_real_ones(family, cuts):
    lm = tiny_model(family)
    shadow, shadow_cuts = shadow_model(lm, cuts)
    real, fake = split_model(lm, cuts), split_model(shadow, shadow_cuts)
    assert len(real) == len(fake)
    for r, f in zip(real, fake, strict=True):
        assert type(r) is type(f)
        assert (r.is_first, r.is_last, len(r.layers) > 0) == (f.is_first, f.is_last, len(f.layers) > 0)
        assert all(type(a) is type(b) for a, b in zip(r.layers, f.layers, strict=False))
    assert shadow.vocab_size == 64 and shadow.hidden_size < lm.hidden_size


def test_encoders_get_no_shadow(caplog):
    with caplog.at_level(logging.INFO, logger="splitinfer.transport.warm"):
        assert shadow_model(tiny_model("bert"), [2]) is None
    assert "no shadow" in caplog.text


@pytest.mark.parametrize("codec", ["none", "int8"])
def test_rehearsals_run_and_leave_no_state(tiny_lm, codec):
    c = pl.build_session_codec(codec)
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    srv = server_rehearsal(tiny_lm, [2], c, _head_on_last_position_only)
    dev = device_rehearsal(tiny_lm, [2], c)
    for r in (srv, dev):
        for _ in range(3):
            assert r() is True
        assert (r.runs, r.interrupted, r.failed) == (3, 0, None)
    # the shadow's caches are back where a rehearsal starts
    assert srv.state.position == PAST and all(c.seq_len == PAST for c in srv.state.caches)
    assert dev.state.seq_len == PAST
    # the real model is untouched: same weights, no hooks on its modules
    after = tiny_lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_pre_hooks for m in tiny_lm.model.modules())


def test_a_waiting_message_interrupts_a_rehearsal_at_once(tiny_lm):
    r = server_rehearsal(tiny_lm, [2], pl.RawCodec(), _head_on_last_position_only)
    calls = []

    def check():
        calls.append(1)
        return len(calls) >= 11  # "a message is waiting" from the 11th look on: at o_proj, after the KV update

    assert r(check) is False
    assert r.interrupted == 1 and r.runs == 0 and len(calls) == 11
    # interrupted mid-forward, the shadow session was rolled back: full rehearsals still run, many times
    assert r.state.position == PAST and all(c.seq_len == PAST for c in r.state.caches)
    for _ in range(5):
        assert r(lambda: False) is True
    assert r.runs == 5 and r.failed is None


def test_interrupted_device_rehearsal_keeps_its_cache_at_the_start(tiny_lm):
    r = device_rehearsal(tiny_lm, [2], pl.RawCodec())
    n = [0]

    def check():
        n[0] += 1
        return n[0] == 2

    assert r(check) is False
    assert r.state.seq_len == PAST
    assert r() is True and r.state.seq_len == PAST


def test_a_failing_rehearsal_switches_itself_off(caplog):
    boom = []

    def compute():
        boom.append(1)
        raise RuntimeError("shadow broke")

    r = Rehearsal(compute, [], pl.RawCodec(), 8, server=True)
    with caplog.at_level(logging.WARNING, logger="splitinfer.transport.warm"):
        assert r() is False
        assert r() is False
    assert r.failed == "RuntimeError: shadow broke" and len(boom) == 1
    assert "switched off" in caplog.text


def test_a_codec_that_cannot_encode_zeros_rehearses_the_compute_only(tiny_lm):
    class Picky(pl.RawCodec):
        name = "picky"

        def spec(self):
            return {"name": "picky"}

        def encode(self, x):
            raise ValueError("no zeros here")

    r = server_rehearsal(tiny_lm, [2], pl.RawCodec(), _head_on_last_position_only)
    r.use_codec(Picky())
    assert r() is True and r.failed is None


def test_rehearsing_server_and_client_give_unsplit_tokens_and_do_rehearse(make_server, tiny_lm):
    srv = make_server(tiny_lm, [2], wait=WaitPolicy(busy_poll_ms=200.0))
    gen = remote_generator(tiny_lm, [2], srv.url, codec="int8", timeout_s=5, wait={"busy_poll_ms": 200.0})
    ref = remote_generator(tiny_lm, [2], make_server(tiny_lm, [2]).url, codec="int8", timeout_s=5)
    try:
        ids = torch.tensor([[1, 5, 9, 13, 17]])
        out = gen.generate(ids, 12, stop_at_eos=False).token_ids
        assert out == ref.generate(ids, 12, stop_at_eos=False).token_ids
        raw = remote_generator(tiny_lm, [2], srv.url, codec="none", timeout_s=5, wait=srv.wait)
        try:
            assert raw.generate(ids, 12, stop_at_eos=False).token_ids == unsplit_generate(tiny_lm, ids, 12)[:12]
        finally:
            raw.link.close()
        srv_r, dev_r = srv._rehearsal, gen.link.rehearsal
        assert srv_r is not None and dev_r is not None
        assert srv_r.failed is None and dev_r.failed is None
        # each side waited for the other ~12 times: it rehearsed (or began to) while waiting
        assert srv_r.runs + srv_r.interrupted > 0 and dev_r.runs + dev_r.interrupted > 0
        info = gen.link.info()["rehearsal"]  # what the server reports over the wire
        assert info["failed"] is None and info["runs"] + info["interrupted"] > 0
    finally:
        gen.link.close()
        ref.link.close()


def test_the_shadow_compute_is_rehearsed_only_single_threaded():
    """With more intra-op threads its parallel regions would keep torch's workers spinning on the other
    side's cores; the wire path is still rehearsed."""
    calls = []
    r = Rehearsal(lambda: calls.append(1), [], pl.RawCodec(), 8, server=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert r() is True and calls == []
        torch.set_num_threads(1)
        assert r() is True and calls == [1]
    finally:
        torch.set_num_threads(threads)
