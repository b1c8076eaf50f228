"""Serving many devices: one split server, N concurrent sessions, continuous batching off vs on in one run.

    python scripts/bench_serving.py                          # real model, cut 15, N = 1..64, ~6 min here
    python scripts/bench_serving.py --clients 1,8,32 --tokens 16 --out /tmp/serving

Two server processes (`python -m splitinfer serve`, one with --no-batching) serve the real
model at cut 15. To measure the server rather than this machine's spare CPU, the device halves do not run
live: for each prompt (mixed lengths) the device-half outputs of its greedy trajectory are computed once
here (with the unbatched in-process split, which is also the text reference), and a few load-generator
processes replay them: each session sends its prefill, then, on every reply, the next recorded decode
step, and checks the reply's token against the recorded one. All sessions of a run start together.

Per (N, batching): aggregate tokens/s (generated tokens of all sessions / wall time from the first send
to the last reply; it includes every prefill), decode tokens/s (decode replies to steps sent after the
last session got its first token, over the time from then to the last reply: all N sessions decoding,
no prefill left), decode-step latency p50/p99 (send -> reply), time to first token p50/p99 (prefill
send -> reply; all N prefills arrive at once), server CPU (process CPU seconds / wall) and RSS, and the
number of replies that differ from the reference tokens. Server CPU milliseconds per generated token
is the figure a shared machine cannot skew much (it counts the server's own CPU time, not the share
of the cores it got): 1000 / it is the tokens/s one dedicated core would give. Writes results.csv and serving_throughput.png
to --out (default experiments/serving_throughput/). Figures on a shared machine: compare the two
modes side by side (they alternate per N), quote ratios.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

from splitinfer.stats import p50, p99

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [  # mixed lengths: short questions to a long paragraph (~20 to ~260 tokens with the template)
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue, and mention Rayleigh scattering.",
    "Summarise this: " + "The river rose through the night, and by morning the low fields were a lake. " * 4,
    "Give me three tips for better sleep, each in one short sentence.",
    "Read the notes and list the action items. " + "Alice will send the budget by Friday; Bob checks the "
    "server logs; Carol books the room for the review and invites the design team. " * 6,
    "Who wrote Romeo and Juliet?",
    "Describe a cat in five words.",
]


# -- the recorded trajectories -----------------------------------------------------------------------
def record_trajectories(lm, cut: int, tokens: int) -> list[dict]:
    """For each prompt: the device half's frames for the prefill and each decode step of its greedy
    trajectory, and the tokens the unbatched split picks (the reference every reply is checked against)."""
    import torch

    from splitinfer.models import split_model
    from splitinfer.split import ServerHalf
    from splitinfer.transport.payload import RawCodec

    stages = split_model(lm, [cut])
    device = stages[0]
    engine = ServerHalf(stages[1:])  # the engine the server runs, in-process and unbatched
    out = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = lm.encode_prompt(text)
            cache = device.new_cache()
            server = engine.session()
            h = device(ids, cache=cache)
            frames, toks = [[bytes(f) for f in RawCodec().encode(h).to_frames()]], []
            tok = int(server.forward(h, 0)[0, -1].argmax())
            toks.append(tok)
            for _ in range(tokens - 1):
                h = device(torch.tensor([[tok]]), cache=cache)
                frames.append([bytes(f) for f in RawCodec().encode(h).to_frames()])
                tok = int(server.forward(h, server.position)[0, -1].argmax())
                toks.append(tok)
            out.append({"prompt_tokens": int(ids.shape[1]), "frames": frames, "tokens": toks})
    return out


# -- a load generator (a process of its own; no torch) -------------------------------------------------
def load_generator(url: str, fields: dict, trajs: list[dict], session_ids: list[int], start_at, results) -> None:
    import zmq

    from splitinfer.transport import protocol as p

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(url)
    rid = 0

    def call(op, **kw):
        nonlocal rid
        rid += 1
        sock.send(p.pack(p.request(op, rid, **kw)))
        if not sock.poll(60_000):
            raise RuntimeError(f"no reply to {op}")
        return p.unpack(sock.recv())

    sessions = []
    for i in session_ids:
        rep = call("open", **fields)
        if not rep["ok"]:
            raise RuntimeError(f"open failed: {rep}")
        sessions.append({"i": i, "sid": rep["sid"], "traj": trajs[i % len(trajs)], "k": 0, "pos": 0})
    by_rid: dict[int, dict] = {}
    lat, ttft, mismatched, tokens = [], [], 0, 0
    decode_sent_at = []  # (send time, reply time) of every decode step

    def send(s):
        nonlocal rid
        rid += 1
        t = s["traj"]
        frames = t["frames"][s["k"]]
        sock.send_multipart([p.pack(p.request("step", rid, sid=s["sid"], seq=s["k"] + 1, start=s["pos"])), *frames])
        s["sent"] = time.time()
        by_rid[rid] = s

    while time.time() < start_at:
        time.sleep(0.001)
    first = time.time()
    for s in sessions:
        send(s)
    last = first
    while by_rid:
        if not sock.poll(120_000):
            raise RuntimeError("a step got no reply in 120 s")
        rep = p.unpack(sock.recv())
        now = time.time()
        s = by_rid.pop(rep["rid"])
        if not rep["ok"]:
            raise RuntimeError(f"step failed: {rep}")
        t = s["traj"]
        (ttft if s["k"] == 0 else lat).append(now - s["sent"])
        if s["k"]:
            decode_sent_at.append((s["sent"], now))
        else:
            s["prefilled"] = now
        mismatched += rep["tok"] != t["tokens"][s["k"]]
        tokens += 1
        s["pos"] += t["prompt_tokens"] if s["k"] == 0 else 1
        s["k"] += 1
        last = now
        if s["k"] < len(t["tokens"]):
            send(s)
    for s in sessions:
        call("close", sid=s["sid"])
    sock.close(linger=0)
    ctx.term()
    results.put({"lat": lat, "ttft": ttft, "mismatched": mismatched, "tokens": tokens, "first": first, "last": last,
                 "decode": decode_sent_at, "prefilled": max(s["prefilled"] for s in sessions)})


# -- servers ---------------------------------------------------------------------------------------
class Server:
    def __init__(self, model: str, cut: int, batching: bool, threads: int, extra: list[str]) -> None:
        from splitinfer.transport.reliability.harness import free_port

        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "splitinfer", "serve", "--model", model, "--cut", str(cut),
               "--port", str(self.port), "--threads", str(threads), "--max-sessions", "256",
               "--batching" if batching else "--no-batching", *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        seen = []
        while "ready" not in (line := self.proc.stdout.readline()):
            seen.append(line)
            if not line:
                raise RuntimeError(f"server did not start: {''.join(seen)}")
        import psutil

        self.ps = psutil.Process(self.proc.pid)

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_one(server: Server, fields: dict, trajs: list[dict], n: int, generators: int) -> dict:
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    k = max(1, min(generators, n))
    start_at = time.time() + 0.5 + 0.02 * n  # after every generator has opened its sessions
    procs = [ctx.Process(target=load_generator, args=(server.url, fields, trajs, list(range(g, n, k)), start_at,
                                                      results)) for g in range(k)]
    cpu0 = server.cpu_s()
    for pr in procs:
        pr.start()
    outs = [results.get(timeout=900) for _ in procs]
    for pr in procs:
        pr.join(30)
    cpu1 = server.cpu_s()
    first, last = min(o["first"] for o in outs), max(o["last"] for o in outs)
    lat = [x for o in outs for x in o["lat"]]
    ttft = [x for o in outs for x in o["ttft"]]
    wall = last - first
    # decode throughput once every session has its first token (all N decoding, no prefill left)
    t_pre = max(o["prefilled"] for o in outs)
    after = [r for o in outs for (sent, r) in o["decode"] if sent >= t_pre]
    decode_tps = len(after) / (max(after) - t_pre) if len(after) > 1 else float("nan")
    return {"clients": n, "tokens": sum(o["tokens"] for o in outs), "wall_s": wall,
            "tok_per_s": sum(o["tokens"] for o in outs) / wall,
            "decode_tok_per_s": decode_tps,
            "step_p50_ms": p50(lat) * 1e3, "step_p99_ms": p99(lat) * 1e3,
            "ttft_p50_ms": p50(ttft) * 1e3, "ttft_p99_ms": p99(ttft) * 1e3,
            "server_cpu": (cpu1 - cpu0) / wall, "server_cpu_ms_per_tok": (cpu1 - cpu0) * 1e3 / sum(o["tokens"] for o in outs),
            "server_rss_mb": server.rss_mb(),
            "mismatched": sum(o["mismatched"] for o in outs)}


def plot(rows: list[dict], path: Path) -> None:
    from splitinfer.report.plots import pyplot

    plt = pyplot()
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"off": "tab:blue", "on": "tab:orange"}
    for mode in ("off", "on"):
        rs = [r for r in rows if r["batching"] == mode]
        ns = [int(r["clients"]) for r in rs]
        c = colors[mode]
        a.plot(ns, [float(r["tok_per_s"]) for r in rs], "o-", color=c, label=f"batching {mode}: all tokens")
        a.plot(ns, [float(r["decode_tok_per_s"]) for r in rs], "s--", color=c, alpha=0.6,
               label=f"batching {mode}: decode phase")
        b.plot(ns, [float(r["step_p99_ms"]) for r in rs], "o-", color=c, label=f"batching {mode}: p99")
        b.plot(ns, [float(r["step_p50_ms"]) for r in rs], "s--", color=c, alpha=0.6, label=f"batching {mode}: p50")
    ns = sorted({int(r["clients"]) for r in rows})
    for ax, title in ((a, "aggregate tokens/s"), (b, "decode-step latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        for axis in (ax.xaxis, ax.yaxis):
            fmt = ScalarFormatter()
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(NullFormatter())
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_locator(FixedLocator([m * 10 ** e for e in range(-1, 6) for m in (1, 2, 5)
                                                 if lo <= m * 10 ** e <= hi]))
        ax.set_xlabel("concurrent sessions")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M, cut 15, one server process (replayed device halves)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_live(lm, server: Server, cut: int, n: int, tokens: int) -> dict:
    """N real device halves at once: `splitinfer generate --server` processes (1 torch thread each,
    fp32, greedy), prompts PROMPTS[i % 8]; returns their answers and the wall time for all of them."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "splitinfer.cli", "generate", PROMPTS[i % len(PROMPTS)],
                               "--server", server.url, "--cut", str(cut), "--codec", "fp32", "--threads", "1",
                               "--max-new-tokens", str(tokens), "--model", lm.name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.time() - t0
    bad = [e[-300:] for (_, e), p in zip(outs, procs, strict=True) if p.returncode]
    if bad:
        raise RuntimeError(f"generate failed: {bad[0]}")
    return {"texts": [o.rstrip("\n") for o, _ in outs], "wall_s": wall}


