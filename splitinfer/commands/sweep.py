"""`splitinfer sweep`: run a Hydra multirun (default: the default sweep), then report it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HELP = "run a sweep (default: experiment=default_sweep, 31 cuts x 3 codecs) and print its report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. split.cut='range(0,31,5)' codec=int8")
    p.add_argument("--experiment", default="default_sweep", help="conf/experiment name (default: %(default)s)")
    p.add_argument("--launcher", default=None,
                   help="Hydra launcher: basic (default, one process, fastest here), joblib, submitit_local, slurm")
    p.add_argument("--out", default=None, help="sweep folder (default: multirun/<experiment>/<timestamp>)")
    p.add_argument("--no-report", action="store_true", help="only run the jobs")


def main(args: argparse.Namespace) -> int:
    from splitinfer.run import check_command_line

    out = Path(args.out or f"multirun/{args.experiment}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    cmd = [sys.executable, "-m", "splitinfer.run", "-m", f"experiment={args.experiment}", f"hydra.sweep.dir={out}"]
    if args.launcher:
        cmd.append(f"hydra/launcher={args.launcher}")
    cmd += args.overrides
    # Every group option (--experiment, --launcher, codec=int8,int9 ...) exists, or one line and exit 2 here;
    # the sweep process checks its experiment's sweeper params the same way before it launches a job.
    check_command_line(cmd[3:])
    print("+ " + " ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    if rc != 0:
        return rc
    print(f"sweep finished in {time.perf_counter() - t0:.0f} s: {out}", file=sys.stderr)
    if args.no_report:
        return 0
    import os

    from splitinfer.report import ReportError, build_report, log_report, recommend

    rep = build_report(out, links=["3g", "4g_lte", "5g", "wifi", "loopback"])
    print(rep.table)
    print(f"\n{len(rep.rows)} jobs -> {rep.csv}\n{' ' * len(str(len(rep.rows)))}         {rep.markdown}")
    for p in rep.plots:
        print(f"plot: {p}")
    mode = os.environ.get("WANDB_MODE", "offline")
    if mode != "disabled":  # the report's table and plots join the sweep's W&B group as a "report" run
        log_report(rep, group=rep.rows[0].get("group"), mode="online" if mode == "online" else "offline")
    try:
        print("\n" + recommend(rep.rows, "latency").explanation)
    except ReportError as e:
        print(f"\n(no recommendation: {e})")
    print(f"\nMore: splitinfer recommend {out} --max-delta-ppl 1 --link wifi   (see --help)")
    return 0
