"""Search against a grid (experiments/search_vs_grid): how much of a grid's true Pareto front a
multi-objective sampler finds after N trials, without running a model.

The grid's stored jobs give every configuration's objectives (`grid_values`, as `splitinfer.search`
computes them); `replay` runs a sampler (NSGA-II with the population and batch of
conf/hparams_search/split_optuna.yaml, MOTPE, or random) against them in Hydra's ask-a-batch/tell loop;
`hv_ratio_curve` is the hypervolume of the first n picks over the grid front's (`report.search`).
"""

from __future__ import annotations

from pathlib import Path

from splitinfer.configs import CONF_DIR

OBJECTIVES = ["bytes", "dppl_ub", "latency"]
SAMPLERS = ("nsga2", "motpe", "random")


def grid_values(grid: Path) -> dict[tuple[int, str], list[float]]:
    """(cut, codec) -> its objectives, for every job of the grid folder that has all of them."""
    from splitinfer.report import load_runs
    from splitinfer.search import OBJECTIVES as FN

    out = {}
    for r in load_runs(grid):
        vals = [FN[o][0](r) for o in OBJECTIVES]
        if all(v is not None for v in vals):
            out[(int(r["cut"]), str(r["codec"]))] = vals
    return out


def search_settings() -> dict:
    """The search's NSGA-II population, batch (n_jobs) and codec choices, from its config."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(CONF_DIR) / "hparams_search" / "split_optuna.yaml")
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
    if sampler_name not in SAMPLERS:
        raise ValueError(f"sampler {sampler_name!r}: use one of {list(SAMPLERS)}")
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
    """After each pick: the hypervolume of the picks so far over the grid's (`full`)."""
    from splitinfer.report.search import hypervolume_curve

    return [v / full for v in hypervolume_curve([values[k] for k in picked], lo, hi)]


def first_reaching(curve: list[float], level: float) -> int | None:
    """The first trial count at which the curve reaches `level`; None if it never does."""
    return next((i + 1 for i, v in enumerate(curve) if v >= level), None)


def plot_hv_vs_trials(rows: list[dict], path: Path, n_grid: int, n_front: int) -> None:
    """The hypervolume ratio against trials, one line per (source, seed)."""
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