def write_profile(lm, cut: int, out: Path) -> None:
    """The batched decode step's time per batch size, in this process (no sockets): batch_profile.csv,
    the input of `splitinfer recommend --clients-per-server`."""
    from splitinfer.metrics.serving import measure_batch_profile

    prof = measure_batch_profile(lm, cut)
    prof.write_csv(out / "batch_profile.csv")
    print("batched decode step (forward_batch, context 64): " + ", ".join(
        f"{b}: {1e3 * s:.1f} ms" for b, s in zip(prof.batch_sizes, prof.step_s, strict=True)), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--clients", default="1,2,4,8,16,32,64", help="comma list of concurrent sessions")
    ap.add_argument("--tokens", type=int, default=16, help="tokens each session generates (1 prefill + decode)")
    ap.add_argument("--generators", type=int, default=2, help="load-generator processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    ap.add_argument("--device", default="cpu", help="torch device of both servers' halves (serve --device)")
    ap.add_argument("--dtype", default="float32", help="dtype of both servers' halves (serve --dtype); the "
                    "replies are checked against the fp32 CPU reference, so expect mismatches in half precision")
    ap.add_argument("--server-args", default="", help="extra flags for the batching server, e.g. '--max-batch 32'")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "serving_throughput"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from --out/results.csv")
    ap.add_argument("--live", type=int, default=0, metavar="N",
                    help="then N real device halves (`splitinfer generate --server` processes) against each "
                         "server, texts compared with each other and the in-process reference (e.g. 8)")
    ap.add_argument("--live-only", action="store_true", help="only the --live check (no replayed load)")
    ap.add_argument("--profile-only", action="store_true",
                    help="only measure the batched-step profile (batch_profile.csv for recommend)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    ns = [int(x) for x in args.clients.split(",")]
    if args.plot_only:
        with open(Path(args.out) / "results.csv", newline="") as f:
            plot(list(csv.DictReader(f)), Path(args.out) / "serving_throughput.png")
        return 0

    import torch

    from splitinfer.models import load_model

    t0 = time.time()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile_only:
        write_profile(lm, args.cut, out)
        return 0
    trajs = record_trajectories(lm, args.cut, args.tokens)
    fields = {"fingerprint": lm.fingerprint, "cuts": [args.cut], "hidden": lm.hidden_size,
              "codec": {"name": "none"}, "sampling": {"temperature": 0.0}}
    print(f"recorded {len(trajs)} trajectories (prompt tokens {[t['prompt_tokens'] for t in trajs]}) in "
          f"{time.time() - t0:.0f} s", flush=True)
    placement = ["--device", args.device, "--dtype", args.dtype]  # both servers: the same engine placement
    servers = {"off": Server(args.model, args.cut, False, args.threads, placement),
               "on": Server(args.model, args.cut, True, args.threads, [*placement, *args.server_args.split()])}
    rows = []
    if args.live_only:
        ns = []
    try:
        for srv in servers.values():  # warm-up
            run_one(srv, fields, trajs, 2, 1)
        hdr = (f"{'N':>3} {'batch':>5} {'tok/s':>7} {'dec t/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'TTFT50':>7} {'TTFT99':>7} "
               f"{'cpu':>5} {'cpu ms/tok':>10} {'RSS MB':>7} {'mismatch':>8}")
        print(hdr, flush=True)
        for n in ns:
            for mode, srv in servers.items():
                r = {"batching": mode, **run_one(srv, fields, trajs, n, args.generators)}
                rows.append(r)
                print(f"{n:>3} {mode:>5} {r['tok_per_s']:>7.1f} {r['decode_tok_per_s']:>7.1f} {r['step_p50_ms']:>7.1f} {r['step_p99_ms']:>7.1f} "
                      f"{r['ttft_p50_ms']:>7.0f} {r['ttft_p99_ms']:>7.0f} {r['server_cpu']:>5.2f} "
                      f"{r['server_cpu_ms_per_tok']:>10.1f} "
                      f"{r['server_rss_mb']:>7.0f} {r['mismatched']:>8}", flush=True)
        if args.live:
            eos = getattr(lm.tokenizer, "eos_token_id", None)

            def upto_eos(toks):  # `generate` stops at the end-of-sequence token
                return toks[:toks.index(eos)] if eos in toks else toks

            refs = [lm.decode(upto_eos(trajs[i % len(trajs)]["tokens"])) for i in range(args.live)]
            live = {mode: run_live(lm, srv, args.cut, args.live, args.tokens) for mode, srv in servers.items()}
            for mode, res in live.items():
                same = sum(a.strip() == b.strip() for a, b in zip(res["texts"], refs, strict=True))
                print(f"live: {args.live} `splitinfer generate --server` processes, batching {mode}: "
                      f"{args.live * args.tokens / res['wall_s']:.1f} tokens/s overall ({res['wall_s']:.0f} s "
                      f"with start-up), texts equal to the in-process reference: {same}/{args.live}", flush=True)
            same = sum(a == b for a, b in zip(live["off"]["texts"], live["on"]["texts"], strict=True))
            print(f"live: texts identical between batching off and on: {same}/{args.live}", flush=True)
    finally:
        for srv in servers.values():
            srv.close()
    if not rows:
        return 0
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    plot(rows, out / "serving_throughput.png")
    print("\nbatched / unbatched, same N:")
    for n in ns:
        off = next(r for r in rows if r["clients"] == n and r["batching"] == "off")
        on = next(r for r in rows if r["clients"] == n and r["batching"] == "on")
        print(f"  N={n:>2}: tokens/s x{on['tok_per_s'] / off['tok_per_s']:.2f}, decode tokens/s x"
              f"{on['decode_tok_per_s'] / off['decode_tok_per_s']:.2f}, server CPU per token x"
              f"{on['server_cpu_ms_per_tok'] / off['server_cpu_ms_per_tok']:.2f}, step p50 x"
              f"{on['step_p50_ms'] / off['step_p50_ms']:.2f}, on p99 {on['step_p99_ms']:.1f} ms vs off p50 "
              f"{off['step_p50_ms']:.1f} ms")
    write_profile(lm, args.cut, out)
    bad = sum(r["mismatched"] for r in rows)
    print(f"\n{bad} replies differ from the unbatched reference; wrote {out}/results.csv and "
          f"serving_throughput.png in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
