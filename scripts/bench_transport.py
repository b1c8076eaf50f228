"""Split generation over ZeroMQ on 127.0.0.1 against unsplit transformers `generate`, side by side.

    python scripts/bench_transport.py                       # 20 prompts x 64 tokens, fp32 + default codec
    python scripts/bench_transport.py --prompts 5 --tokens 32 --codecs fp32 --csv results/transport.csv

For every prompt it runs the unsplit model (transformers' own greedy `generate`), the split model in
one process (an InProcessLink with raw frames, no network: what the cut itself costs), and then the
split model through `splitinfer serve`-style servers (subprocesses by default), once per codec, and reports: prompts
with identical tokens, decode latency per token (median over all tokens, and the split/unsplit
ratio, also as the median of per-prompt ratios, which drift on a shared machine cannot bias),
prefill latency (and ratio), and bytes per token each way. Figures, not a test.

Each side sleeps in poll while the other computes (the `block` wait; the busy-polling and rehearsing
modes `busy`, `warm`, `early` were removed in issue 24, their measured cost is in the README's
Transport section). A half that waited computes its next step slower, a cost of the machine rather than
of the link; `--idle-spinners` keeps every core busy with lowest-priority (SCHED_IDLE) spinner
processes, which do no work for either side and yield at once: a diagnostic for that machine effect.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from splitinfer.stats import bootstrap_interval
from splitinfer.transport.loadgen import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain photosynthesis in one sentence.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Give me a tip for better sleep.",
    "Who wrote Romeo and Juliet?",
    "What does a CPU do?",
    "Suggest a name for a pet turtle.",
    "Why is the sky blue?",
    "List two benefits of exercise.",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water?",
    "Describe a cat in five words.",
    "How many days are in a leap year?",
    "What is machine learning?",
    "Recommend a classic novel.",
    "What causes rain?",
    "How do I make a cup of tea?",
    "What is the largest planet in our solar system?",
]


def encode_prompts(lm, n: int) -> list[torch.Tensor]:
    """The first n prompts as token ids; a model without a tokenizer (tiny-llama, for a smoke run) gets
    seeded random ids of similar lengths instead."""
    if lm.tokenizer is not None:
        return [lm.encode_prompt(p) for p in PROMPTS[:n]]
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, lm.vocab_size, (1, 8 + len(p) // 8), generator=g) for p in PROMPTS[:n]]


def start_server(args, lm, mode: str):
    """A server process (`python -m splitinfer serve`) or an in-thread SplitServer: its url and its stop."""
    if args.server == "thread":
        from splitinfer.transport import SplitServer

        srv = SplitServer(lm, [args.cut], port=0).start()
        return srv.url, srv.stop
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = ServeProcess(args.model, args.cut, ["--threads", str(args.threads)] if args.threads else [], env=env)
    return proc.url, proc.close


def start_idle_spinners() -> list[subprocess.Popen]:
    """One SCHED_IDLE busy loop per core: the scheduler runs it only when nothing else wants the core,
    so the vCPU never halts, and it takes no time from the benchmark's own processes."""
    code = ("import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True:\n    pass\n")
    return [subprocess.Popen([sys.executable, "-c", code, str(c)]) for c in sorted(os.sched_getaffinity(0))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--prompts", type=int, default=20, help=f"how many prompts (max {len(PROMPTS)})")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--codecs", default="fp32,default", help="comma list; 'default' = the project's default")
    ap.add_argument("--server", choices=("process", "thread"), default="process")
    ap.add_argument("--idle-spinners", action="store_true",
                    help="keep every core busy with SCHED_IDLE spinners (a diagnostic; see the docstring)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each process (default 1: steadier on a shared CPU; 0 = torch's default)")
    ap.add_argument("--csv", default=None, help="also write the table here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    from splitinfer.generation import in_process_generator
    from splitinfer.metrics.quality import first_mismatch
    from splitinfer.models import load_model
    from splitinfer.split import MeteredLink, timed_unsplit_generate
    from splitinfer.transport import RemoteLink, remote_generator
    from splitinfer.transport.payload import build_session_codec, default_codec

    waits = ["block"]  # the one wait left (the table keeps its column, comparable with earlier runs)
    spinners = start_idle_spinners() if args.idle_spinners else []
    lm = load_model(args.model)
    inproc = in_process_generator(lm, [args.cut], codec="none")
    codecs = {}
    for name in args.codecs.split(","):
        codecs[name] = default_codec() if name == "default" else build_session_codec(name)
    prompts = encode_prompts(lm, args.prompts)
    servers, gens = {}, {}  # wait mode -> (url, stop); (codec name, wait mode) -> generator
    rows = {(name, w): {"same": 0, "dec": [], "pre": [], "up_pre": [], "up": [], "down": [], "ref_dec": [],
                        "ref_pre": [], "agree": [], "overhead": [], "cpu": [], "ref_cpu": [], "prompt_ratio": [],
                        "err": None} for w in waits for name in codecs}
    inproc_dec, inproc_ratio, inproc_same = [], [], 0
    med = statistics.median
    try:
        for w in waits:
            servers[w] = start_server(args, lm, w)
        with RemoteLink(servers[waits[0]][0], fingerprint=lm.fingerprint, cuts=[args.cut],
                        hidden_size=lm.hidden_size) as probe:
            probe.ping()
            ping_ms = statistics.median(probe.ping() for _ in range(200)) * 1e3
        for w in waits:
            for name, codec in codecs.items():
                gen = remote_generator(lm, [args.cut], servers[w][0], codec=codec, timeout_s=60)
                gens[name, w] = gen
                gen.link = MeteredLink(gen.link)
        # warm-up (first calls allocate and JIT-select kernels)
        timed_unsplit_generate(lm, prompts[0], 4)
        inproc.generate(prompts[0], 4)
        for key, gen in gens.items():
            try:
                gen.generate(prompts[0], 4)
            except Exception as e:  # a codec still being written elsewhere: report, keep going
                rows[key]["err"] = f"{type(e).__name__}: {e}"
        t_start = time.perf_counter()
        for i, ids in enumerate(prompts):
            cpu0 = time.process_time()
            ref, ref_pre, ref_dec = timed_unsplit_generate(lm, ids, args.tokens)
            ref_cpu = (time.process_time() - cpu0) / len(ref)
            res = inproc.generate(ids, args.tokens)
            dec = res.decode_s
            inproc_dec += dec
            inproc_same += res.token_ids == ref
            if dec and ref_dec:
                inproc_ratio.append(med(dec) / med(ref_dec))
            for key, gen in gens.items():
                r = rows[key]
                if r["err"]:
                    continue
                before = gen.link.info()
                cpu0 = time.process_time()
                res = gen.generate(ids, args.tokens)
                cpu = time.process_time() - cpu0
                after = gen.link.info()
                server_s = after["compute_s"] - before["compute_s"]
                if args.server == "process":  # the server's CPU time is in another process
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
    finally:
        for gen in gens.values():
            gen.link.close()
        for _, stop in servers.values():
            stop()
        for sp in spinners:
            sp.kill()

    table = []
    ref_all = [d for r in rows.values() for d in r["ref_dec"]] or inproc_dec
    if inproc_dec:
        table.append({"codec": "(in-process split, no network)", "wait": "-",
                      "identical": f"{inproc_same}/{len(prompts)}",
                      "decode_ms_unsplit": round(med(ref_all) * 1e3, 2), "decode_ms_split": round(med(inproc_dec) * 1e3, 2),
                      "decode_ratio_median": round(med(inproc_dec) / med(ref_all), 3),
                      "decode_ratio_per_prompt": round(med(inproc_ratio), 3),
                      "per_prompt_ci95": "[{:.3f}, {:.3f}]".format(*bootstrap_interval(inproc_ratio, "median"))})
    for (name, wait), r in rows.items():
        label = codecs[name].name if name != "default" else f"default ({codecs[name].name})"
        if r["err"]:
            table.append({"codec": label, "wait": wait, "error": r["err"][:100]})
            continue
        d_ref, d = med(r["ref_dec"]), med(r["dec"])
        p_ref, pre = med(r["ref_pre"]), med(r["pre"])
        table.append({
            "codec": label, "wait": wait,
            "identical": f"{r['same']}/{len(prompts)}",
            "same_prefix": f"{statistics.fmean(r['agree']):.0%}",
            "decode_ms_unsplit": round(d_ref * 1e3, 2), "decode_ms_split": round(d * 1e3, 2),
            "decode_ratio_median": round(d / d_ref, 3),
            "decode_ratio_per_prompt": round(med(r["prompt_ratio"]), 3),
            "per_prompt_ci95": "[{:.3f}, {:.3f}]".format(*bootstrap_interval(r["prompt_ratio"], "median")),
            "decode_ratio_mean": round(statistics.fmean(r["dec"]) / statistics.fmean(r["ref_dec"]), 3),
            "prefill_ms_unsplit": round(p_ref * 1e3, 1), "prefill_ms_split": round(pre * 1e3, 1),
            "prefill_ratio": round(pre / p_ref, 3),
            "up_B_per_token": round(statistics.fmean(r["up"]), 1),
            "down_B_per_token": round(statistics.fmean(r["down"]), 1),
            "prefill_up_B": round(statistics.fmean(r["up_pre"])),
            "link_overhead_ms": round(statistics.fmean(r["overhead"]) * 1e3, 3),
            "cpu_ms_per_token_unsplit": round(statistics.fmean(r["ref_cpu"]) * 1e3, 2),
            "cpu_ms_per_token_split": round(statistics.fmean(r["cpu"]) * 1e3, 2),
            "cpu_ratio": round(statistics.fmean(r["cpu"]) / statistics.fmean(r["ref_cpu"]), 3),
        })
    print(f"\nsplit over tcp://127.0.0.1 ({args.server} server) vs unsplit transformers generate: {lm.name}, "
          f"cut {args.cut}, greedy, {len(prompts)} prompts x {args.tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}, "
          f"idle spinners {'on' if spinners else 'off'}; empty round trip (ping) {ping_ms:.3f} ms")
    cols = list(dict.fromkeys(k for row in table for k in row))
    widths = {c: max(len(c), *(len(str(row.get(c, ""))) for row in table)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in table:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in cols))
    print("(identical = prompts whose tokens all equal the unsplit model's; same_prefix = mean share of tokens "
          "before the first difference;\n decode ms = median per-token latency; ratio = split / unsplit "
          "(median of all tokens; per_prompt = median over prompts of each prompt's ratio, with its bootstrap\n"
          " 95 % interval over prompts; mean);\n"
          " wait = block (sleep in poll);\n"
          " up B/token = encoded hidden state + envelope per decode step; down = the reply;\n link_overhead = mean "
          "time per step in the link that the server did not spend computing: encode, sockets, decode, wake-ups;\n"
          " cpu ms/token = CPU time of device + server processes (prefill included) per generated token: "
          "the split's real cost, immune to waiting for a busy CPU; busy waiting counts as CPU)")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(table)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
