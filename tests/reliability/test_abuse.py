"""Abusive but well-formed clients: one floods requests and never reads a reply, others connect, send
one request and vanish; a good client meanwhile gets exactly its reference output."""

from __future__ import annotations

import pytest

from splitinfer_testing.reliability.load import run_abuse

pytestmark = pytest.mark.reliability


def test_flood_and_connection_churn_do_not_hurt_a_good_client(lm, server):
    r = run_abuse(lm, server, flood=20_000, churn=300)
    assert r.flood_sent == 20_000 and r.churn_connections == 300, r
    assert r.good_identical, r
    assert r.server_alive, r
    assert r.rss_after - r.rss_before < 32 * 2**20, r
