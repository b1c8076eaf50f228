"""Load: 32 concurrent clients x 50 decode steps against one server process."""

from __future__ import annotations

import pytest

from splitinfer_testing.reliability.load import run_load

pytestmark = pytest.mark.reliability


def test_32_clients_50_decode_steps(lm, server):
    r = run_load(lm, server.url, clients=32, steps=50)
    assert not r.errors, r.errors[:5]
    assert r.mismatched == 0, f"{r.mismatched} of 32 outputs differ from their single-client reference"
    assert r.lost_steps == 0 and r.duplicated_steps == 0, r
    assert r.resends == 0 and r.replays == 0, r
    assert r.server_steps == r.expected_steps == 32 * 51, r  # every step applied exactly once
    assert r.tokens == 32 * 51 and len(r.latencies) == 32 * 50
    print(f"\n32 clients x 50 steps: {r.tokens_per_s:.0f} tokens/s, step latency p50 {r.p50_ms:.1f} ms, "
          f"p99 {r.p99_ms:.1f} ms")
