"""Lazy Pirate retries, exactly-once steps, and replay after the server lost the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from splitinfer.generation import unsplit_generate
from splitinfer.split import MeteredLink
from splitinfer.transport import SplitServer, TransportTimeout, remote_generator
from splitinfer.transport.sessions import SessionLimits

from .conftest import free_port

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
    servers = [SplitServer(tiny_lm, [2], port=0, poll_ms=20).start()]
    port = servers[0].port

    def later():
        servers.append(SplitServer(tiny_lm, [2], port=port, poll_ms=20).start())

    def outage(n):
        if n == 8:
            servers[0].stop()
            threading.Timer(1.2, later).start()

    try:
        res, link = generate_with_hook(tiny_lm, servers[0].url, outage, timeout_s=0.4, retries=8)
    finally:
        time.sleep(0.1)
        for s in servers:
            s.stop()
    assert res.token_ids == expected
    assert link.resends >= 1 and link.replays == 1


class DroppingServer(SplitServer):
    """Loses the reply to the k-th step once, as a flaky network would."""

    drop_at = 4

    def _send(self, sock, reply_to, reply):
        if reply.get("seq") == self.drop_at and not getattr(self, "_dropped", False):
            self._dropped = True
            return
        super()._send(sock, reply_to, reply)


def test_lost_reply_is_resent_from_cache_not_reapplied(tiny_lm, expected):
    srv = DroppingServer(tiny_lm, [2], port=0, poll_ms=20).start()
    try:
        res, link = generate_with_hook(tiny_lm, srv.url, lambda n: None, timeout_s=0.3)
        assert res.token_ids == expected
        assert link.resends == 1 and link.replays == 0
        assert srv.stats.steps == N  # the resent step was answered from the cache
    finally:
        srv.stop()


def test_idle_eviction_mid_generation_replays(tiny_lm, expected):
    srv = SplitServer(tiny_lm, [2], port=0, poll_ms=20,
                      limits=SessionLimits(idle_timeout_s=0.2)).start()

    def pause(n):
        if n == 3:
            deadline = time.monotonic() + 5
            while srv.session_count and time.monotonic() < deadline:
                time.sleep(0.05)
            assert srv.session_count == 0 and srv.session_kv_bytes == 0

    try:
        res, link = generate_with_hook(tiny_lm, srv.url, pause, timeout_s=2)
        assert res.token_ids == expected and link.replays == 1
    finally:
        srv.stop()


def test_no_server_gives_a_clear_timeout(tiny_lm):
    gen = remote_generator(tiny_lm, [2], f"tcp://127.0.0.1:{free_port()}", codec="none", timeout_s=0.2, retries=1)
    t0 = time.monotonic()
    with pytest.raises(TransportTimeout, match="no reply from tcp://127.0.0.1:.* after 2 tries"):
        gen.generate(IDS, 4)
    assert time.monotonic() - t0 < 3
    gen.link.close()


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
