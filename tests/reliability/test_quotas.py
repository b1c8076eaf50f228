"""Fair sharing: a client that tries to hold every session and to push prefills past its token rate
is refused with the `quota` code, while another client still gets sessions and exactly its text."""

from __future__ import annotations

import pytest

from splitinfer.transport.sessions import QUOTA
from splitinfer_testing.reliability.load import run_fair_share

pytestmark = pytest.mark.reliability


def test_one_client_cannot_hold_every_session_or_the_batch(lm, tmp_path):
    r = run_fair_share(lm, tmp_path, per_client=4, tokens_per_s=200.0, burst=64)
    assert r.hog_sessions == 4 and r.hog_refusal == QUOTA, r
    assert r.hog_step_codes == {"ok": 2, QUOTA: 2}, r  # 64 tokens of burst = two prefills of 32
    assert r.other_sessions == 2 and r.other_identical, r
    assert r.server_alive
