#!/usr/bin/env python
"""Time the default sweep two ways and print them side by side.

cached: `python -m splitinfer.run -m experiment=default_sweep` as shipped - one process, the model loaded
        once, the unsplit reference (log-probs, greedy continuations, hidden state at every cut) and the
        per-layer timing profile computed once and reused by every job.
naive:  the same jobs with `reuse=false` - every job reloads the model, recomputes the reference and the
        profile, runs its own device stage and a real token-by-token split generation.

The naive sweep is long, so by default it runs a subset of cuts (all codecs) and the full 93-job figure is
projected from its mean time per job (marked "projected"); `--naive-cuts all` measures it in full.

    python scripts/bench_sweep.py                       # both, naive on cuts 0,15,30
    python scripts/bench_sweep.py --modes naive --naive-cuts 0,10,20,30 --csv results/bench.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_JOBS = 93  # 31 cuts x 3 codecs


def run_sweep(mode: str, cuts: str | None, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "splitinfer.run", "-m", "experiment=default_sweep", f"hydra.sweep.dir={out}",
           "logger=jsonl", f"reuse={'true' if mode == 'cached' else 'false'}", *extra]
    if cuts:
        cmd.append(f"split.cut={cuts}")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    print("+ " + " ".join(cmd), file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    jobs = [json.loads(p.read_text()) for p in out.glob("*/metrics.json")]
    n = len(jobs)
    return {"mode": mode, "jobs": n, "wall_s": round(wall, 1), "s_per_job": round(wall / n, 2),
            "full_sweep_s": round(wall if n == FULL_JOBS else wall / n * FULL_JOBS, 1),
            "full_sweep_is": "measured" if n == FULL_JOBS else "projected",
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="cached,naive")
    p.add_argument("--naive-cuts", default="0,15,30", help="cuts for the naive run ('all' = all 31)")
    p.add_argument("--cached-cuts", default="all")
    p.add_argument("--csv", default=None, help="also write the table as CSV here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as tmp:
        for mode in args.modes.split(","):
            cuts = args.naive_cuts if mode == "naive" else args.cached_cuts
            rows.append(run_sweep(mode, None if cuts == "all" else cuts, Path(tmp) / mode, args.overrides))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if len(rows) == 2:
        print(f"\nspeed-up of the cached sweep: {rows[1]['full_sweep_s'] / rows[0]['full_sweep_s']:.1f}x "
              f"({rows[0]['full_sweep_s']:.0f} s vs {rows[1]['full_sweep_s']:.0f} s for {FULL_JOBS} jobs)")
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
