"""Serving many devices: one split server, N concurrent sessions, continuous batching off vs on in one run.

    python scripts/bench_serving.py                          # real model, cut 15, N = 1..64, ~6 min here
    python scripts/bench_serving.py --clients 1,8,32 --tokens 16 --out /tmp/serving

Two server processes (`splitinfer serve`, one with --no-batching) serve the real model at cut 15. The
device halves are replayed, not run (`splitinfer.transport.loadgen`: recorded greedy trajectories, every
reply checked against them), so the figures measure the server, not this machine's spare CPU. Per
(N, batching): tokens/s, decode tokens/s, step and TTFT p50/p99, server CPU (share of a core and ms per
token: the figure a shared machine skews least) and RSS, and replies that differ from the reference
(`loadgen.run_load`). Writes results.csv and serving_throughput.png to --out (default
experiments/serving_throughput/). On a shared machine compare the two modes side by side (they alternate
per N) and quote ratios.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

from splitinfer.report.plots import plot_serving
from splitinfer.transport.loadgen import (
    SERVING_HEADER,
    ServeProcess,
    batching_ratio_lines,
    encode_prompts,
    live_check,
    record_trajectories,
    run_load,
    serving_line,
    session_fields,
    write_batch_profile,
    write_serving_csv,
)

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


def start_server(model: str, cut: int, batching: bool, threads: int, extra: list[str]) -> ServeProcess:
    return ServeProcess(model, cut, ["--threads", str(threads), "--max-sessions", "256",
                                     "--batching" if batching else "--no-batching", *extra],
                        env=dict(os.environ, PYTHONPATH=str(ROOT)))


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
            plot_serving(list(csv.DictReader(f)), Path(args.out) / "serving_throughput.png")
        return 0

    import torch

    from splitinfer.models import load_model

    t0 = time.time()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.profile_only:
        write_batch_profile(lm, args.cut, out)
        return 0
    trajs = record_trajectories(lm, args.cut, args.tokens, encode_prompts(lm, PROMPTS))  # tiny-llama: seeded ids
    fields = session_fields(lm, args.cut)
    print(f"recorded {len(trajs)} trajectories (prompt tokens {[t['prompt_tokens'] for t in trajs]}) in "
          f"{time.time() - t0:.0f} s", flush=True)
    placement = ["--device", args.device, "--dtype", args.dtype]  # both servers: the same engine placement
    servers = {"off": start_server(args.model, args.cut, False, args.threads, placement),
               "on": start_server(args.model, args.cut, True, args.threads, [*placement, *args.server_args.split()])}
    rows = []
    if args.live_only:
        ns = []
    try:
        for srv in servers.values():  # warm-up
            run_load(srv, fields, trajs, 2, 1)
        print(SERVING_HEADER, flush=True)
        for n in ns:
            for mode, srv in servers.items():
                rows.append({"batching": mode, **run_load(srv, fields, trajs, n, args.generators)})
                print(serving_line(n, mode, rows[-1]), flush=True)
        if args.live:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            for line in live_check(lm, servers, trajs, PROMPTS, args.live, args.tokens, args.cut, env=env):
                print(line, flush=True)
    finally:
        for srv in servers.values():
            srv.close()
    if not rows:
        return 0
    write_serving_csv(rows, out / "results.csv")
    plot_serving(rows, out / "serving_throughput.png")
    print("\nbatched / unbatched, same N:")
    print("\n".join(batching_ratio_lines(rows, ns)))
    write_batch_profile(lm, args.cut, out)
    bad = sum(r["mismatched"] for r in rows)
    print(f"\n{bad} replies differ from the unbatched reference; wrote {out}/results.csv and "
          f"serving_throughput.png in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
