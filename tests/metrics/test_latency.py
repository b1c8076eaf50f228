"""The Neurosurgeon latency model on hand-made numbers, and the link/device profiles' validation."""

from __future__ import annotations

import pytest

from splitinfer.metrics.bandwidth import bandwidth_metrics
from splitinfer.metrics.latency import DeviceProfile, LinkProfile, estimate_latency
from splitinfer.split import Traffic

ROW = {
    "device_prefill_s_per_token": 0.001, "server_prefill_s_per_token": 0.002, "whole_prefill_s_per_token": 0.003,
    "device_decode_s_per_token": 0.01, "server_decode_s_per_token": 0.02, "whole_decode_s_per_token": 0.03,
    "up_bytes_per_token_prefill": 1000.0, "up_bytes_per_token_decode": 1250.0, "down_bytes_per_token_decode": 4.0,
    "device_flops_per_token": 1e8, "whole_flops_per_token": 3e8,
}


def test_formula():
    link = LinkProfile("test", uplink_mbps=8.0, downlink_mbps=8.0, rtt_ms=100)  # 1 byte = 1 µs
    dev = DeviceProfile("phone", slowdown=2.0, pj_per_flop=10.0)
    r = estimate_latency(ROW, link, dev, prompt_tokens=10)
    assert r["ttft_s"] == pytest.approx(10 * 0.001 * 2 + 10_000e-6 + 0.1 + 10 * 0.002 + 4e-6)
    assert r["tpot_s"] == pytest.approx(0.01 * 2 + 1250e-6 + 0.1 + 0.02 + 4e-6)
    assert r["ttft_all_device_s"] == pytest.approx(10 * 0.003 * 2)
    assert r["tpot_all_device_s"] == pytest.approx(0.06)
    # all on the server: ids up once, then it decodes alone and streams ids back (no round trip per token)
    assert r["ttft_all_server_s"] == pytest.approx(40e-6 + 0.1 + 0.03 + 4e-6)
    assert r["tpot_all_server_s"] == pytest.approx(0.03 + 4e-6)
    assert r["energy_j_per_token"] == pytest.approx(1e8 * 10e-12)  # no radio power given


def test_faster_link_is_never_slower():
    dev = DeviceProfile("phone", 2.0)
    slow = estimate_latency(ROW, LinkProfile("3g", 1.1, 2.0, 150), dev, 64)
    fast = estimate_latency(ROW, LinkProfile("wifi", 18.88, 50.0, 20), dev, 64)
    assert fast["ttft_s"] < slow["ttft_s"] and fast["tpot_s"] < slow["tpot_s"]


def test_radio_energy():
    link = LinkProfile("lte", 8.0, 8.0, 0, tx_mw_per_mbps=100.0, rx_mw_per_mbps=0.0, base_mw=200.0)
    # 1000 bytes up at 8 Mbit/s = 1 ms at (100*8 + 200) mW = 1 W -> 1 mJ
    assert link.radio_j(1000, 0) == pytest.approx(1e-3)


def test_bad_profiles():
    with pytest.raises(ValueError, match="bandwidths must be > 0"):
        LinkProfile("x", 0.0, 1.0, 10)
    with pytest.raises(ValueError, match="slowdown must be > 0"):
        DeviceProfile("x", 0.0)


def test_bandwidth_metrics_from_link_traffic():
    c = Traffic()
    c.add_up(100, 10, "prefill")
    c.add_up(20, 1, "decode")
    c.add_up(22, 1, "decode")
    r = bandwidth_metrics(c, hidden_size=4)
    assert r["up_bytes_per_token_prefill"] == 10 and r["up_bytes_per_token_decode"] == 21
    assert r["up_ratio_vs_fp32_decode"] == pytest.approx(21 / 16)
    assert r["down_bytes_per_token_prefill"] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="phase"):
        c.add_up(1, 1, "upload")
