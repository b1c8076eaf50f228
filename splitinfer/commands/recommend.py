"""`splitinfer recommend MULTIRUN_DIR`: pick the cut and codec that minimise latency (or bytes) under
constraints, and say why."""

from __future__ import annotations

import argparse

HELP = "recommend the cut + codec minimising latency/bytes under memory, Δppl, leakage and link constraints"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", help="the multirun folder of a sweep")
    p.add_argument("--objective", default="latency", choices=("latency", "ttft", "bytes", "energy"),
                   help="what to minimise: per-token latency (default), time to first token, uplink bytes per "
                        "token, device energy per token")
    p.add_argument("--max-device-mb", type=float, default=None, help="device memory budget (weights + KV cache)")
    p.add_argument("--max-delta-ppl", type=float, default=None, help="largest acceptable Δperplexity in %%")
    p.add_argument("--min-exact-match", type=float, default=None, help="smallest greedy exact-match rate (0..1)")
    p.add_argument("--max-leakage", type=float, default=None, help="largest acceptable leakage (needs an attack)")
    p.add_argument("--leakage-metric", default=None, help="which privacy/* column --max-leakage applies to (default: the attack's token accuracy)")
    p.add_argument("--link", default=None, help="re-evaluate latency for this conf/link profile (e.g. 3g, wifi)")
    p.add_argument("--slowdown", type=float, default=None, help="device slow-down factor against this machine")


def main(args: argparse.Namespace) -> int:
    from splitinfer.report import Constraints, load_runs, recommend

    rows = load_runs(args.sweep_dir)
    rec = recommend(rows, args.objective,
                    Constraints(args.max_device_mb, args.max_delta_ppl, args.max_leakage, args.leakage_metric,
                                args.min_exact_match),
                    link=args.link, slowdown=args.slowdown)
    print(rec.explanation)
    return 0 if rec.best is not None else 1
