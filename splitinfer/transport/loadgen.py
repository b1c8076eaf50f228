"""Replayed device sessions against a split server: load that measures the server, not the device halves.

For each prompt the device half's frames of its greedy trajectory are recorded once, in process, with the
unbatched engine (`record_trajectories`; its tokens are the reference every reply is checked against).
Load-generator processes then replay them over ZeroMQ with the wire protocol (`transport.protocol`): each
session sends its prefill and, on every reply, its next recorded decode step (`replay_sessions`), so N
sessions load a server with no device compute of their own. `run_load` starts them together and returns
throughput, step and TTFT percentiles (`splitinfer.stats`), the server's CPU and RSS, and the replies
that differ from the reference. `ServeProcess` is a `splitinfer serve` process to aim it at.

It also holds the engines of the two serving scripts, which stay recipes: `measure_transport` /
`transport_table` (scripts/bench_transport.py: split over ZeroMQ against unsplit `generate`) and the
lines, CSV, live check and batch profile of scripts/bench_serving.py.
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


# Split over ZeroMQ against unsplit `generate`, per prompt (`scripts/bench_transport.py` is the recipe).

TRANSPORT_LEGEND = (
    "(identical = prompts whose tokens all equal the unsplit model's; same_prefix = mean share of tokens "
    "before the first difference;\n decode ms = median per-token latency; ratio = split / unsplit "
    "(median of all tokens; per_prompt = median over prompts of each prompt's ratio, with its bootstrap\n"
    " 95 % interval over prompts; mean);\n"
    " wait = block (sleep in poll);\n"
    " up B/token = encoded hidden state + envelope per decode step; down = the reply;\n link_overhead = mean "
    "time per step in the link that the server did not spend computing: encode, sockets, decode, wake-ups;\n"
    " cpu ms/token = CPU time of device + server processes (prefill included) per generated token: "
    "the split's real cost, immune to waiting for a busy CPU; busy waiting counts as CPU)")


def measure_transport(lm, prompts: list, inproc, gens: dict, tokens: int, server_in_other_process: bool):
    """Per prompt: unsplit greedy `generate`, the in-process split (`inproc`) and every remote generator
    (`gens`: key -> generator whose link is a MeteredLink), after one warm-up each. Returns (rows, inproc):
    rows[key] the per-token and per-prompt samples of that generator (or its error), inproc those of the
    in-process split."""
    import statistics
    import time

    from splitinfer.metrics.quality import first_mismatch
    from splitinfer.split import timed_unsplit_generate

    med = statistics.median
    rows = {key: {"same": 0, "dec": [], "pre": [], "up_pre": [], "up": [], "down": [], "ref_dec": [], "ref_pre": [],
                  "agree": [], "overhead": [], "cpu": [], "ref_cpu": [], "prompt_ratio": [], "err": None}
            for key in gens}
    ip = {"dec": [], "ratio": [], "same": 0}
    timed_unsplit_generate(lm, prompts[0], 4)  # warm-up (first calls allocate and JIT-select kernels)
    inproc.generate(prompts[0], 4)
    for key, gen in gens.items():
        try:
            gen.generate(prompts[0], 4)
        except Exception as e:  # a codec still being written elsewhere: report, keep going
            rows[key]["err"] = f"{type(e).__name__}: {e}"
    t_start = time.perf_counter()
    for i, ids in enumerate(prompts):
        cpu0 = time.process_time()
        ref, ref_pre, ref_dec = timed_unsplit_generate(lm, ids, tokens)
        ref_cpu = (time.process_time() - cpu0) / len(ref)
        res = inproc.generate(ids, tokens)
        ip["dec"] += res.decode_s
        ip["same"] += res.token_ids == ref
        if res.decode_s and ref_dec:
            ip["ratio"].append(med(res.decode_s) / med(ref_dec))
        for key, gen in gens.items():
            r = rows[key]
            if r["err"]:
                continue
            before = gen.link.info()
            cpu0 = time.process_time()
            res = gen.generate(ids, tokens)
            cpu = time.process_time() - cpu0
            after = gen.link.info()
            server_s = after["compute_s"] - before["compute_s"]
            if server_in_other_process:  # the server's CPU time is in another process
                cpu += after["cpu_s"] - before["cpu_s"]
            r["cpu"].append(cpu / len(res.token_ids))
            r["ref_cpu"].append(ref_cpu)
            # transport overhead: time in link.step not spent computing on the server (all steps)
            r["overhead"].append((sum(gen.link.wall_s) - server_s) / len(gen.link.steps))
            r["same"] += res.token_ids == ref
            r["agree"].append(first_mismatch(res.token_ids, ref) / max(len(ref), 1))
            r["pre"].append(res.prefill_s)
            r["dec"] += res.decode_s
            r["ref_pre"].append(ref_pre)
            r["ref_dec"] += ref_dec
            if res.decode_s and ref_dec:
                r["prompt_ratio"].append(med(res.decode_s) / med(ref_dec))
            steps = gen.link.steps  # StepRecords: bytes each way, phase
            r["up_pre"].append(sum(s.up_bytes for s in steps if s.phase == "prefill"))
            r["up"] += [s.up_bytes for s in steps if s.phase == "decode"]
            r["down"] += [s.down_bytes for s in steps]
        print(f"  prompt {i + 1}/{len(prompts)} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    return rows, ip


def transport_table(rows: dict, inproc: dict, labels: dict, n_prompts: int) -> list[dict]:
    """The printed/CSV table: the in-process split first, then one row per (codec, wait) of `rows`
    (labels: codec name -> its label), ratios with bootstrap 95 % intervals over prompts."""
    import statistics

    from splitinfer.stats import bootstrap_interval

    med, mean = statistics.median, statistics.fmean
    table = []
    ref_all = [d for r in rows.values() for d in r["ref_dec"]] or inproc["dec"]
    if inproc["dec"]:
        table.append({"codec": "(in-process split, no network)", "wait": "-",
                      "identical": f"{inproc['same']}/{n_prompts}",
                      "decode_ms_unsplit": round(med(ref_all) * 1e3, 2),
                      "decode_ms_split": round(med(inproc["dec"]) * 1e3, 2),
                      "decode_ratio_median": round(med(inproc["dec"]) / med(ref_all), 3),
                      "decode_ratio_per_prompt": round(med(inproc["ratio"]), 3),
                      "per_prompt_ci95": "[{:.3f}, {:.3f}]".format(*bootstrap_interval(inproc["ratio"], "median"))})
    for (name, wait), r in rows.items():
        if r["err"]:
            table.append({"codec": labels[name], "wait": wait, "error": r["err"][:100]})
            continue
        d_ref, d, p_ref, pre = med(r["ref_dec"]), med(r["dec"]), med(r["ref_pre"]), med(r["pre"])
        table.append({
            "codec": labels[name], "wait": wait,
            "identical": f"{r['same']}/{n_prompts}",
            "same_prefix": f"{mean(r['agree']):.0%}",
            "decode_ms_unsplit": round(d_ref * 1e3, 2), "decode_ms_split": round(d * 1e3, 2),
            "decode_ratio_median": round(d / d_ref, 3),
            "decode_ratio_per_prompt": round(med(r["prompt_ratio"]), 3),
            "per_prompt_ci95": "[{:.3f}, {:.3f}]".format(*bootstrap_interval(r["prompt_ratio"], "median")),
            "decode_ratio_mean": round(mean(r["dec"]) / mean(r["ref_dec"]), 3),
            "prefill_ms_unsplit": round(p_ref * 1e3, 1), "prefill_ms_split": round(pre * 1e3, 1),
            "prefill_ratio": round(pre / p_ref, 3),
            "up_B_per_token": round(mean(r["up"]), 1),
            "down_B_per_token": round(mean(r["down"]), 1),
            "prefill_up_B": round(mean(r["up_pre"])),
            "link_overhead_ms": round(mean(r["overhead"]) * 1e3, 3),
            "cpu_ms_per_token_unsplit": round(mean(r["ref_cpu"]) * 1e3, 2),
            "cpu_ms_per_token_split": round(mean(r["cpu"]) * 1e3, 2),
            "cpu_ratio": round(mean(r["cpu"]) / mean(r["ref_cpu"]), 3),
        })
    return table


def table_lines(table: list[dict]) -> tuple[list[str], list[str]]:
    """(columns, lines): the table's columns in first-seen order and its rows left-aligned under them."""
    cols = list(dict.fromkeys(k for row in table for k in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in table)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(row.get(c, "")).ljust(widths[c]) for c in cols) for row in table]
    return cols, lines


