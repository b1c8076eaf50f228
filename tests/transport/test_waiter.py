"""protocol.Waiter: sleep, spin, or sleep then spin from just before the message is due. Real ZeroMQ
sockets on loopback; CPU time of the waiting thread tells sleeping from spinning."""

from __future__ import annotations

import threading
import time

import pytest
import zmq

from splitinfer.transport import protocol as p


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


def send_after(sock, delay_s: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay_s), sock.send(b"x")))
    t.start()
    return t


def timed_wait(waiter, sock, other, delay_s: float, timeout_s: float = 5.0):
    """(got a message, wall s, this thread's CPU s) for one wait on a message sent after delay_s."""
    waiter.begin()
    t = send_after(other, delay_s)
    w0, c0 = time.perf_counter(), time.thread_time()
    got = waiter.wait(sock, timeout_s)
    wall, cpu = time.perf_counter() - w0, time.thread_time() - c0
    t.join()
    if got:
        sock.recv()
    return got, wall, cpu


def test_blocking_waiter_sleeps_and_learns_the_wait(pair):
    a, b = pair
    w = p.Waiter()
    for _ in range(4):
        got, wall, cpu = timed_wait(w, a, b, 0.05)
        assert got and 0.04 < wall < 1.0
        assert cpu < 0.5 * wall  # slept in poll
    assert 0.04 < w.expected_s() < 1.0


def test_busy_waiter_spins_from_the_start(pair):
    a, b = pair
    got, wall, cpu = timed_wait(p.Waiter(busy_poll_s=1.0), a, b, 0.1)
    assert got and cpu > 0.5 * wall


def test_wake_early_sleeps_then_spins_only_near_the_expected_message(pair):
    a, b = pair
    w = p.Waiter(busy_poll_s=1.0, wake_early_s=0.02)
    assert w.expected_s() is None
    for _ in range(p.Waiter.MIN_HISTORY):  # until it has a prediction it spins from the start
        got, wall, cpu = timed_wait(w, a, b, 0.15)
        assert got
    assert 0.14 < w.expected_s() < 1.0
    got, wall, cpu = timed_wait(w, a, b, 0.15)
    assert got and wall > 0.14
    assert cpu < 0.6 * wall  # it slept for most of the wait (it spins ~20 ms of ~150)


def test_an_early_message_still_wakes_a_sleeping_waiter_at_once(pair):
    a, b = pair
    w = p.Waiter(busy_poll_s=1.0, wake_early_s=0.01)
    w._waits.extend([2.0] * 4)  # it expects the next message in 2 s
    got, wall, _ = timed_wait(w, a, b, 0.05)
    assert got and wall < 1.0


def test_a_timed_out_wait_keeps_waiting_for_the_same_message(pair):
    a, b = pair
    w = p.Waiter(busy_poll_s=0.05)
    w.begin()
    since = w.since
    assert w.wait(a, 0.02) is False and w.since == since
    b.send(b"x")
    assert w.wait(a, 1.0) is True and w.since is None
    assert len(w._waits) == 1 and w._waits[0] >= 0.02


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "soon", True])
def test_bad_wake_early_values_are_refused(tiny_lm, bad):
    from splitinfer.transport import RemoteLink, SplitServer

    with pytest.raises(ValueError, match="wake_early_ms"):
        SplitServer(tiny_lm, [2], busy_poll_ms=10, wake_early_ms=bad)
    with pytest.raises(ValueError, match="wake_early_ms"):
        RemoteLink("tcp://127.0.0.1:1", fingerprint="x", cuts=[2], hidden_size=8, wake_early_ms=bad)
