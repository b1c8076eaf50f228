"""WaitPolicy: one validated setting for how a side waits, read from configs, flags and mode names,
and taken by SplitServer, RemoteLink, remote_generator and protocol.Waiter."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from splitinfer.errors import ConfigError
from splitinfer.transport import RemoteLink, SplitServer, remote_generator
from splitinfer.transport.server_config import ServerConfig
from splitinfer.transport.wait import WaitPolicy, add_wait_arguments


def test_defaults_and_derived_values():
    w = WaitPolicy()
    assert (w.busy_poll_ms, w.rehearse, w.wake_early_ms, w.rehearses) == (0.0, True, 0.0, False)
    w = WaitPolicy(busy_poll_ms=500, wake_early_ms=3)
    assert (w.busy_poll_s, w.wake_early_s, w.rehearses) == (0.5, 0.003, True)
    assert isinstance(w.busy_poll_ms, float) and w.as_dict() == {"busy_poll_ms": 500.0, "rehearse": True,
                                                                  "wake_early_ms": 3.0}
    assert not WaitPolicy(busy_poll_ms=5, rehearse=False).rehearses
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.busy_poll_ms = 1.0


@pytest.mark.parametrize("name", ["busy_poll_ms", "wake_early_ms"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "soon", True, None])
def test_bad_millisecond_values_are_config_errors_naming_the_setting(name, bad):
    with pytest.raises(ConfigError, match=f"{name}=.*milliseconds >= 0"):
        WaitPolicy(**{name: bad})


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_rehearse_must_be_a_bool(bad):
    with pytest.raises(ConfigError, match="rehearse=.*true or false"):
        WaitPolicy(rehearse=bad)


def test_modes():
    assert WaitPolicy.mode("block") == WaitPolicy(0.0, False, 0.0)
    assert WaitPolicy.mode("busy", busy_poll_ms=100) == WaitPolicy(100.0, False, 0.0)
    assert WaitPolicy.mode("warm") == WaitPolicy(500.0, True, 0.0)
    assert WaitPolicy.mode("early", wake_early_ms=8) == WaitPolicy(500.0, True, 8.0)
    assert [WaitPolicy.mode(m).rehearses for m in WaitPolicy.MODES] == [False, False, True, True]
    with pytest.raises(ConfigError, match="block, busy, warm, early"):
        WaitPolicy.mode("spin")


def test_from_config_reads_objects_and_mappings_and_keeps_defaults_for_missing_or_none():
    cfg = ServerConfig(busy_poll_ms=5.0, rehearse=False, wake_early_ms=2.0)
    assert cfg.wait() == WaitPolicy.from_config(cfg) == WaitPolicy(5.0, False, 2.0)
    assert WaitPolicy.from_config({"busy_poll_ms": 7, "port": 1, "rehearse": None}) == WaitPolicy(7.0)
    from omegaconf import OmegaConf

    assert WaitPolicy.from_config(OmegaConf.create({"wake_early_ms": 1.5})) == WaitPolicy(wake_early_ms=1.5)
    with pytest.raises(ConfigError, match="busy_poll_ms"):
        ServerConfig(busy_poll_ms=-1).wait()


def test_flags_round_trip_and_the_no_rehearse_switch():
    parser = argparse.ArgumentParser()
    add_wait_arguments(parser)
    assert WaitPolicy.from_args(parser.parse_args([])) == WaitPolicy()
    args = parser.parse_args(["--busy-poll-ms", "500", "--no-rehearse", "--wake-early-ms", "3"])
    assert WaitPolicy.from_args(args) == WaitPolicy(500.0, False, 3.0)
    # the shape of `splitinfer generate`'s flags: a plain --no-rehearse switch
    ns = argparse.Namespace(busy_poll_ms=10.0, no_rehearse=True, wake_early_ms=0.0)
    assert WaitPolicy.from_args(ns) == WaitPolicy(10.0, False, 0.0)
    with pytest.raises(ConfigError, match="wake_early_ms"):
        WaitPolicy.from_args(parser.parse_args(["--wake-early-ms", "-2"]))
    for w in (WaitPolicy(), WaitPolicy(0.25, False, 1e-3), WaitPolicy.mode("early")):
        assert WaitPolicy.from_args(parser.parse_args(w.as_flags())) == w


def test_resolve_accepts_a_policy_a_mapping_a_mode_or_nothing():
    w = WaitPolicy(busy_poll_ms=9)
    assert WaitPolicy.resolve(w) is w
    assert WaitPolicy.resolve(None) == WaitPolicy()
    assert WaitPolicy.resolve({"busy_poll_ms": 9}) == w
    assert WaitPolicy.resolve("warm") == WaitPolicy.mode("warm")
    with pytest.raises(ConfigError, match="unknown"):
        WaitPolicy.resolve({"busy_poll": 9})
    with pytest.raises(ConfigError, match="must be a WaitPolicy"):
        WaitPolicy.resolve(9.0)


def test_server_and_link_take_the_policy_and_refuse_bad_settings(tiny_lm):
    srv = SplitServer(tiny_lm, [2], wait=WaitPolicy(busy_poll_ms=5, rehearse=False, wake_early_ms=2))
    assert (srv.rehearse, srv.busy_poll_s, srv._waiter.wake_early_s) == (False, 0.005, 0.002)
    link = RemoteLink("tcp://127.0.0.1:1", fingerprint="x", cuts=[2], hidden_size=8, wait="busy")
    assert link.waiter.policy == WaitPolicy.mode("busy")
    link.close()
    for bad in ({"busy_poll_ms": -1}, {"wake_early_ms": float("nan")}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SplitServer(tiny_lm, [2], wait=bad)
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RemoteLink("tcp://127.0.0.1:1", fingerprint="x", cuts=[2], hidden_size=8, wait=bad)


def test_remote_generator_takes_the_policy_and_the_server_reports_its_own(make_server, tiny_lm):
    srv = make_server(tiny_lm, [2], wait=WaitPolicy(busy_poll_ms=30.0, rehearse=False))
    gen = remote_generator(tiny_lm, [2], srv.url, codec="none", wait={"busy_poll_ms": 30.0, "rehearse": False,
                                                                      "wake_early_ms": 1.0})
    try:
        assert gen.link.wait == WaitPolicy(30.0, False, 1.0) and gen.link.rehearsal is None
        assert len(gen.generate(torch.tensor([[1, 5, 9]]), 3, stop_at_eos=False).token_ids) == 3
        assert gen.link.info()["wait"] == {"busy_poll_ms": 30.0, "rehearse": False, "wake_early_ms": 0.0}
    finally:
        gen.link.close()
    with pytest.raises(TypeError):  # the old separate keywords are gone: one wait= for all three
        remote_generator(tiny_lm, [2], srv.url, busy_poll_ms=5.0)
