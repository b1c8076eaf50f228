"""Authentication and the wire: what a CurveZMQ server refuses, and what a sniffer on the wire captures."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from splitinfer.transport import SplitServer, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.client import load_client_curve_keys
from splitinfer_testing.reliability.common import CUT, ping, prompt, reference_tokens, sampling
from splitinfer_testing.reliability.harness import HOST, Dealer, TcpRelay


@dataclass
class AuthResult:
    cases: list = field(default_factory=list)  # (case, expected, outcome, passed)
    server_alive: bool = False

    @property
    def passed(self) -> int:
        return sum(c[3] for c in self.cases)


def _refused(srv: SplitServer, curve, fields: dict) -> tuple[bool, str]:
    """A client with these keys gets nothing: no reply, and no request reached the server's handler."""
    before = srv.stats.requests
    replies = []
    with Dealer(srv.url, curve=curve, timeout_ms=400) as d:
        for op, f in (("ping", {}), ("open", fields)):
            try:
                replies.append(d.call(op, **f))
            except zmq.Again:  # not even sent: no connection completed its handshake
                replies.append(None)
    reached = srv.stats.requests - before
    ok = replies == [None, None] and reached == 0
    return ok, f"replies {sum(r is not None for r in replies)}, requests handled {reached}"


def _garbage_tcp(srv: SplitServer) -> tuple[bool, str]:
    """Raw TCP bytes at the ZMTP port (random bytes; a plaintext NULL-mechanism greeting)."""
    before = srv.stats.requests
    rnd = random.Random(5)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 16 + b"\x00" + b"\x00" * 31
    for payload in (bytes(rnd.randrange(256) for _ in range(2000)), greeting + b"\x04\x19\x05READY" + b"\x00" * 20):
        with socket.create_connection((HOST, srv.port), timeout=2) as s:
            s.sendall(payload)
            try:
                s.recv(4096)
            except OSError:
                pass
    return srv.stats.requests == before, f"requests handled {srv.stats.requests - before}"


def _hidden_leaks(link, capture: bytes, chunk: int = 16) -> tuple[int, int]:
    """(chunks of the hidden-state bytes found in the capture, chunks looked for)."""
    found = total = 0
    for _, frames, _ in link.history:
        buf = bytes(frames[1])
        for i in range(0, len(buf) - chunk + 1, chunk * 4):
            total += 1
            found += buf[i:i + chunk] in capture
    return found, total


def _captured_generation(lm, srv: SplitServer, curve, n: int = 6):
    with TcpRelay(srv.port) as relay:
        gen = remote_generator(lm, [CUT], relay.url, codec="none", sampling=sampling(4), timeout_s=15, retries=0,
                               curve=curve)
        try:
            out = gen.generate(prompt(4, lm.vocab_size), n, stop_at_eos=False)
            found, total = _hidden_leaks(gen.link, bytes(relay.up))
        finally:
            gen.link.close()
        up, down = bytes(relay.up), bytes(relay.down)
    plain_markers = (lm.fingerprint.encode() in up) + (b"fingerprint" in up) + (b"tok" in down)
    return out.token_ids, found, total, plain_markers


def run_auth(lm, key_dir: str | Path) -> AuthResult:
    """CurveZMQ: who gets service, who does not, and what a sniffer on the wire sees."""
    from splitinfer.transport.keys import create_keypair, make_key_folder
    from splitinfer.transport.server import CurveConfig

    d = Path(key_dir)
    make_key_folder(d / "keys", ("client", "other"))
    create_keypair(d / "stranger", "client")  # a valid pair the server has never seen
    create_keypair(d / "rogue", "server")  # a server key the client was not given
    allowed = load_client_curve_keys(d / "keys")
    import zmq.auth

    s_pub, s_sec = zmq.auth.load_certificate(str(d / "stranger" / "client.key_secret"))
    o_pub, o_sec = zmq.auth.load_certificate(str(d / "keys" / "other.key_secret"))
    rogue_pub, _ = zmq.auth.load_certificate(str(d / "rogue" / "server.key"))
    res = AuthResult()
    fields = {"fingerprint": lm.fingerprint, "cuts": [CUT], "hidden": lm.hidden_size, "codec": {"name": "none"}}
    reference = reference_tokens(lm, 4, 6)
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20,
                      curve=CurveConfig(str(d / "keys" / "server.key_secret"),
                                        str(d / "keys" / "allowed_clients"))).start()
    plain = SplitServer(lm, [CUT], port=0, poll_ms=20).start()
    try:
        def case(name: str, expected: str, outcome: tuple[bool, str]) -> None:
            alive = srv.serving
            res.cases.append((name, expected, outcome[1] + ("" if alive else "; server DOWN"), outcome[0] and alive))

        case("no key (plaintext client)", "no service", _refused(srv, None, fields))
        case("unknown client key", "no service", _refused(srv, (s_pub, s_sec, allowed[2]), fields))
        case("allowed key, wrong server key", "no service", _refused(srv, (allowed[0], allowed[1], rogue_pub), fields))
        case("garbage TCP bytes", "no service", _garbage_tcp(srv))

        toks, found, total, markers = _captured_generation(lm, srv, allowed)
        case("allowed key", "same tokens as in-process", (toks == reference, f"tokens equal: {toks == reference}"))
        case("curve on: sniffed bytes", "no hidden/plain bytes",
             (found == 0 and markers == 0 and total > 0,
              f"{found}/{total} hidden-state chunks and {markers} plaintext markers in the capture"))
        toks, found, total, markers = _captured_generation(lm, plain, None)
        case("curve off: sniffed bytes (control)", "hidden bytes visible",
             (found == total > 0 and markers == 3 and toks == reference,
              f"{found}/{total} hidden-state chunks and {markers} plaintext markers in the capture"))

        with Dealer(srv.url, curve=allowed) as a, Dealer(srv.url, curve=(o_pub, o_sec, allowed[2])) as b:
            sid = a.call("open", **fields)["sid"]
            rep = b.call("close", sid=sid)
            kept = a.call("ping")["ok"] and srv.session_count == 1
            a.call("close", sid=sid)
        case("other allowed key on my session", "forbidden",
             (rep is not None and rep.get("code") == p.FORBIDDEN and kept, f"reply {rep and rep.get('code')}"))
        res.server_alive = srv.serving and ping(srv.url, allowed)
    finally:
        srv.stop()
        plain.stop()
    return res


