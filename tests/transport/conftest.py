"""Fixtures for transport tests: tiny models, servers on random loopback ports, raw sockets that
never block forever (linger 0, every receive with a timeout)."""

from __future__ import annotations

import socket

import pytest
import zmq

from splitinfer.transport import protocol as p

RECV_TIMEOUT_MS = 5000


@pytest.fixture(scope="session")
def tiny_lm():
    from splitinfer.models import tiny_model

    return tiny_model("llama")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def make_server():
    """make_server(lm, cuts, **kw) -> a started SplitServer on a random port; all stopped at teardown."""
    from splitinfer.transport import SplitServer

    servers = []

    def make(lm, cuts=(2,), **kw):
        kw.setdefault("port", 0)
        kw.setdefault("poll_ms", 20)
        srv = SplitServer(lm, list(cuts), **kw).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


class RawClient:
    """A bare DEALER socket for sending hand-made (also hostile) messages."""

    def __init__(self, url: str, kind: int = zmq.DEALER) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(kind)
        self.sock.linger = 0
        self.sock.rcvtimeo = RECV_TIMEOUT_MS
        self.sock.sndtimeo = RECV_TIMEOUT_MS
        self.sock.connect(url)
        self.rid = 0

    def send(self, frames) -> None:
        self.sock.send_multipart(frames)

    def recv(self, timeout_ms: int = RECV_TIMEOUT_MS) -> dict | None:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return None
        frames = self.sock.recv_multipart()
        return p.unpack(frames[-1])

    def call(self, op: str, payload=(), **fields) -> dict:
        self.rid += 1
        self.send([p.pack(p.request(op, self.rid, **fields)), *payload])
        rep = self.recv()
        assert rep is not None, f"no reply to {op}"
        return rep

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def raw_client():
    clients = []

    def make(url: str, kind: int = zmq.DEALER) -> RawClient:
        c = RawClient(url, kind)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def open_fields(lm, cuts=(2,), codec=None, **over) -> dict:
    fields = {"fingerprint": lm.fingerprint, "cuts": list(cuts), "hidden": lm.hidden_size,
              "codec": codec or {"name": "none"}, "sampling": {"temperature": 0.0}}
    fields.update(over)
    return fields
