"""Replayed device sessions against a split server: load that measures the server, not the device halves.

For each prompt the device half's frames of its greedy trajectory are recorded once, in process, with the
unbatched engine (`record_trajectories`; its tokens are the reference every reply is checked against).
Load-generator processes then replay them over ZeroMQ with the wire protocol (`transport.protocol`): each
session sends its prefill and, on every reply, its next recorded decode step (`replay_sessions`), so N
sessions load a server with no device compute of their own. `run_load` starts them together and returns
throughput, step and TTFT percentiles (`splitinfer.stats`), the server's CPU and RSS, and the replies
that differ from the reference. `ServeProcess` is a `splitinfer serve` process to aim it at.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from splitinfer.stats import p50, p99

STEP_TIMEOUT_S = 120  # a step with no reply for this long fails the run (the server is stuck, not slow)


def record_trajectories(lm, cut: int, tokens: int, prompts: Sequence) -> list[dict]:
    """Per prompt (a text, or token ids (1, T) for a model without a tokenizer): the device half's raw
    frames for the prefill and each decode step of its greedy trajectory through the unbatched split, and
    the tokens it picks."""
    import torch

    from splitinfer.models import split_model
    from splitinfer.split import ServerHalf
    from splitinfer.transport.payload import RawCodec

    stages = split_model(lm, [cut])
    device, engine = stages[0], ServerHalf(stages[1:])  # the engine the server runs, in-process and unbatched
    out = []
    with torch.no_grad():
        for text in prompts:
            ids = lm.encode_prompt(text) if isinstance(text, str) else text
            cache, server = device.new_cache(), engine.session()
            h = device(ids, cache=cache)
            frames = [[bytes(f) for f in RawCodec().encode(h).to_frames()]]
            toks = [int(server.forward(h, 0)[0, -1].argmax())]
            for _ in range(tokens - 1):
                h = device(torch.tensor([[toks[-1]]]), cache=cache)
                frames.append([bytes(f) for f in RawCodec().encode(h).to_frames()])
                toks.append(int(server.forward(h, server.position)[0, -1].argmax()))
            out.append({"prompt_tokens": int(ids.shape[1]), "frames": frames, "tokens": toks})
    return out


def session_fields(lm, cut: int) -> dict:
    """The `open` fields of a replayed session: raw frames, greedy sampling."""
    return {"fingerprint": lm.fingerprint, "cuts": [cut], "hidden": lm.hidden_size, "codec": {"name": "none"},
            "sampling": {"temperature": 0.0}}


def replay_sessions(url: str, fields: dict, trajs: list[dict], session_ids: list[int], start_at: float,
                    results) -> None:
    """One load generator (a process of its own; no torch): open the sessions, wait for `start_at`, replay
    session i's trajectory `trajs[i % len(trajs)]` step by step, close them, and put its timings on
    `results`."""
    import zmq

    from splitinfer.transport import protocol as p

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    rid = 0

    def send(op: str, frames=(), **kw) -> int:
        nonlocal rid
        rid += 1
        sock.send_multipart([p.pack(p.request(op, rid, **kw)), *frames])
        return rid

    def reply(what: str) -> dict:
        if not sock.poll(STEP_TIMEOUT_S * 1000):
            raise RuntimeError(f"{url}: no reply to {what} in {STEP_TIMEOUT_S} s")
        rep = p.unpack(sock.recv())
        if not rep["ok"]:
            raise RuntimeError(f"{url}: {what} failed: {rep}")
        return rep

    sessions = []
    for i in session_ids:
        send("open", **fields)
        sessions.append({"sid": reply("open")["sid"], "traj": trajs[i % len(trajs)], "k": 0, "pos": 0})
    by_rid: dict[int, dict] = {}

    def step(s: dict) -> None:
        r = send("step", s["traj"]["frames"][s["k"]], sid=s["sid"], seq=s["k"] + 1, start=s["pos"])
        s["sent"], by_rid[r] = time.time(), s

    lat, ttft, decode, mismatched, tokens = [], [], [], 0, 0
    while time.time() < start_at:
        time.sleep(0.001)
    first = last = time.time()
    for s in sessions:
        step(s)
    while by_rid:
        rep = reply("a step")
        last = now = time.time()
        s = by_rid.pop(rep["rid"])
        t = s["traj"]
        if s["k"]:
            lat.append(now - s["sent"])
            decode.append((s["sent"], now))
        else:
            ttft.append(now - s["sent"])
            s["prefilled"] = now
        mismatched += rep["tok"] != t["tokens"][s["k"]]
        tokens += 1
        s["pos"] += t["prompt_tokens"] if s["k"] == 0 else 1
        s["k"] += 1
        if s["k"] < len(t["tokens"]):
            step(s)
    for s in sessions:
        send("close", sid=s["sid"])
        reply("close")
    sock.close(linger=0)
    ctx.term()
    results.put({"lat": lat, "ttft": ttft, "mismatched": mismatched, "tokens": tokens, "first": first, "last": last,
                 "decode": decode, "prefilled": max(s["prefilled"] for s in sessions)})


class ServeProcess:
    """`python -m splitinfer serve` on a free loopback port, with its CPU time and RSS.

    Both are read from /proc (Linux), so the runtime package needs no psutil (tests/test_runtime_imports.py);
    on a system without /proc the benchmark refuses in one line."""

    def __init__(self, model: str, cut: int, flags: Sequence[str] = (), env: dict | None = None) -> None:
        cmd = [sys.executable, "-m", "splitinfer", "serve", "--model", model, "--cut", str(cut), "--port", "0",
               *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        seen = []
        while "ready" not in (line := self.proc.stdout.readline()):
            seen.append(line)
            if not line:
                raise RuntimeError(f"server did not start: {''.join(seen)[-2000:]}")
        self.url = re.search(r" on (tcp://[\d.]+:\d+)", line).group(1)
        self.proc_dir = Path(f"/proc/{self.proc.pid}")
        if not self.proc_dir.is_dir():
            self.close()
            raise RuntimeError(f"ServeProcess reads the server's CPU time and RSS from /proc; {self.proc_dir} does "
                               "not exist on this system (Linux only): run the serving benchmark on Linux")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        fields = (self.proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)

    def rss_mb(self) -> float:
        """Resident set size of the server process, MiB."""
        kb = re.search(r"VmRSS:\s+(\d+) kB", (self.proc_dir / "status").read_text())
        return int(kb.group(1)) / 1024 if kb else float("nan")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_load(server: ServeProcess, fields: dict, trajs: list[dict], n: int, generators: int) -> dict:
    """N replayed sessions, split over `generators` processes, all starting at once. Aggregate tokens/s
    (every reply, prefills included, over first send to last reply), decode tokens/s (decode replies to
    steps sent once every session had its first token), step and TTFT p50/p99, server CPU (share of a core
    and ms per token), RSS, and the replies that differ from the recorded tokens."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    k = max(1, min(generators, n))
    start_at = time.time() + 0.5 + 0.02 * n  # after every generator has opened its sessions
    procs = [ctx.Process(target=replay_sessions, args=(server.url, fields, trajs, list(range(g, n, k)), start_at,
                                                       results)) for g in range(k)]
    cpu0 = server.cpu_s()
    for pr in procs:
        pr.start()
    outs = [results.get(timeout=900) for _ in procs]
    for pr in procs:
        pr.join(30)
    cpu = server.cpu_s() - cpu0
    first, last = min(o["first"] for o in outs), max(o["last"] for o in outs)
    lat, ttft = [x for o in outs for x in o["lat"]], [x for o in outs for x in o["ttft"]]
    wall, tokens = last - first, sum(o["tokens"] for o in outs)
    t_pre = max(o["prefilled"] for o in outs)  # from here all N sessions decode, no prefill left
    after = [r for o in outs for (sent, r) in o["decode"] if sent >= t_pre]
    return {"clients": n, "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
            "decode_tok_per_s": len(after) / (max(after) - t_pre) if len(after) > 1 else float("nan"),
            "step_p50_ms": p50(lat) * 1e3, "step_p99_ms": p99(lat) * 1e3,
            "ttft_p50_ms": p50(ttft) * 1e3, "ttft_p99_ms": p99(ttft) * 1e3,
            "server_cpu": cpu / wall, "server_cpu_ms_per_tok": cpu * 1e3 / tokens, "server_rss_mb": server.rss_mb(),
            "mismatched": sum(o["mismatched"] for o in outs)}


def run_live(server_url: str, model: str, cut: int, prompts: Sequence[str], n: int, tokens: int,
             env: dict | None = None) -> dict:
    """N real device halves at once: `splitinfer generate --server` processes (one torch thread each, fp32,
    greedy) on prompts[i % len(prompts)]; their answers and the wall time for all of them."""
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "splitinfer.cli", "generate", prompts[i % len(prompts)],
                               "--server", server_url, "--cut", str(cut), "--codec", "fp32", "--threads", "1",
                               "--max-new-tokens", str(tokens), "--model", model],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    outs = [pr.communicate(timeout=1800) for pr in procs]
    wall = time.time() - t0
    bad = [e[-300:] for (_, e), pr in zip(outs, procs, strict=True) if pr.returncode]
    if bad:
        raise RuntimeError(f"generate failed: {bad[0]}")
    return {"texts": [o.rstrip("\n") for o, _ in outs], "wall_s": wall}
