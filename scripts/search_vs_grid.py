"""Search vs grid (experiments/search_vs_grid): how much of the grid's true Pareto front a multi-objective
search finds after N trials.

    python scripts/search_vs_grid.py --grid multirun/search_vs_grid/grid --search multirun/search_vs_grid/search

- The grid's true front: every (cut, codec) job of the grid folder, objectives as the search computes them
  (splitinfer.search.OBJECTIVES: uplink bytes/token, the |Δppl| 95 % upper bound, per-token latency).
- Replay: the search's sampler (NSGA-II with the population of conf/hparams_search/split_optuna.yaml, asked
  in batches of its n_jobs like Hydra's Optuna sweeper) run against the grid's stored results, one curve per
  seed; a random sampler with the same budget as the baseline. A trial that repeats a configuration still
  counts as a job.
- The real Hydra search (`--search`, optional): its trials in order, each valued at the grid's measurement of
  the same configuration (latency is timed per process, so its own values differ by timing noise; both are
  in the CSV).
- Hypervolume: every objective scaled to [0, 1] between the grid's lowest and highest value, reference point
  1.1 on every axis; the ratio is the search's front hypervolume over the grid front's.
Writes hv_vs_trials.csv, summary.csv and hv_vs_trials.png to --out.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from splitinfer.report.search_replay import (
    OBJECTIVES,
    first_reaching,
    grid_values,
    hv_ratio_curve,
    plot_hv_vs_trials,
    replay,
    search_settings,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True)
    ap.add_argument("--search", default=None, help="a real search folder (hparams_search=split_optuna)")
    ap.add_argument("--out", default="experiments/search_vs_grid")
    ap.add_argument("--trials", type=int, default=82, help="the budget marked on the figure")
    ap.add_argument("--max-trials", type=int, default=None, help="replay this many trials (default: the grid)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samplers", default="nsga2,random")
    args = ap.parse_args()

    from splitinfer.report.search import bounds, hypervolume, load_search, nondominated, normalise, values

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grid = grid_values(Path(args.grid))
    settings = search_settings()
    codecs = [c for c in settings["codecs"] if any(k[1] == c for k in grid)]
    pts = list(grid.values())
    lo, hi = bounds(pts)
    full = hypervolume(normalise(pts, lo, hi), [1.1] * len(OBJECTIVES)) / 1.1 ** len(OBJECTIVES)
    front = [list(grid)[i] for i in nondominated(pts)]
    n_max = args.max_trials or len(grid)
    # The same in log10 space (every objective spans decades; a linear scale lets the extremes dominate).
    import math

    lgrid = {k: [math.log10(x) for x in v] for k, v in grid.items()}
    llo, lhi = bounds(list(lgrid.values()))
    lfull = hypervolume(normalise(list(lgrid.values()), llo, lhi), [1.1] * len(OBJECTIVES)) / 1.1 ** len(OBJECTIVES)
    front_set = set(front)

    def extra(picked: list, budget: int) -> dict:
        lcurve = hv_ratio_curve(picked, lgrid, llo, lhi, lfull)
        return {f"hv_ratio_log_at_{budget}": lcurve[min(budget, len(lcurve)) - 1],
                "trials_to_95pct_log": first_reaching(lcurve, 0.95),
                f"front_recall_at_{budget}": len(set(picked[:budget]) & front_set) / len(front_set)}
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, summary = [], []
    for sampler in args.samplers.split(","):
        for seed in seeds:
            picked = replay(grid, sampler, seed, n_max, settings["population"], settings["batch"], codecs)
            curve = hv_ratio_curve(picked, grid, lo, hi, full)
            rows += [{"source": f"replay-{sampler}", "seed": seed, "trials": i + 1, "cut": k[0], "codec": k[1],
                      "hv_ratio": c} for i, (k, c) in enumerate(zip(picked, curve, strict=True))]
            summary.append({"source": f"replay-{sampler}", "seed": seed,
                            f"hv_ratio_at_{args.trials}": curve[min(args.trials, len(curve)) - 1],
                            "trials_to_95pct": first_reaching(curve, 0.95),
                            "distinct_configs_at_budget": len(set(picked[: args.trials])),
                            **extra(picked, args.trials)})
    if args.search:
        sdir = Path(args.search)
        from splitinfer.report import load_runs

        s = load_search(sdir, load_runs(sdir))
        picked = [(int(r["cut"]), str(r["codec"])) for r in s.trials]
        curve = hv_ratio_curve(picked, grid, lo, hi, full)
        own = [values(r, OBJECTIVES) for r in s.trials]
        from splitinfer.report.search import hypervolume_curve

        own_curve = [v / full for v in hypervolume_curve(own, lo, hi)]
        seed = json.loads((sdir / "search.json").read_text()).get("seed")
        rows += [{"source": "hydra-search", "seed": seed, "trials": i + 1, "cut": k[0], "codec": k[1],
                  "hv_ratio": c, "hv_ratio_own_values": o}
                 for i, (k, c, o) in enumerate(zip(picked, curve, own_curve, strict=True))]
        summary.append({"source": "hydra-search", "seed": seed,
                        f"hv_ratio_at_{args.trials}": curve[min(args.trials, len(curve)) - 1],
                        "trials_to_95pct": first_reaching(curve, 0.95),
                        "distinct_configs_at_budget": len(set(picked[: args.trials])),
                        "hv_ratio_own_values_at_end": own_curve[-1], **extra(picked, args.trials)})
    cols = ["source", "seed", "trials", "cut", "codec", "hv_ratio", "hv_ratio_own_values"]
    with (out / "hv_vs_trials.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    scols = sorted({k for s_ in summary for k in s_}, key=lambda k: (k != "source", k != "seed", k))
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, scols)
        w.writeheader()
        w.writerows(summary)
    (out / "grid_front.json").write_text(json.dumps({
        "grid_jobs": len(grid), "objectives": OBJECTIVES, "lo": lo, "hi": hi, "grid_hypervolume": full,
        "front": [{"cut": k[0], "codec": k[1], **dict(zip(OBJECTIVES, grid[k], strict=True))} for k in front],
        "search_settings": settings}, indent=1) + "\n")
    plot_hv_vs_trials(rows, out / "hv_vs_trials.png", len(grid), len(front))
    for s_ in summary:
        print(s_)
    print(f"grid: {len(grid)} jobs, {len(front)} on its front; figure {out / 'hv_vs_trials.png'}")


if __name__ == "__main__":
    main()
