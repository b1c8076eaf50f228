"""SimulatedLink: delays from real bytes, seeded jitter, in front of in-process and socket links."""

from __future__ import annotations

import pytest
import torch

from splitinfer.split import InProcessLink, SplitGenerator, split_pair
from splitinfer.transport import SimulatedLink, remote_generator


def in_process(lm, cut=2):
    device, server = split_pair(lm, [cut])
    return device, InProcessLink(server)


def test_delay_is_rtt_plus_bytes_over_bandwidth(tiny_lm):
    device, inner = in_process(tiny_lm)
    link = SimulatedLink(inner, bandwidth_bps=1e6, downlink_bps=2e6, rtt_s=0.01, sleep=False)
    gen = SplitGenerator(tiny_lm, device, link)
    res = gen.generate(torch.tensor([[4, 5, 6]]), 5, stop_at_eos=False)
    up, down = res.bytes_up, res.bytes_down
    assert link.simulated_s == pytest.approx(5 * 0.01 + up * 8 / 1e6 + down * 8 / 2e6)
    assert len(link.delays) == 5 and link.bytes_up == inner.bytes_up


def test_jitter_is_seeded_and_nonnegative(tiny_lm):
    delays = []
    for _ in range(2):
        device, inner = in_process(tiny_lm)
        link = SimulatedLink(inner, bandwidth_bps=1e9, rtt_s=0.0, jitter_s=0.005, seed=3, sleep=False)
        SplitGenerator(tiny_lm, device, link).generate(torch.tensor([[4, 5]]), 6, stop_at_eos=False)
        delays.append(link.delays)
    assert delays[0] == delays[1] and all(d >= 0 for d in delays[0]) and len(set(delays[0])) > 1


def test_sleeps_in_front_of_a_socket_link(make_server, tiny_lm):
    import time

    srv = make_server(tiny_lm, [2])
    gen = remote_generator(tiny_lm, [2], srv.url, codec="none")
    plain = gen.generate(torch.tensor([[4, 5, 6]]), 4, stop_at_eos=False)
    gen.link = SimulatedLink(gen.link, bandwidth_bps=1e8, rtt_s=0.05)
    t0 = time.perf_counter()
    slow = gen.generate(torch.tensor([[4, 5, 6]]), 4, stop_at_eos=False)
    assert time.perf_counter() - t0 >= 4 * 0.05
    assert slow.token_ids == plain.token_ids and slow.bytes_up == plain.bytes_up
    gen.link.close()
    assert srv.session_count == 0


def test_bad_parameters():
    with pytest.raises(ValueError, match="bandwidth_bps"):
        SimulatedLink(object(), bandwidth_bps=0)
    with pytest.raises(ValueError, match="rtt_s"):
        SimulatedLink(object(), bandwidth_bps=1e6, rtt_s=-1)


def test_from_link_profile(tiny_lm):
    from types import SimpleNamespace

    _, inner = in_process(tiny_lm)
    link = SimulatedLink.from_profile(inner, SimpleNamespace(uplink_mbps=5.85, downlink_mbps=13.0, rtt_ms=70))
    assert (link.uplink_bps, link.downlink_bps, link.rtt_s) == (5.85e6, 13e6, 0.07)
