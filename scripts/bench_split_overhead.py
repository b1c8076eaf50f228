"""In-process split vs unsplit decode step on the real model: what the cut itself costs, no network.

    python scripts/bench_split_overhead.py [--cut 15] [--steps 64] [--rounds 3] [--csv out.csv]

Prints the median per-token decode time of the unsplit model (transformers' own forward with its KV
cache) and of the two stages run back to back with their own caches, round by round, side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def decode_times(step, first_token, steps: int) -> float:
    tok, times = first_token, []
    for _ in range(steps):
        t0 = time.perf_counter()
        tok = step(tok)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def unsplit_round(lm, ids, steps: int) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    first = lm.model(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    return decode_times(lambda t: lm.model(t, cache=cache, use_cache=True).logits[:, -1:].argmax(-1), first, steps)


@torch.no_grad()
def split_round(lm, ids, cut: int, steps: int) -> float:
    from splitinfer.models import split_model

    dev, srv = split_model(lm, [cut])
    dc, sc = dev.new_cache(), srv.new_cache()
    first = srv(dev(ids, cache=dc), cache=sc)[:, -1:].argmax(-1)
    return decode_times(lambda t: srv(dev(t, cache=dc), cache=sc)[:, -1:].argmax(-1), first, steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--cut", type=int, default=15)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from splitinfer.models import load_model

    lm = load_model(args.model)
    ids = lm.encode_prompt("Tell me a long story about a dragon and a knight who become friends.")
    rows = []
    for r in range(args.rounds):
        unsplit, split = unsplit_round(lm, ids, args.steps), split_round(lm, ids, args.cut, args.steps)
        rows.append({"round": r, "cut": args.cut, "unsplit_ms": unsplit * 1e3, "split_ms": split * 1e3,
                     "ratio": split / unsplit})
    print(f"{'round':>5} {'cut':>4} {'unsplit ms/token':>17} {'split ms/token':>15} {'ratio':>6}")
    for row in rows:
        print(f"{row['round']:>5} {row['cut']:>4} {row['unsplit_ms']:>17.2f} {row['split_ms']:>15.2f} {row['ratio']:>6.3f}")
    print(f"median ratio {statistics.median(r['ratio'] for r in rows):.3f}")
    if args.csv:
        from splitinfer.report.tables import write_csv

        write_csv(rows, args.csv)


if __name__ == "__main__":
    main()
