"""Load scenarios: many clients at once, abusive clients (floods, connection churn), per-client quotas
(one client trying to take every session)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import zmq

from splitinfer.transport import SplitServer, remote_generator
from splitinfer.transport import protocol as p
from splitinfer.transport.client import load_client_curve_keys
from splitinfer.transport.sessions import SessionLimits
from splitinfer_testing.reliability.common import CUT, ping, prompt, reference_tokens, sampling
from splitinfer_testing.reliability.harness import Dealer, ForkedServer, percentile


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
        res.server_alive = srv.serving and ping(srv.url, hog_keys)
    finally:
        srv.stop()
    return res
