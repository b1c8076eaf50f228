"""protocol.Waiter (as its WaitPolicy says): sleep, spin, or sleep then spin from just before the message is due. Real ZeroMQ
sockets on loopback. What the waiter does is read from a stand-in rehearsal that logs when it is
called: a spinning waiter calls it between polls, a sleeping one never does (CPU time would say the
same, but not on a loaded machine, where a spinner that yields gets little CPU)."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from splitinfer.transport import protocol as p
from splitinfer.transport.wait import WaitPolicy


@pytest.fixture
def pair():
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for s in (a, b):
        s.linger = 0
    port = a.bind_to_random_port("tcp://127.0.0.1")
    b.connect(f"tcp://127.0.0.1:{port}")
    yield a, b
    a.close(0)
    b.close(0)
    ctx.term()


class Spins:
    """A stand-in rehearsal: logs the time of every call (each is one turn of the spin loop)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, check=None) -> bool:
        self.calls.append(time.perf_counter())
        time.sleep(0.0005)
        return True


def timed_wait(waiter, sock, other, delay_s: float, timeout_s: float = 5.0):
    """(got a message, wall s, calls of the stand-in rehearsal since the wait began)."""
    spins = waiter.rehearsal
    n0 = len(spins.calls)
    waiter.begin()
    t = threading.Thread(target=lambda: (time.sleep(delay_s), other.send(b"x")))
    t.start()
    w0 = time.perf_counter()
    got = waiter.wait(sock, timeout_s)
    wall = time.perf_counter() - w0
    t.join()
    if got:
        sock.recv()
    return got, wall, [c - w0 for c in spins.calls[n0:]]


def test_blocking_waiter_sleeps_and_learns_the_wait(pair):
    a, b = pair
    w = p.Waiter(rehearsal=Spins())
    for _ in range(4):
        got, wall, calls = timed_wait(w, a, b, 0.05)
        assert got and 0.03 < wall < 2.0
        assert calls == []  # slept in poll
    assert 0.03 < w.expected_s() < 2.0


def test_busy_waiter_spins_from_the_start(pair):
    a, b = pair
    got, wall, calls = timed_wait(p.Waiter(WaitPolicy(busy_poll_ms=1000), rehearsal=Spins()), a, b, 0.1)
    assert got and len(calls) >= 2 and calls[0] < 0.05


def test_wake_early_sleeps_then_spins_only_near_the_expected_message(pair):
    a, b = pair
    w = p.Waiter(WaitPolicy(busy_poll_ms=1000, wake_early_ms=30), rehearsal=Spins())
    assert w.expected_s() is None
    for _ in range(p.Waiter.MIN_HISTORY):  # until it has a prediction it spins from the start
        got, wall, calls = timed_wait(w, a, b, 0.2)
        assert got and calls and calls[0] < 0.05
    expected = w.expected_s()
    assert 0.15 < expected < 2.0
    got, wall, calls = timed_wait(w, a, b, 0.2)
    assert got and calls
    # it slept through most of the wait and began to spin about wake_early_s before the message was due
    assert calls[0] >= expected - 0.03 - 0.005


def test_an_early_message_still_wakes_a_sleeping_waiter_at_once(pair):
    a, b = pair
    w = p.Waiter(WaitPolicy(busy_poll_ms=1000, wake_early_ms=10), rehearsal=Spins())
    w._waits.extend([2.0] * 4)  # it expects the next message in 2 s
    got, wall, calls = timed_wait(w, a, b, 0.05)
    assert got and wall < 1.0 and calls == []


def test_a_timed_out_wait_keeps_waiting_for_the_same_message(pair):
    a, b = pair
    w = p.Waiter(WaitPolicy(busy_poll_ms=50))
    w.begin()
    since = w.since
    assert w.wait(a, 0.02) is False and w.since == since
    b.send(b"x")
    assert w.wait(a, 1.0) is True and w.since is None
    assert len(w._waits) == 1 and w._waits[0] >= 0.02


def test_a_waiter_takes_only_a_wait_policy():
    assert p.Waiter().policy == WaitPolicy()
    with pytest.raises(TypeError, match="WaitPolicy"):
        p.Waiter(0.5)  # the old busy_poll_s positional argument
