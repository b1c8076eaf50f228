"""The server-load model: batched-step profiles, per-token latency under N clients, clients per server,
and its hooks in estimate_latency and recommend."""

from __future__ import annotations

import pytest

from splitinfer.errors import ConfigError
from splitinfer.metrics.latency import DeviceProfile, LinkProfile, estimate_latency
from splitinfer.metrics.serving import BatchProfile, ServerLoad, clients_per_server, measure_batch_profile

PROFILE = BatchProfile((1, 2, 4, 8), (0.010, 0.011, 0.013, 0.018), "test")


def test_profile_interpolates_and_extrapolates(tmp_path):
    assert PROFILE.step(1) == 0.010 and PROFILE.step(3) == pytest.approx(0.012)
    assert PROFILE.step(16) == pytest.approx(0.018 + 8 * (0.005 / 4))
    assert PROFILE.relative(8) == pytest.approx(1.8)
    PROFILE.write_csv(tmp_path / "p.csv")
    again = BatchProfile.from_csv(tmp_path / "p.csv")
    assert again.batch_sizes == PROFILE.batch_sizes and again.step_s == pytest.approx(PROFILE.step_s)
    with pytest.raises(ConfigError, match="start at 1"):
        BatchProfile((2, 4), (0.1, 0.2))
    with pytest.raises(ConfigError, match="does not exist"):
        BatchProfile.from_csv(tmp_path / "missing.csv")
    with pytest.raises(ConfigError):
        ServerLoad(0)


def test_load_model_batched_vs_serial():
    tpot, server = 0.100, 0.010  # 90 ms on the device and the network, 10 ms on the server
    serial, batched = ServerLoad(32), ServerLoad(32, PROFILE)
    assert ServerLoad(1).tpot(tpot, server) == tpot == ServerLoad(1, PROFILE).tpot(tpot, server)
    assert serial.tpot(tpot, server) == pytest.approx(0.320)  # server-bound: 32 steps one after another
    assert batched.tpot(tpot, server) == pytest.approx(tpot + server * (PROFILE.relative(32) - 1))
    assert batched.tokens_per_s(tpot, server) > 2 * serial.tokens_per_s(tpot, server)
    assert clients_per_server(tpot, server, 0.110, None) == 11  # 11 x 10 ms = 110 ms
    assert clients_per_server(tpot, server, 0.110, PROFILE) == 9  # S(9)/S(1) = 1.925 <= 2
    assert clients_per_server(tpot, server, 0.050, PROFILE) == 0


def test_estimate_latency_takes_a_server_load():
    m = {"device_prefill_s_per_token": 0.01, "server_prefill_s_per_token": 0.01, "device_decode_s_per_token": 0.02,
         "server_decode_s_per_token": 0.01, "up_bytes_per_token_prefill": 1000, "up_bytes_per_token_decode": 1000,
         "whole_prefill_s_per_token": 0.02, "whole_decode_s_per_token": 0.03, "device_flops_per_token": 1e6,
         "whole_flops_per_token": 2e6}
    link, device = LinkProfile("x", 10, 10, 20), DeviceProfile("d")
    alone = estimate_latency(m, link, device, 16)
    loaded = estimate_latency(m, link, device, 16, server_load=ServerLoad(64))
    assert loaded["tpot_unloaded_s"] == pytest.approx(alone["tpot_s"])
    assert loaded["tpot_s"] == pytest.approx(max(alone["tpot_s"], 64 * 0.01))
    assert loaded["server_tokens_per_s"] == pytest.approx(64 / loaded["tpot_s"])
    batched = estimate_latency(m, link, device, 16, server_load=ServerLoad(64, PROFILE))
    assert alone["tpot_s"] < batched["tpot_s"] < loaded["tpot_s"]


def test_recommend_says_how_many_phones_per_server(tmp_path):
    from splitinfer.commands.recommend import server_load
    from splitinfer.report import load_runs, recommend
    from tests.report.fake_sweep import row, write_sweep

    rows = load_runs(write_sweep(tmp_path / "sweep", [row(cut, "fp16") for cut in (5, 10, 20, 30)]))
    alone = recommend(rows, "latency")
    rec = recommend(rows, "latency", server_load=ServerLoad(32))
    assert rec.best["tpot_s"] >= alone.best["tpot_s"] and "Phones per server at this cut" in rec.explanation
    assert "32 clients per server" in rec.explanation
    # server-bound without batching: the load pushes the choice to a later cut (less work on the server)
    assert rec.best["cut"] >= alone.best["cut"]
    PROFILE.write_csv(tmp_path / "p.csv")
    load = server_load(32, str(tmp_path / "p.csv"))
    assert load.profile is not None and server_load(None, None) is None and server_load(8, "none").profile is None
    assert "batching server" in recommend(rows, "latency", server_load=load).explanation
    with pytest.raises(ConfigError, match="clients-per-server"):
        server_load(None, "x.csv")


def test_measure_batch_profile_on_a_tiny_model(one_torch_thread):
    from splitinfer.models import tiny_model

    prof = measure_batch_profile(tiny_model("llama"), 2, sizes=(1, 4), context=4, repeats=1)
    assert prof.batch_sizes == (1, 4) and all(s > 0 for s in prof.step_s)
