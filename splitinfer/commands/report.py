"""`splitinfer report MULTIRUN_DIR`: a sweep's jobs -> report.csv, report.md (recommendation, Pareto rows,
plots, full table) and PNG plots; a re-run replaces the plots it wrote before."""

from __future__ import annotations

import argparse

HELP = (
    "aggregate a sweep folder into report.csv, report.md (recommendation, Pareto frontier, plots, table) and "
    "plots (metrics vs cut, trade-off, latency per link)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "sweep_dir", help="the multirun folder of a sweep (e.g. multirun/default_sweep/<timestamp>)"
    )
    p.add_argument("--out", default=None, help="where to write the report (default: SWEEP_DIR/report)")
    p.add_argument(
        "--links",
        default=None,
        help="also plot latency at each cut for these link profiles (comma list of conf/link names, "
        "or 'all'), re-evaluated from the jobs' measured bytes and timings",
    )
    p.add_argument(
        "--wandb", action="store_true", help="also log the table and plots to W&B as a 'report' run"
    )
    p.add_argument("--wandb-mode", default="offline", choices=("offline", "online"))
    p.add_argument("--quiet", action="store_true", help="do not print the table and the recommendation")


def main(args: argparse.Namespace) -> int:
    from splitinfer.report import available_links, build_report, log_report

    links = None
    if args.links:
        links = (
            available_links()
            if args.links == "all"
            else [s.strip() for s in args.links.split(",") if s.strip()]
        )
    rep = build_report(args.sweep_dir, args.out, links)
    if not args.quiet:
        print(rep.table)
        print("\nRecommendation (no constraints; add them with `splitinfer recommend`):\n")
        print(rep.recommendation)
    print(f"\n{len(rep.rows)} jobs -> {rep.csv}\n{' ' * len(str(len(rep.rows)))}         {rep.markdown}")
    for p in rep.plots:
        print(f"plot: {p}")
    if args.wandb:
        log_report(rep, mode=args.wandb_mode)
    return 0
