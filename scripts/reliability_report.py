"""Reliability figures of the split server: hostile input, faults, load and authentication.

    python scripts/reliability_report.py                                   # the sizes of tests/reliability
    python scripts/reliability_report.py --messages 50000 --clients 64 --csv results/reliability.csv

Runs the same scenarios as `tests/reliability/` (`splitinfer_testing.reliability`; loopback only,
tiny-llama cut 2, every process it starts is killed on exit) and prints one table. Exit status 1 if any
check failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000, help="hostile messages to send (default 10000)")
    ap.add_argument("--auth-messages", type=int, default=1000,
                    help="hostile messages from an allowed client with curve on (default 1000)")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed for the hostile messages")
    ap.add_argument("--kills", type=int, default=4,
                    help="server SIGKILLs during one generation, the 2nd one during a replay (default 4)")
    ap.add_argument("--kill-tokens", type=int, default=40, help="tokens of that generation (default 40)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    ap.add_argument("--steps", type=int, default=50, help="decode steps per client (default 50)")
    ap.add_argument("--flood", type=int, default=20_000, help="requests from a client that never reads replies")
    ap.add_argument("--churn", type=int, default=300, help="connections that send one request and vanish")
    ap.add_argument("--idle", type=float, default=1.0, help="idle limit (s) for the killed-client case")
    ap.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    args = ap.parse_args(argv)
    for name in ("messages", "auth_messages", "kills", "kill_tokens", "clients", "steps", "flood", "churn"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.kills * 3 > args.kill_tokens:
        ap.error(f"--kill-tokens={args.kill_tokens} leaves too few steps for --kills={args.kills}; "
                 f"use at least {args.kills * 3}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    import torch

    from splitinfer.models import tiny_model
    from splitinfer_testing.reliability.report import Sizes, print_table, run_report, write_csv

    torch.set_num_threads(1)  # on a small shared CPU one thread is several times faster
    lm = tiny_model("llama")
    t_all = time.monotonic()
    rows = run_report(lm, Sizes(**{k: v for k, v in vars(args).items() if k != "csv"}))
    total_s = time.monotonic() - t_all
    print_table(rows)
    print(f"\n{sum(r[3] for r in rows)}/{len(rows)} checks passed in {total_s:.0f} s "
          f"(tiny-llama cut 2 on loopback; {'all ok' if all(r[3] for r in rows) else 'FAILURES above'})")
    if args.csv:
        write_csv(rows, args.csv)
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
