"""Fault scenarios for the topologies, with real server processes (forked by a `Zygote`) on loopback:
a relay chain (device -> edge -> cloud) whose edge or cloud is SIGKILLed and restarted mid-generation,
and replicas of which one is SIGKILLed while many clients generate. Each returns its figures; the
tests (tests/reliability/test_topologies.py) assert on them and scripts/bench_failover.py prints them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from splitinfer.split import in_process_generator
from splitinfer.transport.client import TransportError
from splitinfer.transport.topology import connect
from splitinfer_testing.reliability.common import prompt, sampling
from splitinfer_testing.reliability.harness import ForkedServer, Zygote, percentile

EDGE_CUTS = [1, 3]  # tiny-llama has 4 layers: the device runs [0, 1), the edge [1, 3), the cloud [3, 4) + head


def spawn_chain(zygote: Zygote, hop_timeout_s: float = 1.0) -> tuple[ForkedServer, ForkedServer]:
    """(edge, cloud) processes: the cloud serves from layer 3, the edge runs [1, 3) and forwards to it."""
    cloud = zygote.spawn(args=("--cut", str(EDGE_CUTS[1]))).wait_ready()
    edge = zygote.spawn(args=edge_args(cloud.url, hop_timeout_s)).wait_ready()
    return edge, cloud


def edge_args(next_url: str, hop_timeout_s: float = 1.0) -> tuple[str, ...]:
    return ("--cut", ",".join(map(str, EDGE_CUTS)), "--next", next_url, "--hop-timeout", str(hop_timeout_s))


@dataclass
class RelayKillResult:
    victim: str
    expected: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    kill_step: int = -1
    exit_code: int | None = None
    replays: int = 0
    error: str | None = None
    seconds: float = 0.0

    @property
    def identical(self) -> bool:
        return self.error is None and self.tokens == self.expected


def run_relay_kill(lm, zygote: Zygote, edge: ForkedServer, cloud: ForkedServer, victim: str = "edge",
                   new_tokens: int = 24, kill_at: int = 8, seed: int = 5) -> tuple[RelayKillResult, ForkedServer]:
    """SIGKILL the edge (or the cloud) after `kill_at` tokens of one generation through the chain and
    start it again on the same port; the text must be the fault-free one through the same chain. Returns the result and
    the restarted process (which replaces the victim)."""
    res = RelayKillResult(victim)
    ids, smp = prompt(seed, lm.vocab_size), sampling(seed)
    ref = connect(lm, EDGE_CUTS, edge.url, codec="int8", sampling=smp, timeout_s=10, retries=0)
    try:  # the fault-free text through the same chain (int8 on both hops: not the in-process chain's)
        res.expected = ref.generate(ids, new_tokens, stop_at_eos=False).token_ids
    finally:
        ref.link.close()
    gen = connect(lm, EDGE_CUTS, edge.url, codec="int8", sampling=smp, timeout_s=1.0, retries=30)
    target = edge if victim == "edge" else cloud
    replacement: list[ForkedServer] = []

    def on_token(tokens: list[int]) -> None:
        if len(tokens) == kill_at:  # runs on the generating thread: the kill lands between two steps
            res.kill_step = len(tokens)
            res.exit_code = target.sigkill()
            args = edge_args(cloud.url) if victim == "edge" else ("--cut", str(EDGE_CUTS[1]))
            replacement.append(zygote.spawn(target.port, args))

    t0 = time.monotonic()
    try:
        res.tokens = gen.generate(ids, new_tokens, stop_at_eos=False, on_token=on_token).token_ids
    except TransportError as e:
        res.error = str(e)
    finally:
        res.seconds = time.monotonic() - t0
        res.replays = gen.link.replays
        gen.link.close()
    return res, (replacement[0].wait_ready() if replacement else target)


@dataclass
class FailoverResult:
    clients: int
    identical: int = 0
    errors: list[str] = field(default_factory=list)
    failover_s: list[float] = field(default_factory=list)  # one per session moved to another replica
    moved_clients: int = 0
    exit_code: int | None = None
    seconds: float = 0.0

    def summary(self) -> dict:
        f = sorted(self.failover_s)
        return {"clients": self.clients, "identical": self.identical, "moved": self.moved_clients,
                "failovers": len(f), "failover_p50_s": percentile(f, 50) if f else float("nan"),
                "failover_p99_s": percentile(f, 99) if f else float("nan"), "errors": len(self.errors),
                "seconds": round(self.seconds, 2)}


def run_replica_failover(lm, zygote: Zygote, replicas: list[ForkedServer], clients: int = 16, new_tokens: int = 24,
                         kill_after_tokens: int | None = None, timeout_s: float = 1.0, retries: int = 1,
                         codec: str = "int8") -> FailoverResult:
    """`clients` threads generate at once, spread over the replicas (client i starts on replica i mod
    N); replica 0 is SIGKILLed once the clients together have `kill_after_tokens` tokens (a third of
    the run by default). Every client must end with its in-process text; `failover_s` holds how long
    each moved session's interrupted step took (detection by `timeout_s` x (retries + 1) + replay)."""
    res = FailoverResult(clients)
    urls = ",".join(r.url for r in replicas)
    kill_after = clients * new_tokens // 3 if kill_after_tokens is None else kill_after_tokens
    expected = [in_process_generator(lm, [2], codec=codec, sampling=sampling(i)).generate(
        prompt(i, lm.vocab_size), new_tokens, stop_at_eos=False).token_ids for i in range(clients)]
    produced = [0] * clients
    lock, killed = threading.Lock(), threading.Event()
    links = []

    def on_token(i: int):
        def note(tokens: list[int]) -> None:
            with lock:
                produced[i] = len(tokens)
                due = not killed.is_set() and sum(produced) >= kill_after
                if due:
                    killed.set()
            if due:
                res.exit_code = replicas[0].sigkill()
        return note

    def client(i: int) -> None:
        gen = connect(lm, [2], urls, codec=codec, sampling=sampling(i), timeout_s=timeout_s, retries=retries,
                      start=i % len(replicas))
        links.append(gen.link)
        try:
            out = gen.generate(prompt(i, lm.vocab_size), new_tokens, stop_at_eos=False, on_token=on_token(i))
            with lock:
                res.identical += out.token_ids == expected[i]
        except Exception as e:  # reported, and the test fails on it
            with lock:
                res.errors.append(f"client {i}: {type(e).__name__}: {e}")
        finally:
            gen.link.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    res.seconds = time.monotonic() - t0
    for link in links:
        res.failover_s += link.failover_s
        res.moved_clients += link.failovers > 0
    if any(t.is_alive() for t in threads):
        res.errors.append("a client was still running after 300 s")
    return res