def encode_prompts(lm, prompts: Sequence[str]) -> list:
    """The prompts as token ids; a model without a tokenizer (tiny-llama, for a smoke run) gets seeded
    random ids of similar lengths instead."""
    import torch

    if lm.tokenizer is not None:
        return [lm.encode_prompt(p) for p in prompts]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, lm.vocab_size, (1, 8 + len(p) // 8), generator=g) for p in prompts]


def median_ping_ms(url: str, lm, cut: int, n: int = 200) -> float:
    """Median empty round trip to a split server, ms (after one unmeasured ping)."""
    import statistics

    from splitinfer.transport import RemoteLink

    with RemoteLink(url, fingerprint=lm.fingerprint, cuts=[cut], hidden_size=lm.hidden_size) as probe:
        probe.ping()
        return statistics.median(probe.ping() for _ in range(n)) * 1e3


def start_idle_spinners() -> list[subprocess.Popen]:
    """One SCHED_IDLE busy loop per core: the scheduler runs it only when nothing else wants the core,
    so the vCPU never halts, and it takes no time from the benchmark's own processes."""
    code = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n")
    return [subprocess.Popen([sys.executable, "-c", code, str(c)]) for c in sorted(os.sched_getaffinity(0))]


# The serving benchmark's printed lines and CSV (`scripts/bench_serving.py` is the recipe).

SERVING_HEADER = (f"{'N':>3} {'batch':>5} {'tok/s':>7} {'dec t/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'TTFT50':>7} "
                  f"{'TTFT99':>7} {'cpu':>5} {'cpu ms/tok':>10} {'RSS MB':>7} {'mismatch':>8}")


def serving_line(n: int, mode: str, r: dict) -> str:
    """One row of `run_load`'s figures under SERVING_HEADER."""
    return (f"{n:>3} {mode:>5} {r['tok_per_s']:>7.1f} {r['decode_tok_per_s']:>7.1f} {r['step_p50_ms']:>7.1f} "
            f"{r['step_p99_ms']:>7.1f} {r['ttft_p50_ms']:>7.0f} {r['ttft_p99_ms']:>7.0f} {r['server_cpu']:>5.2f} "
            f"{r['server_cpu_ms_per_tok']:>10.1f} {r['server_rss_mb']:>7.0f} {r['mismatched']:>8}")


def write_serving_csv(rows: list[dict], path: Path) -> None:
    """results.csv: one row per (N, batching), floats to 4 significant digits."""
    from splitinfer.report.tables import write_csv

    write_csv(rows, path, float_format=".4g")


def batching_ratio_lines(rows: list[dict], ns: Sequence[int]) -> list[str]:
    """Batched over unbatched at the same N: tokens/s, decode tokens/s, server CPU per token, step p50,
    and the batched p99 against the unbatched p50."""
    lines = []
    for n in ns:
        off = next(r for r in rows if r["clients"] == n and r["batching"] == "off")
        on = next(r for r in rows if r["clients"] == n and r["batching"] == "on")
        lines.append(f"  N={n:>2}: tokens/s x{on['tok_per_s'] / off['tok_per_s']:.2f}, decode tokens/s x"
                     f"{on['decode_tok_per_s'] / off['decode_tok_per_s']:.2f}, server CPU per token x"
                     f"{on['server_cpu_ms_per_tok'] / off['server_cpu_ms_per_tok']:.2f}, step p50 x"
                     f"{on['step_p50_ms'] / off['step_p50_ms']:.2f}, on p99 {on['step_p99_ms']:.1f} ms vs off p50 "
                     f"{off['step_p50_ms']:.1f} ms")
    return lines


def live_check(lm, servers: dict, trajs: list[dict], prompts: Sequence[str], n: int, tokens: int, cut: int,
               env: dict | None = None) -> list[str]:
    """N real device halves (`run_live`) against each server (mode -> ServeProcess); their texts compared
    with the recorded in-process reference and between the modes. Returns the lines to print."""
    eos = getattr(lm.tokenizer, "eos_token_id", None)

    def upto_eos(toks):  # `generate` stops at the end-of-sequence token
        return toks[:toks.index(eos)] if eos in toks else toks

    refs = [lm.decode(upto_eos(trajs[i % len(trajs)]["tokens"])) for i in range(n)]
    live = {mode: run_live(srv.url, lm.name, cut, prompts, n, tokens, env=env) for mode, srv in servers.items()}
    lines = []
    for mode, res in live.items():
        same = sum(a.strip() == b.strip() for a, b in zip(res["texts"], refs, strict=True))
        lines.append(f"live: {n} `splitinfer generate --server` processes, batching {mode}: "
                     f"{n * tokens / res['wall_s']:.1f} tokens/s overall ({res['wall_s']:.0f} s "
                     f"with start-up), texts equal to the in-process reference: {same}/{n}")
    same = sum(a == b for a, b in zip(live["off"]["texts"], live["on"]["texts"], strict=True))
    lines.append(f"live: texts identical between batching off and on: {same}/{n}")
    return lines


def write_batch_profile(lm, cut: int, out: Path) -> None:
    """The batched decode step's time per batch size, in this process (no sockets): batch_profile.csv,
    the input of `splitinfer recommend --clients-per-server`."""
    from splitinfer.metrics.serving import measure_batch_profile

    prof = measure_batch_profile(lm, cut)
    prof.write_csv(out / "batch_profile.csv")
    print("batched decode step (forward_batch, context 64): " + ", ".join(
        f"{b}: {1e3 * s:.1f} ms" for b, s in zip(prof.batch_sizes, prof.step_s, strict=True)), flush=True)
