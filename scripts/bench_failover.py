"""Replica failover time: N replicas of `splitinfer serve`, many clients, one replica SIGKILLed mid-run.

    python scripts/bench_failover.py                                  # 3 replicas, 16 clients, 4 rounds
    python scripts/bench_failover.py --timeout-s 0.25 --retries 0 --csv experiments/topologies/failover.csv

Each round forks fresh replica processes (tiny-llama, cut 2, loopback, random ports), runs the clients
(`splitinfer_testing.reliability.topologies.run_replica_failover`: the code tests/reliability runs),
SIGKILLs replica 0 a third of the way through, and checks that every client ends with its in-process
text. A failover time is, per session that moved, how long its interrupted step took until the new
replica answered it: the client's silence detection (timeout_s x (retries + 1)) + reconnect + open +
replay of its history. Every process it starts is killed on exit. Exit status 1 if a text differed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

FIELDS = ("round", "replicas", "clients", "timeout_s", "retries", "identical", "moved", "failovers",
          "failover_p50_s", "failover_p99_s", "errors", "seconds")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", type=int, default=3, help="server processes (default 3)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--rounds", type=int, default=4, help="rounds, each with fresh replicas (default 4)")
    ap.add_argument("--new-tokens", type=int, default=24, help="tokens per client (default 24)")
    ap.add_argument("--timeout-s", type=float, default=1.0, help="client's wait for a reply (default 1.0)")
    ap.add_argument("--retries", type=int, default=1, help="resends to the same replica before moving (default 1)")
    ap.add_argument("--csv", type=Path, default=None, help="also write one row per round, then 'all', here")
    args = ap.parse_args(argv)
    if args.replicas < 2 or args.clients < 1 or args.rounds < 1 or args.new_tokens < 3:
        ap.error("need --replicas >= 2, --clients >= 1, --rounds >= 1, --new-tokens >= 3")
    if not args.timeout_s > 0 or args.retries < 0:
        ap.error("need --timeout-s > 0 and --retries >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from splitinfer.models import tiny_model
    from splitinfer_testing.reliability.harness import Zygote, percentile
    from splitinfer_testing.reliability.topologies import run_replica_failover

    torch.set_num_threads(1)
    lm = tiny_model("llama")
    rows, every = [], []
    with Zygote() as zygote:
        zygote.wait_ready()
        for rnd in range(1, args.rounds + 1):
            replicas = [zygote.spawn().wait_ready() for _ in range(args.replicas)]
            try:
                r = run_replica_failover(lm, zygote, replicas, clients=args.clients, new_tokens=args.new_tokens,
                                         timeout_s=args.timeout_s, retries=args.retries)
            finally:
                for srv in replicas:
                    srv.kill()
            every += r.failover_s
            rows.append({"round": rnd, "replicas": args.replicas, "timeout_s": args.timeout_s,
                         "retries": args.retries, **r.summary()})
            for e in r.errors[:3]:
                print(f"round {rnd}: {e}", file=sys.stderr)
    rows.append({"round": "all", "replicas": args.replicas, "clients": args.clients * args.rounds,
                 "timeout_s": args.timeout_s, "retries": args.retries,
                 "identical": sum(r["identical"] for r in rows), "moved": sum(r["moved"] for r in rows),
                 "failovers": len(every), "failover_p50_s": percentile(every, 50),
                 "failover_p99_s": percentile(every, 99), "errors": sum(r["errors"] for r in rows),
                 "seconds": round(sum(r["seconds"] for r in rows), 2)})
    print(f"detection bound: timeout_s x (retries + 1) = {args.timeout_s * (args.retries + 1):.2f} s")
    print(" | ".join(f"{f:>14}" for f in FIELDS))
    for row in rows:
        print(" | ".join(f"{row[f]:>14.3f}" if isinstance(row[f], float) else f"{row[f]!s:>14}" for f in FIELDS))
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(rows)
    total = rows[-1]
    return 0 if total["identical"] == total["clients"] and not total["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
