"""The per-hop latency model (`splitinfer.metrics.hops`): one cut agrees with the single-cut formula, a relay
adds its hop, a U-shape's downlink carries a hidden state, and a free hop adds nothing."""

from __future__ import annotations

import pytest

from splitinfer.configs import build
from splitinfer.metrics import hops
from splitinfer.metrics.hardware import load_hardware, modelled_timings
from splitinfer.metrics.latency import LinkProfile, estimate_latency
from splitinfer.models.shapes import load_shape

T, C = 64, 256


@pytest.fixture(scope="module")
def setting():
    return (load_shape("smollm2_135m"), load_hardware("snapdragon_8_gen3"), load_hardware("h100"),
            build("link", "4g_lte", LinkProfile))


def _single(shape, dev, srv, link, cut, up):
    topo = hops.chain([cut], [dev, srv], [16, 16], [link], [(up, up)], shape.num_layers)
    return hops.topology_latency(shape, topo, prompt_tokens=T, context_tokens=C)


def test_one_cut_is_the_single_cut_formula(setting):
    shape, dev, srv, link = setting
    for cut in (1, 8, 29):
        m = {**modelled_timings(shape, cut, dev, srv, prompt_tokens=T, context_tokens=C),
             "up_bytes_per_token_prefill": 600.0, "up_bytes_per_token_decode": 650.0}
        want = estimate_latency(m, link, None, T)
        topo = hops.chain([cut], [dev, srv], [16, 16], [link], [(600.0, 650.0)], shape.num_layers)
        got = hops.topology_latency(shape, topo, prompt_tokens=T, context_tokens=C)
        assert got["tpot_s"] == pytest.approx(want["tpot_s"], rel=1e-9), cut
        assert got["ttft_s"] == pytest.approx(want["ttft_s"], rel=1e-9), cut
        assert got["energy_j_per_token"] == pytest.approx(want["energy_j_per_token"], rel=1e-9), cut


def test_relay_costs_its_hop_and_the_edge(setting):
    shape, dev, srv, link = setting
    up = 650.0
    free = LinkProfile("free", 1e12, 1e12, 0.0)
    # an "edge" that is the server itself, behind a free hop: the relay costs what one cut does
    same = hops.topology_latency(shape, hops.chain([8, 20], [dev, srv, srv], [16, 16, 16], [link, free],
                                                   [(up, up), (up, up)], shape.num_layers),
                                 prompt_tokens=T, context_tokens=C)
    one = _single(shape, dev, srv, link, 8, up)
    assert same["tpot_s"] == pytest.approx(one["tpot_s"], rel=1e-6)
    fibre = build("link", "metro_fiber", LinkProfile)
    edge = load_hardware("jetson_orin_nano")
    relay = hops.topology_latency(shape, hops.chain([8, 20], [dev, edge, srv], [16, 16, 16], [link, fibre],
                                                    [(up, up), (up, up)], shape.num_layers),
                                  prompt_tokens=T, context_tokens=C)
    # the hop adds its RTT (up and the token back) and the edge runs 12 layers slower than an H100
    assert relay["tpot_s"] - one["tpot_s"] > fibre.rtt_ms / 1e3
    assert relay["edge_decode_s"] > 0
    assert relay["energy_j_per_token"] == pytest.approx(one["energy_j_per_token"], rel=1e-9)  # same device work


def test_ushape_runs_the_tail_on_the_device_and_returns_a_hidden_state(setting):
    shape, dev, srv, link = setting
    up = 650.0
    u = hops.topology_latency(shape, hops.ushape([8, 26], dev, srv, 16, 16, link, (up, up), (up, up),
                                                 shape.num_layers), prompt_tokens=T, context_tokens=C)
    one = _single(shape, dev, srv, link, 8, up)
    assert u["device_tail_decode_s"] > 0 and u["downlink_bytes_per_token_decode"] == up
    # the same link and round trip; the device also runs [26, 30) + head, the reply is a hidden state
    extra = u["device_tail_decode_s"] + link.down_s(up) - link.down_s(4) + u["server_decode_s"] - \
        one["server_decode_s"]
    assert u["tpot_s"] == pytest.approx(one["tpot_s"] + extra, rel=1e-9)
    assert u["energy_j_per_token"] > one["energy_j_per_token"]
