"""A ZeroMQ proxy on loopback that loses one reply, as a flaky network would: the client connects to
`proxy.url`, the proxy forwards every request to the server and every reply back, except the first reply
whose envelope has `seq == drop_seq`. Tests the client's resend through the public wire only (no
server subclass). `dropped` is set once that reply was lost."""

from __future__ import annotations

import threading

import zmq

from splitinfer.transport import protocol as p


class LossyProxy:
    def __init__(self, server_url: str, drop_seq: int) -> None:
        self.drop_seq = drop_seq
        self.dropped = threading.Event()
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)  # the client's side
        self._front.linger = 0
        port = self._front.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self._back = self._ctx.socket(zmq.DEALER)  # one connection to the server
        self._back.linger = 0
        self._back.connect(server_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        client = None  # the latest client identity: a Lazy Pirate client reconnects with a new one
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                frames = sock.recv_multipart()
                if sock is self._front:
                    client = frames[0]
                    self._back.send_multipart(frames[1:])
                elif not self.dropped.is_set() and p.unpack(frames[0]).get("seq") == self.drop_seq:
                    self.dropped.set()  # lost on the way back: the server applied the step, the client never hears
                elif client is not None:
                    self._front.send_multipart([client, *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._front.close(0)
        self._back.close(0)
        self._ctx.term()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
