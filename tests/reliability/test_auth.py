"""CurveZMQ: no key, an unknown key, a wrong server key or raw TCP garbage get no service and the server
stays up; an allowed key works; with curve on a sniffer sees no hidden-state bytes (and with curve off
it does, which shows the check can see them)."""

from __future__ import annotations

import pytest

from splitinfer_testing.reliability.auth import run_auth

pytestmark = pytest.mark.reliability


def test_curve_auth_and_what_the_wire_shows(lm, tmp_path):
    r = run_auth(lm, tmp_path)
    failed = [c for c in r.cases if not c[3]]
    assert not failed, failed
    assert len(r.cases) == 8 and r.server_alive
