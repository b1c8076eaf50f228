"""The reliability scenarios, as plain functions that return their figures (tests assert on them;
`scripts/reliability_report.py` prints them). Everything runs on loopback, bounded in count and time.
"""

from __future__ import annotations

import gc
import random
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import zmq

from splitinfer.generation import SamplingConfig, in_process_generator
from splitinfer.transport import SplitServer, TransportError, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.client import load_client_curve_keys
from splitinfer.transport.reliability.harness import (
    CUT,
    HOST,
    Dealer,
    ForkedServer,
    TcpRelay,
    Zygote,
    percentile,
)
from splitinfer.transport.sessions import SessionLimits

if TYPE_CHECKING:
    from splitinfer.transport.reliability.hostile import HostileResult

SERVER_ARGS = ("--max-message-bytes", "65536", "--max-tokens", "512")  # small caps: oversize is cheap to send
MAX_MESSAGE_BYTES = 65536


def prompt(i: int, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randint(3, vocab, (1, 4 + i % 5), generator=g)


def sampling(i: int) -> SamplingConfig:
    # Sampled, not greedy: a tiny random model's greedy text repeats one token, which would hide a
    # replayed or skipped step; seeded by (seed, position), so every run draws the same tokens.
    return SamplingConfig(temperature=0.8, top_k=40, seed=100 + i)


def reference_tokens(lm, i: int, new_tokens: int) -> list[int]:
    """The single-client, fault-free output of client i: the same split, in one process, no network."""
    gen = in_process_generator(lm, [CUT], sampling=sampling(i))
    return gen.generate(prompt(i, lm.vocab_size), new_tokens, stop_at_eos=False).token_ids


# -- hostile input ---------------------------------------------------------------------------------

def run_hostile(lm, server: ForkedServer, n_messages: int, seed: int | None = None,
                time_limit_s: float = 600.0) -> tuple[HostileResult, bool, bool]:
    """(tally, victim session still consistent, a good generation afterwards equals its reference)."""
    from splitinfer.transport.reliability.hostile import HostileDriver  # needs hypothesis

    driver = HostileDriver(server.url, lm.fingerprint, [CUT], lm.hidden_size, MAX_MESSAGE_BYTES,
                           rss_of=server.rss, is_alive=server.alive)
    try:
        result = driver.run(n_messages, seed=seed, time_limit_s=time_limit_s)
        consistent = result.server_alive and driver.victim_still_consistent()
    finally:
        driver.close()
    good = False
    if server.alive():
        gen = remote_generator(lm, [CUT], server.url, codec="none", sampling=sampling(0), timeout_s=15, retries=0)
        try:
            good = gen.generate(prompt(0, lm.vocab_size), 12, stop_at_eos=False).token_ids == \
                reference_tokens(lm, 0, 12)
        finally:
            gen.link.close()
    return result, consistent, good


def run_hostile_authenticated(lm, key_dir: str | Path, n_messages: int = 1000,
                              time_limit_s: float = 120.0) -> tuple[HostileResult, bool, bool, int]:
    """The same hostile plans from an allowed CurveZMQ client (the session-owner checks run on every
    message). Returns (tally, sessions consistent, server alive, `forbidden` replies)."""
    from splitinfer.transport.keys import make_key_folder
    from splitinfer.transport.reliability.hostile import HostileDriver  # needs hypothesis
    from splitinfer.transport.server import CurveConfig

    keys = make_key_folder(Path(key_dir) / "keys", ("client",))
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20, max_message_bytes=MAX_MESSAGE_BYTES,
                      curve=CurveConfig(str(keys / "server.key_secret"), str(keys / "allowed_clients"))).start()
    try:
        def alive() -> bool:
            return srv._thread is not None and srv._thread.is_alive()

        driver = HostileDriver(srv.url, lm.fingerprint, [CUT], lm.hidden_size, MAX_MESSAGE_BYTES, is_alive=alive,
                               curve=load_client_curve_keys(keys))
        try:
            result = driver.run(n_messages, time_limit_s=time_limit_s)
            consistent = result.server_alive and driver.victim_still_consistent()
        finally:
            driver.close()
        return result, consistent, alive(), srv.info()["errors"].get(p.FORBIDDEN, 0)
    finally:
        srv.stop()


