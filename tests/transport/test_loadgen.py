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
