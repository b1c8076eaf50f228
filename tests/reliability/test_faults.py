"""Faults: the server process SIGKILLed and restarted several times in one generation; a client
SIGKILLed mid-session."""

from __future__ import annotations

import pytest

from splitinfer_testing.reliability.faults import run_client_killed, run_kill_restart

pytestmark = pytest.mark.reliability


def test_server_sigkilled_four_times_in_one_generation(lm, zygote):
    r = run_kill_restart(lm, zygote, kills=4, new_tokens=40, timeout_s=1.0)
    assert not r.error, r.error
    assert r.kills == 4 and r.exit_codes == [-9] * 4, r
    steps = [k for k in r.kill_steps if isinstance(k, int)]
    assert len(steps) == 3 and steps == sorted(set(steps)) and steps[-1] < 40, r.kill_steps  # mid-generation
    assert r.kill_steps[1] == "replay of 1", r.kill_steps  # the second kill interrupts the first replay
    assert r.tokens == 40 and r.identical, f"fault-free:\n{r.reference_text}\nwith kills:\n{r.text}"
    # One new session per restart, rebuilt from the kept frames; a kill that lands before the replay's
    # `open` reached the server costs a resent open instead of another replay.
    assert r.kills - 1 <= r.replays <= r.kills, r


def test_killed_client_session_is_evicted_and_its_memory_freed(lm):
    idle = 1.0
    r = run_client_killed(lm, idle_timeout_s=idle, prefill=128)
    assert r.kv_bytes_before > 0 and r.tensors_tracked > 0, r
    assert r.sessions_after == 0 and r.kv_bytes_after == 0 and r.evicted == 1, r
    assert 0.9 * idle <= r.seconds_to_evict <= idle + 5, r  # not before the idle limit, soon after it
    assert r.tensors_alive_after == 0 and r.session_object_freed, r  # the KV tensors are really gone
    assert r.served_after
