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

REPO = Path(__file__).resolve().parents[1]
OBJECTIVES = ["bytes", "dppl_ub", "latency"]


def grid_values(grid: Path) -> dict[tuple[int, str], list[float]]:
    from splitinfer.report import load_runs
    from splitinfer.search import OBJECTIVES as FN

    out = {}
    for r in load_runs(grid):
        vals = [FN[o][0](r) for o in OBJECTIVES]
        if all(v is not None for v in vals):
            out[(int(r["cut"]), str(r["codec"]))] = vals
    return out


def search_settings() -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(REPO / "conf" / "hparams_search" / "split_optuna.yaml")
    sw = cfg.hydra.sweeper
    codecs = str(sw.params.codec).removeprefix("choice(").removesuffix(")").split(",")
    return {"population": int(sw.sampler.population_size), "batch": int(sw.n_jobs), "codecs": codecs}


def replay(values: dict, sampler_name: str, seed: int, n_trials: int, population: int, batch: int,
           codecs: list[str]) -> list[tuple[int, str]]:
    """The configurations a sampler picks, in order, told the grid's stored objectives (Hydra's loop: ask a
    batch, run it, tell it)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntUniformDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cuts = sorted({c for c, _ in values})
    if sampler_name == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    elif sampler_name == "motpe":
        sampler = optuna.samplers.MOTPESampler(seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(directions=["minimize"] * len(OBJECTIVES), sampler=sampler)
    space = {"split.cut": IntUniformDistribution(min(cuts), max(cuts)), "codec": CategoricalDistribution(codecs)}
    picked: list[tuple[int, str]] = []
    while len(picked) < n_trials:
        trials = [study.ask() for _ in range(min(batch, n_trials - len(picked)))]
        for t in trials:
            for name, dist in space.items():
                t._suggest(name, dist)
        for t in trials:
            key = (int(t.params["split.cut"]), str(t.params["codec"]))
            picked.append(key)
            study.tell(t, values[key])
    return picked


def hv_ratio_curve(picked: list[tuple[int, str]], values: dict, lo, hi, full: float) -> list[float]:
    from splitinfer.report.search import hypervolume_curve

    return [v / full for v in hypervolume_curve([values[k] for k in picked], lo, hi)]


def first_reaching(curve: list[float], level: float) -> int | None:
    return next((i + 1 for i, v in enumerate(curve) if v >= level), None)


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
    plot(rows, out / "hv_vs_trials.png", args.trials, len(grid), len(front))
    for s_ in summary:
        print(s_)
    print(f"grid: {len(grid)} jobs, {len(front)} on its front; figure {out / 'hv_vs_trials.png'}")


def plot(rows: list[dict], path: Path, budget: int, n_grid: int, n_front: int) -> None:
    from splitinfer.report.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"replay-nsga2": ("C0", "-"), "replay-motpe": ("C2", "-"), "replay-random": ("grey", "--"),
              "hydra-search": ("C3", "-")}
    done = set()
    for (src, seed) in dict.fromkeys((r["source"], r["seed"]) for r in rows):
        rs = [r for r in rows if r["source"] == src and r["seed"] == seed]
        color, ls = styles.get(src, ("k", ":"))
        label = None
        if src not in done:
            label = {"replay-nsga2": "NSGA-II replayed on the grid (3 seeds)",
                     "replay-random": "random sampler replayed (3 seeds)",
                     "replay-motpe": "MOTPE replayed (3 seeds)",
                     "hydra-search": "real Hydra search (Optuna sweeper)"}.get(src, src)
            done.add(src)
        ax.plot([r["trials"] for r in rs], [r["hv_ratio"] for r in rs], color=color, ls=ls,
                lw=2.0 if src == "hydra-search" else 1.2, alpha=0.9, label=label)
    ax.axhline(0.95, color="k", lw=0.8, ls=":")
    ax.axvline(n_grid / 3, color="k", lw=0.8, ls=":")
    ax.text(n_grid / 3, 0.02, f" 1/3 of the grid ({n_grid / 3:.0f} jobs)", fontsize=8)
    ax.text(1, 0.955, "95 %", fontsize=8)
    ax.set_xlabel("trials (jobs run)")
    ax.set_ylabel("hypervolume / grid's hypervolume")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"search vs the full grid ({n_grid} jobs, {n_front} on its front)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
