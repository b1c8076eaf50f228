"""What the reliability scenarios drive: server processes on loopback ports, a recording TCP relay,
and small socket helpers that never block forever (linger 0, every receive with a timeout).

Shared by `tests/reliability/` and `scripts/reliability_report.py`, so both run the same code.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

import splitinfer
from splitinfer.stats import percentile  # noqa: F401 - scenarios, topologies and bench_failover take it from here
from splitinfer.transport import protocol as p

PACKAGE_ROOT = Path(splitinfer.__file__).resolve().parents[1]  # the folder holding `splitinfer`
HOST = "127.0.0.1"  # loopback only, always
MODEL = "tiny-llama"
CUT = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# One process imports torch, transformers and the server once, then forks a fresh child per server
# start; each child runs `splitinfer serve` (the CLI's `main(["serve", ...])`, as `python -m splitinfer
# serve` does) and is a process
# of its own (own pid, own sockets, no state from any earlier server), so it can be SIGKILLed and
# "restarted" in a fraction of a second instead of the ~7 s (more on a busy CPU) of importing torch.
# The parent never runs a torch op, so forking it is safe (no OpenMP pool exists yet).
_ZYGOTE = """
import os, sys, threading
import splitinfer.models.loading, splitinfer.transport.server, splitinfer.transport.serve_cmd, transformers  # noqa
import hydra, hydra.utils  # noqa: composing the server config is part of every start
from splitinfer.cli import main
from transformers import LlamaForCausalLM  # noqa: import the model classes before forking
def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            threading.Event().wait(0.05)
            continue
        say("exit", pid, -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
say_lock = threading.Lock()  # two threads print: without it an "exit" line can split a "child" line
def say(*words):
    with say_lock:
        print(*words, flush=True)
threading.Thread(target=reap, daemon=True).start()
say("zygote ready")
for line in sys.stdin:
    argv = line.split()
    with say_lock:  # no print in flight while forking (the child never inherits a held stdout lock)
        pid = os.fork()
    if pid == 0:
        os._exit(main(["serve", *argv]))
    say("child", pid)
"""


class Zygote:
    """A parent process that forks server processes on demand (see `_ZYGOTE`). Close it to kill all."""

    def __init__(self) -> None:
        path = os.pathsep.join(d for d in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if d)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=path)
        self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.lines: list[str] = []  # everything the zygote and its children printed
        self._cond = threading.Condition()
        self.children: list[ForkedServer] = []
        self.exit_codes: dict[int, int] = {}
        threading.Thread(target=self._drain, daemon=True).start()
        self._lock = threading.Lock()

    def _drain(self) -> None:
        for line in self.proc.stdout:  # ends when the zygote and all children have closed it
            with self._cond:
                self.lines.append(line.rstrip())
                if line.startswith("exit "):
                    _, pid, code = line.split()
                    self.exit_codes[int(pid)] = int(code)
                self._cond.notify_all()

    def wait_line(self, match, start: int = 0, timeout: float = 120.0) -> tuple[int, str]:
        """(index, line) of the first line from `start` on for which match(line) is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    if match(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and i >= len(self.lines)):
                    raise RuntimeError(f"no matching line within {timeout:g} s from the server zygote; output:\n"
                                       + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.5))

    def wait_ready(self, timeout: float = 180.0) -> Zygote:
        self.wait_line(lambda line: line == "zygote ready", timeout=timeout)
        return self

    def spawn(self, port: int | None = None, args: tuple[str, ...] = ()) -> ForkedServer:
        """Fork a server on `port` (random if None); returns once the child exists (not yet bound)."""
        port = port or free_port()
        argv = ["--model", MODEL, "--cut", str(CUT), "--host", HOST, "--port", str(port), "--threads", "1", *args]
        with self._lock:
            start = len(self.lines)
            self.proc.stdin.write(" ".join(argv) + "\n")
            self.proc.stdin.flush()
            _, line = self.wait_line(lambda s: s.startswith("child "), start, timeout=30)
        child = ForkedServer(self, int(line.split()[1]), port, start)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the zygote and anything it forked
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ForkedServer:
    """One server process forked by a `Zygote`."""

    def __init__(self, zygote: Zygote, pid: int, port: int, line_index: int) -> None:
        self.zygote, self.pid, self.port, self._from = zygote, pid, port, line_index

    @property
    def url(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> ForkedServer:
        marker = "splitinfer serve:"
        self.zygote.wait_line(lambda s: s.startswith(marker) and f"{self.url}," in s, self._from, timeout)
        return self

    def alive(self) -> bool:
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE and self.pid not in self.zygote.exit_codes
        except psutil.NoSuchProcess:
            return False

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def sigkill(self, timeout: float = 10.0) -> int:
        """SIGKILL it; returns its exit code as the zygote reaped it (-9)."""
        os.kill(self.pid, signal.SIGKILL)
        self.zygote.wait_line(lambda s: s.startswith(f"exit {self.pid} "), self._from, timeout)
        return self.zygote.exit_codes[self.pid]

    def kill(self) -> None:
        if self.pid in self.zygote.exit_codes:
            return  # already reaped: the pid may belong to someone else by now
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Dealer:
    """A bare DEALER for hand-made messages: linger 0, send and receive timeouts, own context."""

    def __init__(self, url: str, *, curve: tuple[bytes, bytes, bytes] | None = None,
                 timeout_ms: int = 5000) -> None:
        self.url = url
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndtimeo = timeout_ms
        self.timeout_ms = timeout_ms
        if curve:
            self.sock.curve_publickey, self.sock.curve_secretkey, self.sock.curve_serverkey = curve
        self.sock.connect(url)
        self.rid = 0

    def send(self, frames) -> None:
        self.sock.send_multipart(list(frames), copy=False)

    def recv_frames(self, timeout_ms: int | None = None) -> list[bytes] | None:
        if not self.sock.poll(self.timeout_ms if timeout_ms is None else timeout_ms, zmq.POLLIN):
            return None
        return self.sock.recv_multipart()

    def recv(self, timeout_ms: int | None = None) -> dict | None:
        frames = self.recv_frames(timeout_ms)
        return None if frames is None else p.unpack(frames[-1])

    def call(self, op: str, payload=(), timeout_ms: int | None = None, **fields) -> dict | None:
        self.rid += 1
        self.send([p.pack(p.request(op, self.rid, **fields)), *payload])
        return self.recv(timeout_ms)

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> Dealer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TcpRelay:
    """A loopback TCP relay that forwards bytes both ways and records them: what a sniffer on the wire
    between client and server would capture. Point the client at `url` instead of the server."""

    def __init__(self, target_port: int, max_bytes: int = 16 * 2**20) -> None:
        self.target_port = target_port
        self.max_bytes = max_bytes
        self.up = bytearray()  # client -> server
        self.down = bytearray()  # server -> client
        self._lsock = socket.socket()
        self._lsock.bind((HOST, 0))
        self._lsock.listen(8)
        self._lsock.settimeout(0.1)
        self.port = self._lsock.getsockname()[1]
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"tcp://{HOST}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._lsock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            self._socks += [client, server]
            t = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        pairs = {client: (server, self.up), server: (client, self.down)}
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select(list(pairs), [], [], 0.1)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    other, record = pairs[s]
                    if len(record) < self.max_bytes:
                        record += data
                    other.sendall(data)
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self._stop.set()
        self._lsock.close()
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()

    def __enter__(self) -> TcpRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


