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
import sys
from pathlib import Path

import torch

from splitinfer.transport import loadgen as lg

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


def start_server(args, lm, mode: str):
    """A server process (`python -m splitinfer serve`) or an in-thread SplitServer: its url and its stop."""
    if args.server == "thread":
        from splitinfer.transport import SplitServer

        srv = SplitServer(lm, [args.cut], port=0).start()
        return srv.url, srv.stop
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = lg.ServeProcess(args.model, args.cut, ["--threads", str(args.threads)] if args.threads else [], env=env)
    return proc.url, proc.close


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
    from splitinfer.models import load_model
    from splitinfer.split import MeteredLink
    from splitinfer.transport import remote_generator
    from splitinfer.transport.payload import build_session_codec, default_codec

    waits = ["block"]  # the one wait left (the table keeps its column, comparable with earlier runs)
    spinners = lg.start_idle_spinners() if args.idle_spinners else []
    lm = load_model(args.model)
    inproc = in_process_generator(lm, [args.cut], codec="none")
    codecs = {name: default_codec() if name == "default" else build_session_codec(name)
              for name in args.codecs.split(",")}
    prompts = lg.encode_prompts(lm, PROMPTS[: args.prompts])
    servers, gens = {}, {}  # wait mode -> (url, stop); (codec name, wait mode) -> generator
    try:
        for w in waits:
            servers[w] = start_server(args, lm, w)
        ping_ms = lg.median_ping_ms(servers[waits[0]][0], lm, args.cut)
        for w in waits:
            for name, codec in codecs.items():
                gen = remote_generator(lm, [args.cut], servers[w][0], codec=codec, timeout_s=60)
                gen.link = MeteredLink(gen.link)
                gens[name, w] = gen
        rows, inproc_stats = lg.measure_transport(lm, prompts, inproc, gens, args.tokens, args.server == "process")
    finally:
        for gen in gens.values():
            gen.link.close()
        for _, stop in servers.values():
            stop()
        for sp in spinners:
            sp.kill()

    labels = {n: c.name if n != "default" else f"default ({c.name})" for n, c in codecs.items()}
    table = lg.transport_table(rows, inproc_stats, labels, len(prompts))
    print(f"\nsplit over tcp://127.0.0.1 ({args.server} server) vs unsplit transformers generate: {lm.name}, "
          f"cut {args.cut}, greedy, {len(prompts)} prompts x {args.tokens} new tokens, "
          f"torch threads {torch.get_num_threads()}, "
          f"idle spinners {'on' if spinners else 'off'}; empty round trip (ping) {ping_ms:.3f} ms")
    cols, lines = lg.table_lines(table)
    print("\n".join(lines))
    print(lg.TRANSPORT_LEGEND)
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