# -- faults ----------------------------------------------------------------------------------------

@dataclass
class KillResult:
    kills: int = 0
    kill_steps: list = field(default_factory=list)  # steps the client had done when each SIGKILL landed
    exit_codes: list = field(default_factory=list)
    replays: int = 0
    resends: int = 0
    identical: bool = False
    tokens: int = 0
    reference_text: str = ""
    text: str = ""
    seconds: float = 0.0
    error: str = ""


def run_kill_restart(lm, zygote: Zygote, kills: int = 4, new_tokens: int = 40,
                     timeout_s: float = 1.0) -> KillResult:
    """SIGKILL the server process `kills` times during one generation, restarting it on the same port
    each time; the client (Lazy Pirate + replay) must end with exactly the fault-free text.

    The second kill (when kills >= 2) lands while the client is replaying its session into the server
    that replaced the first one; the others land after given decode steps. The client uses the
    project's default codec, so the replay resends the encoded frames it kept."""
    res = KillResult()
    primary = zygote.spawn(args=SERVER_ARGS)
    procs = [primary]
    ids, smp = prompt(7, lm.vocab_size), sampling(7)
    try:
        primary.wait_ready()
        ref = remote_generator(lm, [CUT], primary.url, sampling=smp, timeout_s=10, retries=0)
        try:
            expected = ref.generate(ids, new_tokens, stop_at_eos=False)
        finally:
            ref.link.close()
        res.reference_text = expected.text

        gen = remote_generator(lm, [CUT], primary.url, sampling=smp, timeout_s=timeout_s, retries=30)
        link = gen.link
        n_step_kills = kills - (kills >= 2)
        at = [round((i + 1) * 0.7 * new_tokens / (n_step_kills + 1)) + 2 for i in range(n_step_kills)]
        triggers = [("step", k) for k in at]  # all in the first 70% of the generation
        if kills >= 2:
            triggers.insert(1, ("replay", 1))
        done = threading.Event()

        def reached(trigger) -> bool:
            return len(link.history) >= trigger[1] if trigger[0] == "step" else link.replays >= trigger[1]

        def killer() -> None:
            for trigger in triggers:
                deadline = time.monotonic() + 120
                while not reached(trigger) and not done.is_set() and time.monotonic() < deadline:
                    time.sleep(0.001)
                if done.is_set():
                    return
                res.kill_steps.append(len(link.history) if trigger[0] == "step" else f"replay of {trigger[1]}")
                res.exit_codes.append(procs[-1].sigkill())
                res.kills += 1
                # a fresh process on the same port; the client rides out its start (timeouts, resends, replay)
                procs.append(zygote.spawn(primary.port, SERVER_ARGS))

        t = threading.Thread(target=killer, daemon=True)
        t0 = time.monotonic()
        t.start()
        try:
            out = gen.generate(ids, new_tokens, stop_at_eos=False)
            res.text, res.tokens = out.text, len(out.token_ids)
            res.identical = out.token_ids == expected.token_ids and out.text == expected.text
        except TransportError as e:
            res.error = str(e)
        finally:
            done.set()
            t.join(30)
            res.seconds = time.monotonic() - t0
            res.replays, res.resends = link.replays, link.resends
            link.close()
    finally:
        for proc in procs:
            proc.kill()
    return res


# A client that needs only zmq and msgpack (starts in a blink): opens a session, prefills, then steps
# until killed, printing each step. Its frames are what RawCodec would send.
_CLIENT = """
import json, math, struct, sys, msgpack, zmq
url, fp, hidden, prefill = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sock = zmq.Context().socket(zmq.DEALER); sock.linger = 0; sock.connect(url)
def call(env, frames=()):
    sock.send_multipart([msgpack.packb(env), *frames])
    if not sock.poll(10000): sys.exit("no reply")
    rep = msgpack.unpackb(sock.recv_multipart()[-1])
    if not rep["ok"]: sys.exit(str(rep))
    return rep
def hidden_frames(t, k):
    h = {"codec": "none", "v": 1, "params": {}, "dtype": "float32", "shape": [1, t, hidden], "meta": {}}
    return [json.dumps(h).encode(), struct.pack(f"<{t * hidden}f", *(math.sin(k + i) for i in range(t * hidden)))]
sid = call({"v": 1, "op": "open", "rid": 1, "fingerprint": fp, "cuts": [2], "hidden": hidden,
            "codec": {"name": "none"}})["sid"]
pos = 0
for seq in range(1, 10000):
    t = prefill if seq == 1 else 1
    call({"v": 1, "op": "step", "rid": seq + 1, "sid": sid, "seq": seq, "start": pos}, hidden_frames(t, seq))
    pos += t
    print("step", seq, flush=True)
"""


