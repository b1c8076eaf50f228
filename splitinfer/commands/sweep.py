"""`splitinfer sweep`: run a Hydra multirun (default: the default sweep), then report it."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_EXPERIMENT = "default_sweep"


def _values(spec: object) -> tuple[int, str] | None:
    """How many values a basic-sweeper param takes (`range(0,31,2)`, `fp16,int8`), with its text."""
    text = str(spec).strip()
    m = re.fullmatch(r"range\((-?\d+)(?:,\s*(-?\d+))?(?:,\s*(-?\d+))?\)", text)
    if m:
        a, b, c = (int(g) if g is not None else None for g in m.groups())
        r = range(a) if b is None else range(a, b, c or 1)
        return len(r), f"{r.start}..{r.stop - 1}" + (f" step {r.step}" if r.step != 1 else "")
    if "(" in text:  # choice(...), interval(...), glob(...): not counted here
        return None
    return len(text.split(",")), text


def describe_sweep(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """`16 cuts (0..30 step 2) x 3 codecs (fp16,int8,ec40) = 48 jobs`, read from conf/experiment/<name>.yaml."""
    from splitinfer.configs import load_node

    try:
        params = load_node("experiment", experiment).get("hydra", {}).get("sweeper", {}).get("params") or {}
    except Exception:  # noqa: BLE001 - a help line must never stop the CLI
        return f"see conf/experiment/{experiment}.yaml"
    parts, total = [], 1
    for key, spec in params.items():
        counted = _values(spec)
        if counted is None:
            return f"see conf/experiment/{experiment}.yaml"
        n, text = counted
        total *= n
        name = {"split.cut": "cuts", "codec": "codecs"}.get(str(key), str(key))
        parts.append(f"{n} {name} ({text})")
    return " x ".join(parts) + f" = {total} jobs" if parts else "one job"


HELP = f"run a sweep (default: experiment={DEFAULT_EXPERIMENT}, {describe_sweep()}) and print its report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. split.cut='range(0,31,5)' codec=int8")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="conf/experiment name (default: %(default)s)")
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
    import logging
    import os

    from splitinfer.progress import Heartbeat
    from splitinfer.report import ReportError, build_report, log_report, recommend

    links = ["3g", "4g_lte", "5g", "wifi", "loopback"]
    with Heartbeat(f"report of {out} (tables, plots, latency on {len(links)} links)", logging.getLogger(__name__)):
        rep = build_report(out, links=links)
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
