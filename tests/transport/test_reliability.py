"""Lazy Pirate retries, exactly-once steps, and replay after the server lost the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
import torch

from splitinfer.generation import unsplit_generate
from splitinfer.split import MeteredLink
from splitinfer.transport import SplitServer, TransportTimeout, remote_generator
from splitinfer.transport.sessions import SessionLimits

from .conftest import free_port
from .lossy_proxy import LossyProxy

IDS = torch.tensor([[5, 17, 33, 2 + 40, 91, 7]])
N = 16


def generate_with_hook(lm, url, hook, **kw):
    gen = remote_generator(lm, [2], url, codec="none", **kw)
    gen.link = MeteredLink(gen.link, on_step=lambda r: hook(r.index + 1))  # hook(steps done) after each step
    try:
        return gen.generate(IDS, N, stop_at_eos=False), gen.link.inner
    finally:
        gen.link.inner.close()


@pytest.fixture(scope="module")
def expected(tiny_lm):
    return unsplit_generate(tiny_lm, IDS, N)


def test_server_restarted_mid_generation_gives_same_text(tiny_lm, expected):
    servers = [SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()]
    port = servers[0].port

    def restart(n):
        if n == 5:
            servers[-1].stop()
            servers.append(SplitServer(tiny_lm, [2], port=port, poll_ms=20).start())

    try:
        res, link = generate_with_hook(tiny_lm, servers[0].url, restart, timeout_s=2)
    finally:
        for s in servers:
            s.stop()
    assert res.token_ids == expected
    assert link.replays == 1
    assert servers[-1].stats.steps == 5 + (N - 5)  # replayed the first 5 steps, then the rest


def test_server_down_for_a_while_then_back(tiny_lm, expected):
    """The server stops after step 8 and comes back only once the client has retried into silence:
    event-driven (the link's `on_retry`), so no window of seconds has to line up."""
    servers = [SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()]
    port = servers[0].port
    retried = []

    def back_after_two_retries(attempt, tries):
        retried.append(attempt)
        if len(retried) == 2:  # two tries went unanswered: the server really was down
            servers.append(SplitServer(tiny_lm, [2], port=port, poll_ms=20).start())

    def outage(n):
        if n == 8:
            servers[0].stop()

    gen = remote_generator(tiny_lm, [2], servers[0].url, codec="none", timeout_s=0.5, retries=8)
    gen.link.on_retry = back_after_two_retries
    gen.link = MeteredLink(gen.link, on_step=lambda r: outage(r.index + 1))
    try:
        res, link = gen.generate(IDS, N, stop_at_eos=False), gen.link.inner
    finally:
        gen.link.inner.close()
        for s in servers:
            s.stop()
    assert res.token_ids == expected
    assert len(servers) == 2 and link.resends >= 2 and link.replays == 1


def test_lost_reply_is_resent_from_cache_not_reapplied(tiny_lm, expected):
    """A proxy on the wire loses the reply to step 4 once; the client resends and the server answers
    from its reply cache. The property is "never applied twice" (the server's step count), not a count
    of resends: a slow, loaded server may see a spurious one, answered from the cache too."""
    srv = SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()
    try:
        with LossyProxy(srv.url, drop_seq=4) as proxy:
            res, link = generate_with_hook(tiny_lm, proxy.url, lambda n: None, timeout_s=1.0)
            assert proxy.dropped.is_set()
        assert res.token_ids == expected
        assert link.resends >= 1 and link.replays == 0
        assert srv.stats.steps == N  # the resent step was answered from the cache
    finally:
        srv.stop()


def test_idle_eviction_mid_generation_replays(tiny_lm, expected):
    srv = SplitServer(tiny_lm, [2], port=0, poll_ms=20,
                      limits=SessionLimits(idle_timeout_s=0.2)).start()

    def pause(n):
        if n == 3:
            assert srv.wait_for_sessions(0, timeout=10)
            assert srv.session_count == 0 and srv.session_kv_bytes == 0

    try:
        res, link = generate_with_hook(tiny_lm, srv.url, pause, timeout_s=2)
        assert res.token_ids == expected and link.replays == 1
    finally:
        srv.stop()


def test_no_server_gives_a_clear_timeout_and_says_each_retry(tiny_lm, caplog):
    gen = remote_generator(tiny_lm, [2], f"tcp://127.0.0.1:{free_port()}", codec="none", timeout_s=0.2, retries=2)
    tries = []
    gen.link.on_retry = lambda attempt, total: tries.append((attempt, total))
    with caplog.at_level("WARNING", logger="splitinfer.transport.client"):
        with pytest.raises(TransportTimeout, match="no reply from tcp://127.0.0.1:.* after 3 tries"):
            gen.generate(IDS, 4)
    gen.link.close()
    assert tries == [(2, 3), (3, 3)]  # said as they happen, before each resend
    lines = [r.getMessage() for r in caplog.records]
    assert [line.rsplit("; ", 1)[1] for line in lines] == ["retry 2/3", "retry 3/3"], lines
    assert "no reply from tcp://127.0.0.1:" in lines[0] and "'open' within 0.2 s" in lines[0]


def _spawn(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "splitinfer", "serve", "--model", "tiny-llama",
                             "--cut", "2", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    return proc


def _wait_ready(proc: subprocess.Popen, timeout: float = 60) -> str:
    result = {}

    def read():
        result["line"] = proc.stdout.readline()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    line = result.get("line", "")
    assert "splitinfer serve:" in line and "tcp://" in line, f"server did not start: {line!r}"
    return line


@pytest.mark.slow
def test_sigkilled_server_process_comes_back(tiny_lm, expected):
    port = free_port()
    procs = [_spawn(port)]
    try:
        _wait_ready(procs[0])

        def kill_and_respawn(n):
            if n == 6:
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait(10)
                procs.append(_spawn(port))  # not waiting: the client must ride out the restart

        res, link = generate_with_hook(tiny_lm, f"tcp://127.0.0.1:{port}", kill_and_respawn,
                                       timeout_s=2.0, retries=30)
        assert res.token_ids == expected
        assert link.replays == 1
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