@dataclass
class EvictionResult:
    kv_bytes_before: int = 0
    kv_bytes_after: int = -1
    sessions_after: int = -1
    evicted: int = 0
    seconds_to_evict: float = float("nan")
    tensors_tracked: int = 0
    tensors_alive_after: int = -1
    session_object_freed: bool = False
    served_after: bool = False


def run_client_killed(lm, idle_timeout_s: float = 1.0, prefill: int = 128) -> EvictionResult:
    """SIGKILL a client mid-session: the server evicts its session after the idle limit and every KV
    tensor of that session is garbage (weak references to them die)."""
    res = EvictionResult()
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20, limits=SessionLimits(idle_timeout_s=idle_timeout_s)).start()
    client = subprocess.Popen([sys.executable, "-c", _CLIENT, srv.url, lm.fingerprint, str(lm.hidden_size),
                               str(prefill)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(iter(client.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not any(line.startswith("step 5") for line in lines) and time.monotonic() < deadline:
            if client.poll() is not None:
                raise RuntimeError(f"client exited early: {''.join(lines)[-500:]}")
            time.sleep(0.01)
        with srv._lock:  # weak references only: holding the objects would keep them alive
            session_ref = [weakref.ref(s) for s in srv.sessions]
            tensor_refs = [weakref.ref(t) for s in srv.sessions for c in s.state.caches for t in c.tensors()]
        res.kv_bytes_before = srv.session_kv_bytes
        res.tensors_tracked = len(tensor_refs)
        client.kill()  # SIGKILL: no close, no goodbye
        client.wait(10)
        t_kill = time.monotonic()
        deadline = t_kill + idle_timeout_s + 10
        while srv.session_count and time.monotonic() < deadline:
            time.sleep(0.02)
        res.seconds_to_evict = time.monotonic() - t_kill
        res.sessions_after, res.kv_bytes_after = srv.session_count, srv.session_kv_bytes
        res.evicted = srv.info()["evicted"]
        gc.collect()
        res.tensors_alive_after = sum(r() is not None for r in tensor_refs)
        res.session_object_freed = len(session_ref) == 1 and session_ref[0]() is None
        gen = remote_generator(lm, [CUT], srv.url, codec="none", sampling=sampling(3), timeout_s=15, retries=0)
        try:
            res.served_after = gen.generate(prompt(3, lm.vocab_size), 8, stop_at_eos=False).token_ids == \
                reference_tokens(lm, 3, 8)
        finally:
            gen.link.close()
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(10)
        client.stdout.close()
        srv.stop()
    return res


# -- load ------------------------------------------------------------------------------------------

@dataclass
class LoadResult:
    clients: int = 0
    steps_per_client: int = 0
    errors: list = field(default_factory=list)
    mismatched: int = 0  # outputs that differ from their single-client reference
    lost_steps: int = 0
    duplicated_steps: int = 0
    resends: int = 0
    replays: int = 0
    server_steps: int = 0  # steps the server applied during the run (from its `info`)
    expected_steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    latencies: list = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1000


def _server_steps(url: str) -> int:
    with Dealer(url) as d:
        rep = d.call("info")
    if not rep or not rep.get("ok"):
        raise RuntimeError(f"no info from {url}: {rep}")
    return rep["steps"]


def run_load(lm, url: str, clients: int = 32, steps: int = 50, timeout_s: float = 60.0) -> LoadResult:
    """`clients` threads, each its own RemoteLink, all start together and run 1 prefill + `steps` decode
    steps; each output must equal its single-client reference and every step must be applied once."""
    res = LoadResult(clients=clients, steps_per_client=steps)
    new_tokens = steps + 1  # the prefill step gives the first token, then `steps` decode steps
    refs = [reference_tokens(lm, i, new_tokens) for i in range(clients)]
    gens = [remote_generator(lm, [CUT], url, codec="none", sampling=sampling(i), timeout_s=timeout_s, retries=0)
            for i in range(clients)]
    outs: list = [None] * clients
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        try:
            barrier.wait(60)
            outs[i] = gens[i].generate(prompt(i, lm.vocab_size), new_tokens, stop_at_eos=False)
        except Exception as e:  # counted, reported
            res.errors.append(f"client {i}: {type(e).__name__}: {e}"[:300])

    before = _server_steps(url)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    try:
        for t in threads:
            t.start()
        barrier.wait(60)
        t0 = time.monotonic()
        for t in threads:
            t.join(timeout_s * 3)
        res.seconds = time.monotonic() - t0
        res.server_steps = _server_steps(url) - before
    finally:
        for g in gens:
            g.link.close()
    res.expected_steps = clients * new_tokens
    for i, (gen, out) in enumerate(zip(gens, outs, strict=True)):
        if out is None:
            res.lost_steps += new_tokens
            continue
        res.tokens += len(out.token_ids)
        res.mismatched += out.token_ids != refs[i]
        res.latencies += out.decode_s
        link = gen.link
        res.resends += link.resends
        res.replays += link.replays
        starts = [start for start, _, _ in link.history]
        p_len = prompt(i, lm.vocab_size).shape[1]
        want = [0, *range(p_len, p_len + steps)]
        res.lost_steps += len(set(want) - set(starts))
        res.duplicated_steps += len(starts) - len(set(starts))
    # Steps the server applied beyond one per client step: retries applied twice, or replays.
    res.duplicated_steps += max(0, res.server_steps - res.expected_steps)
    return res


# -- authentication and the wire ---------------------------------------------------------------------

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
            alive = srv._thread is not None and srv._thread.is_alive()
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
        res.server_alive = srv._thread is not None and srv._thread.is_alive() and _ping(srv.url, allowed)
    finally:
        srv.stop()
        plain.stop()
    return res


def _ping(url: str, curve) -> bool:
    with Dealer(url, curve=curve) as d:
        rep = d.call("ping", timeout_ms=2000)
    return bool(rep and rep.get("ok"))



# -- abusive clients ---------------------------------------------------------------------------------

@dataclass
class AbuseResult:
    flood_sent: int = 0  # requests from a client that never reads its replies
    churn_connections: int = 0  # connections opened, sent one request and dropped without reading
    good_identical: bool = False  # a well-behaved client's generation meanwhile
    good_seconds: float = float("nan")
    rss_before: int = 0
    rss_after: int = 0
    server_alive: bool = False


def run_abuse(lm, server: ForkedServer, flood: int = 20_000, churn: int = 300) -> AbuseResult:
    """A client that floods requests and never reads the replies, and a stream of connections that
    each send one request and vanish, while a good client generates: it must get exactly its reference
    text, and the server's memory must stay flat (its per-peer reply queues are bounded by SNDHWM)."""
    reference = reference_tokens(lm, 5, 16)
    gen = remote_generator(lm, [CUT], server.url, codec="none", sampling=sampling(5), timeout_s=30, retries=0)
    try:
        warm = gen.generate(prompt(5, lm.vocab_size), 16, stop_at_eos=False)  # first forward passes: warm-up
    finally:
        gen.link.close()
    res = AbuseResult(rss_before=server.rss())
    stop = threading.Event()

    def flooder() -> None:
        with Dealer(server.url, timeout_ms=2000) as d:
            d.sock.sndhwm = flood
            ping = p.pack(p.request("info", 1))
            while res.flood_sent < flood and not stop.is_set():
                try:
                    d.sock.send(ping, zmq.NOBLOCK)
                    res.flood_sent += 1
                except zmq.Again:
                    time.sleep(0.001)

    def churner() -> None:
        ping = p.pack(p.request("info", 1))
        for _ in range(churn):
            if stop.is_set():
                return
            with Dealer(server.url, timeout_ms=2000) as d:
                d.send([ping])
            res.churn_connections += 1

    threads = [threading.Thread(target=f, daemon=True) for f in (flooder, churner)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)  # let the abuse get going
        gen = remote_generator(lm, [CUT], server.url, codec="none", sampling=sampling(5), timeout_s=30, retries=0)
        try:
            t0 = time.monotonic()
            out = gen.generate(prompt(5, lm.vocab_size), 16, stop_at_eos=False)
            res.good_seconds = time.monotonic() - t0
        finally:
            gen.link.close()
        res.good_identical = out.token_ids == reference == warm.token_ids
        for t in threads:
            t.join(120)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    time.sleep(0.5)  # let the server work through what is queued
    res.server_alive = server.alive() and _server_steps(server.url) >= 0
    res.rss_after = server.rss()
    return res


# -- fair sharing --------------------------------------------------------------------------------------

@dataclass
class FairShareResult:
    hog_sessions: int = 0  # sessions the greedy client got before its quota refused it
    hog_refusal: str | None = None  # the error code of that refusal
    hog_step_codes: dict = field(default_factory=dict)  # replies to its burst of prefills, by outcome
    other_sessions: int = 0  # sessions another client still got meanwhile
    other_identical: bool = False  # that client's generation equals its single-client reference
    server_alive: bool = False


def run_fair_share(lm, key_dir: str | Path, per_client: int = 4, tokens_per_s: float = 200.0,
                   burst: int = 64) -> FairShareResult:
    """Two authenticated clients on a curve server with per-client quotas (batching on): one tries to
    hold every session and to push prefills faster than its token rate; the other must still get its
    sessions and exactly its reference text."""
    from splitinfer.transport.keys import make_key_folder
    from splitinfer.transport.server import CurveConfig

    d = Path(key_dir)
    make_key_folder(d / "keys", ("client", "other"))
    hog_keys = load_client_curve_keys(d / "keys")
    import zmq.auth

    o_pub, o_sec = zmq.auth.load_certificate(str(d / "keys" / "other.key_secret"))
    other_keys = (o_pub, o_sec, hog_keys[2])
    limits = SessionLimits(max_sessions=4 * per_client, max_sessions_per_client=per_client,
                           client_tokens_per_s=tokens_per_s, client_burst_tokens=burst)
    srv = SplitServer(lm, [CUT], port=0, poll_ms=20, limits=limits,
                      curve=CurveConfig(str(d / "keys" / "server.key_secret"),
                                        str(d / "keys" / "allowed_clients"))).start()
    res = FairShareResult()
    fields = {"fingerprint": lm.fingerprint, "cuts": [CUT], "hidden": lm.hidden_size, "codec": {"name": "none"}}
    try:
        with Dealer(srv.url, curve=hog_keys) as hog:
            sids = []
            for _ in range(4 * per_client):  # tries to take every session on the server
                rep = hog.call("open", **fields)
                if not rep["ok"]:
                    res.hog_refusal = rep["code"]
                    break
                sids.append(rep["sid"])
            res.hog_sessions = len(sids)
            from splitinfer.transport.payload import RawCodec

            frames = RawCodec().encode(torch.randn(1, burst // 2, lm.hidden_size)).to_frames()
            for i, sid in enumerate(sids):  # a burst of prefills: burst // 2 tokens each, all at once
                hog.send([p.pack(p.request("step", 1000 + i, sid=sid, seq=1, start=0)), *frames])
            codes: dict = {}
            for _ in sids:
                rep = hog.recv()
                key = "ok" if rep and rep["ok"] else (rep or {}).get("code", "no reply")
                codes[key] = codes.get(key, 0) + 1
            res.hog_step_codes = codes
            gens = [remote_generator(lm, [CUT], srv.url, codec="none", sampling=sampling(6), curve=other_keys,
                                     timeout_s=15, retries=0) for _ in range(2)]
            try:
                outs = [g.generate(prompt(6, lm.vocab_size), 8, stop_at_eos=False).token_ids for g in gens]
                res.other_sessions = len(gens)
                res.other_identical = all(o == reference_tokens(lm, 6, 8) for o in outs)
            finally:
                for g in gens:
                    g.link.close()
        res.server_alive = srv._thread is not None and srv._thread.is_alive() and _ping(srv.url, hog_keys)
    finally:
        srv.stop()
    return res
