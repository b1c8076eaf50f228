"""transport.loadgen: replayed sessions against a real `splitinfer serve` process on loopback get the
recorded tokens back, and the figures add up."""

from __future__ import annotations

import math

import pytest
import torch

from splitinfer.models import tiny_model
from splitinfer.transport.loadgen import ServeProcess, record_trajectories, run_load, session_fields


@pytest.fixture(scope="module")
def server():
    with ServeProcess("tiny-llama", 2, ["--threads", "1", "--max-sessions", "16"]) as srv:
        yield srv


def test_replayed_sessions_get_the_recorded_tokens(server):
    torch.set_num_threads(1)
    lm = tiny_model("llama")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, lm.vocab_size, (1, n), generator=g) for n in (5, 11)]
    trajs = record_trajectories(lm, 2, 4, prompts)
    assert [t["prompt_tokens"] for t in trajs] == [5, 11] and all(len(t["frames"]) == 4 for t in trajs)
    assert server.url.startswith("tcp://127.0.0.1:") and not server.url.endswith(":0")
    r = run_load(server, session_fields(lm, 2), trajs, n=3, generators=2)
    assert r["mismatched"] == 0 and r["tokens"] == 3 * 4 and r["clients"] == 3
    assert 0 < r["step_p50_ms"] <= r["step_p99_ms"] and 0 < r["ttft_p50_ms"] <= r["ttft_p99_ms"]
    assert r["tok_per_s"] == pytest.approx(r["tokens"] / r["wall_s"]) and r["server_rss_mb"] > 0
    assert math.isfinite(r["server_cpu_ms_per_tok"])


def test_a_wrong_reference_counts_as_mismatched(server):
    lm = tiny_model("llama")
    trajs = record_trajectories(lm, 2, 3, [torch.arange(3, 10)[None]])
    trajs[0]["tokens"][1] += 1  # the server's reply cannot match this one
    r = run_load(server, session_fields(lm, 2), trajs, n=2, generators=1)
    assert r["mismatched"] == 2 and r["tokens"] == 6


def test_measure_transport_over_a_real_server_and_its_table(server):
    """bench_transport's engine: the split over ZeroMQ (fp32 payload) gives the unsplit tokens, bytes go
    both ways, and the table's ratios are the medians of the samples it measured."""
    from splitinfer.generation import in_process_generator
    from splitinfer.split import MeteredLink
    from splitinfer.transport import remote_generator
    from splitinfer.transport.loadgen import encode_prompts, measure_transport, table_lines, transport_table
    from splitinfer.transport.payload import build_session_codec

    torch.set_num_threads(1)
    lm = tiny_model("llama")
    prompts = encode_prompts(lm, ["short one", "a somewhat longer prompt than the first"])
    assert [p.shape[1] for p in prompts] == [9, 12]  # no tokenizer: seeded ids, 8 + len // 8
    assert all(torch.equal(a, b) for a, b in zip(prompts, encode_prompts(lm, ["short one", "a somewhat longer "
                                                 "prompt than the first"]), strict=True))
    gen = remote_generator(lm, [2], server.url, codec=build_session_codec("fp32"), timeout_s=60)
    gen.link = MeteredLink(gen.link)
    try:
        rows, inproc = measure_transport(lm, prompts, in_process_generator(lm, [2], codec="none"),
                                         {("fp32", "block"): gen}, tokens=4, server_in_other_process=True)
    finally:
        gen.link.close()
    r = rows["fp32", "block"]
    assert r["err"] is None and r["same"] == 2 and inproc["same"] == 2
    assert len(r["pre"]) == 2 and len(r["dec"]) == 2 * 3 and min(r["up"]) > 0 and min(r["down"]) > 0
    table = transport_table(rows, inproc, {"fp32": "fp32"}, n_prompts=2)
    assert [t["codec"] for t in table] == ["(in-process split, no network)", "fp32"]
    import statistics
    assert table[1]["identical"] == "2/2" and table[1]["same_prefix"] == "100%"
    assert table[1]["decode_ratio_median"] == round(statistics.median(r["dec"]) / statistics.median(r["ref_dec"]), 3)
    cols, lines = table_lines(table)
    assert cols[:3] == ["codec", "wait", "identical"] and len(lines) == 3
    assert lines[2].startswith("fp32 ") and all(len(line.rstrip()) <= len(lines[0]) + 200 for line in lines)


def test_transport_table_reports_an_error_row():
    from splitinfer.transport.loadgen import transport_table

    rows = {("int4", "block"): {"err": "ValueError: " + "x" * 200, "ref_dec": []}}
    table = transport_table(rows, {"dec": [], "ratio": [], "same": 0}, {"int4": "int4 label"}, n_prompts=1)
    assert table == [{"codec": "int4 label", "wait": "block", "error": ("ValueError: " + "x" * 200)[:100]}]


def _serving_row(clients, batching, tok, cpu, p50):
    return {"batching": batching, "clients": clients, "tok_per_s": tok, "decode_tok_per_s": tok / 2,
            "step_p50_ms": p50, "step_p99_ms": 2 * p50, "ttft_p50_ms": 10.0, "ttft_p99_ms": 20.0,
            "server_cpu": 0.5, "server_cpu_ms_per_tok": cpu, "server_rss_mb": 300.0, "mismatched": 0}


def test_serving_lines_ratios_and_csv(tmp_path):
    import csv

    from splitinfer.transport.loadgen import (
        SERVING_HEADER,
        batching_ratio_lines,
        serving_line,
        write_serving_csv,
    )

    rows = [_serving_row(4, "off", 100.0, 8.0, 20.0), _serving_row(4, "on", 250.0, 2.0, 10.0)]
    assert len(serving_line(4, "on", rows[1])) == len(SERVING_HEADER)
    assert serving_line(4, "on", rows[1]).split() == ["4", "on", "250.0", "125.0", "10.0", "20.0", "10", "20",
                                                      "0.50", "2.0", "300", "0"]
    (line,) = batching_ratio_lines(rows, [4])
    assert "tokens/s x2.50" in line and "server CPU per token x0.25" in line and "step p50 x0.50" in line
    write_serving_csv(rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv", newline="") as f:
        back = list(csv.DictReader(f))
    assert list(back[0]) == list(rows[0]) and back[1]["tok_per_s"] == "250" and back[0]["batching"] == "off"
