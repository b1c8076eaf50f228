"""Multi-objective search over cut x codec x defense with Hydra's Optuna sweeper (conf/hparams_search/).

    python -m splitinfer.run -m hparams_search=split_optuna                  # NSGA-II, 3 objectives
    python -m splitinfer.run -m hparams_search=split_optuna hydra.sweeper.n_trials=200
    python -m splitinfer.run -m hparams_search=split_privacy_optuna         # + defense strength, leakage
    python -m splitinfer.run -m hparams_search=split_optuna hydra.sweep.dir=<the folder>   # resume it

Pieces:
- `OBJECTIVES`: the names a search may minimise (`search.objectives`), each read from a job's metrics.
- `trial_metrics` (called by `experiment.run_job` when the config has a `search` node): `objective/<name>`
  and `constraint/<name>` values written into the job's metrics.json and logged (W&B: one run per trial,
  the search one group, so the parallel-coordinates view shows the search).
- `objective_values`: what the job returns to the sweeper (`splitinfer.run`).
- `SearchCallback` (`hydra.callbacks.search`), before Hydra's Optuna sweeper is built: one direction per
  objective (all minimised), the sweep folder made before the SQLite study opens in it, job folders
  numbered by trial (a resumed search goes on at the next trial number instead of overwriting folders
  0, 1, ...), `search.json` for the report.
- `JobConstraints`: NSGA-II's `constraints_func` (Optuna: a value <= 0 is feasible), read from the trial's
  metrics.json (`constraint/<name>` = measured - limit).
- `defense_strength`: the sweeper's `custom_search_space`: a defense's strength knob is searched only when
  the trial picked that defense (a conditional parameter the flat `params` cannot express).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from splitinfer.errors import ConfigError, UserError, exit_for_user_error

log = logging.getLogger(__name__)

SEARCH_FILE = "search.json"
TRIAL_PREFIX = "objective/"
CONSTRAINT_PREFIX = "constraint/"


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


def _quality_bound(m: Mapping[str, Any]) -> float | None:
    from splitinfer.report.measures import quality_bound

    return quality_bound(dict(m))[0]


def _leakage(m: Mapping[str, Any]) -> float | None:
    """The strongest attack's token recovery in this job (max over privacy/<attack>/token_acc)."""
    vals = [_num(v) for k, v in m.items() if k.startswith("privacy/") and k.endswith("/token_acc")]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _mb(m: Mapping[str, Any]) -> float | None:
    b = _num(m.get("device_memory_bytes"))
    return None if b is None else b / 1e6


# name -> (how to read it from a job's metrics, unit, what it is). All are minimised.
OBJECTIVES: dict[str, tuple[Callable[[Mapping[str, Any]], float | None], str, str]] = {
    "bytes": (lambda m: _num(m.get("up_bytes_per_token_decode")), "B", "uplink bytes per generated token"),
    "bytes_prefill": (lambda m: _num(m.get("up_bytes_per_token_prefill")), "B", "uplink bytes per prompt token"),
    "dppl_ub": (_quality_bound, "%", "upper end of the 95 % interval of |Δppl|"),
    "kl": (lambda m: _num(m.get("kl_mean")), "nats", "mean KL(unsplit || split)"),
    "leakage": (_leakage, "", "token recovery of the strongest attack run (needs attack=...)"),
    "latency": (lambda m: _num(m.get("tpot_s")), "s", "per-token latency on the job's link and device"),
    "ttft": (lambda m: _num(m.get("ttft_s")), "s", "time to first token on the job's link and device"),
    "energy": (lambda m: _num(m.get("energy_j_per_token")), "J", "device energy per token"),
    "device_mb": (_mb, "MB", "device memory (stage weights + KV cache)"),
}
# name -> what it limits (constraint value = measured - limit; <= 0 is feasible)
CONSTRAINTS: dict[str, tuple[Callable[[Mapping[str, Any]], float | None], str]] = {
    "max_delta_ppl_pct": (_quality_bound, "upper 95 % bound of |Δppl| in %"),
    "max_device_mb": (_mb, "device memory in MB"),
    "max_leakage": (_leakage, "strongest attack's token recovery (0..1)"),
}


def objective_names(search: Mapping[str, Any]) -> list[str]:
    """The search's objectives (`search.objectives`), checked."""
    names = [str(n) for n in (search.get("objectives") or [])]
    if not names:
        raise ConfigError("search.objectives is empty; name at least one of " + ", ".join(OBJECTIVES))
    for n in names:
        if n not in OBJECTIVES:
            from splitinfer.registry import closest

            near = closest(n, list(OBJECTIVES), n=1)
            hint = f" Did you mean {near[0]}?" if near else ""
            raise ConfigError(f"search.objectives: unknown objective {n!r}.{hint} Choices: {', '.join(OBJECTIVES)}")
    return names


def constraint_limits(search: Mapping[str, Any]) -> dict[str, float]:
    """The set limits of `search.constraints` (null = no limit), checked."""
    out = {}
    for k, v in dict(search.get("constraints") or {}).items():
        if k not in CONSTRAINTS:
            raise ConfigError(f"search.constraints: unknown constraint {k!r}; choices: {', '.join(CONSTRAINTS)}")
        if v is not None:
            out[str(k)] = float(v)
    return out


def trial_metrics(search: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """`objective/<name>` and `constraint/<name>` of one job (None when the job did not measure it)."""
    out: dict[str, Any] = {"search_objectives": objective_names(search)}
    for n in out["search_objectives"]:
        out[TRIAL_PREFIX + n] = OBJECTIVES[n][0](metrics)
    for k, limit in constraint_limits(search).items():
        v = CONSTRAINTS[k][0](metrics)
        out[CONSTRAINT_PREFIX + k] = None if v is None else v - limit
    return out


def objective_values(search: Mapping[str, Any], metrics: Mapping[str, Any]) -> list[float]:
    """The values the job returns to the sweeper, in `search.objectives` order; NaN for one the job did
    not measure (Optuna then marks the trial failed instead of stopping the search)."""
    got = trial_metrics(search, metrics)
    return [v if (v := _num(got.get(TRIAL_PREFIX + n))) is not None else float("nan")
            for n in got["search_objectives"]]


class JobConstraints:
    """NSGA-II's `constraints_func`: the `constraint/*` values in the trial's metrics.json (job folder =
    trial number, see SearchCallback). A trial without them (failed job) counts as infeasible."""

    def __init__(self, sweep_dir: str, names: list[str] | None = None) -> None:
        self.sweep_dir = Path(str(sweep_dir))
        self.names = list(names) if names is not None else None

    def __call__(self, trial: Any) -> list[float]:
        f = self.sweep_dir / str(trial.number) / "metrics.json"
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            m = {}
        names = self.names if self.names is not None else sorted(
            k.removeprefix(CONSTRAINT_PREFIX) for k in m if k.startswith(CONSTRAINT_PREFIX))
        vals = [_num(m.get(CONSTRAINT_PREFIX + n)) for n in names]
        return [1.0 if v is None else v for v in vals]


def defense_strength(cfg: Any, trial: Any) -> None:
    """`hydra.sweeper.custom_search_space`: when the trial picked a defense listed under `search.strength`
    (e.g. gaussian: {sigma: [0.01, 1.0]}), search its knob log-uniformly in that range."""
    search = cfg.get("search") or {}
    defense = trial.params.get("defense")
    knobs = dict((search.get("strength") or {}).get(str(defense)) or {}) if defense else {}
    for knob, bounds in knobs.items():
        lo, hi = (float(b) for b in bounds)
        trial.suggest_float(f"defense.{knob}", lo, hi, log=lo > 0)


def _add(a: Any, b: Any) -> int:
    return int(a) + int(b)


# `${splitinfer_add:${hydra.job.num},K}`: the job folder of a resumed search is its Optuna trial number.
# Registered when splitinfer.run (the task) is imported: in the sweeping process and in every worker.
OmegaConf.register_new_resolver("splitinfer_add", _add, replace=True)


class SearchCallback(Callback):
    """`hydra.callbacks.search` of conf/hparams_search: before Hydra builds the Optuna sweeper, set one
    direction per objective (all minimised), the constraints JobConstraints reads, make the sweep folder
    (SQLite makes the study file, not its folder) and, when the study already has trials (a resumed
    search), number the new job folders after them (`hydra.sweep.subdir`), then write search.json."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._prepare(config)
        except UserError as e:
            exit_for_user_error(e)

    def _prepare(self, config: DictConfig) -> None:
        search = config.get("search")
        if search is None:
            raise ConfigError("hydra.callbacks.search needs a `search` node: use hparams_search=split_optuna")
        names = objective_names(search)
        limits = constraint_limits(search)
        sweeper = config.hydra.sweeper
        storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        done = study_trials(storage, study_name, len(names)) if storage else 0
        with read_write(config.hydra), open_dict(config.hydra):
            sweeper.direction = ["minimize"] * len(names)
            cons = (sweeper.get("sampler") or {}).get("constraints_func")
            if cons is not None and "names" in cons:
                cons.names = sorted(limits)
            if done:
                log.info("resuming study %s after %d trials", study_name, done)
                subdir = f"'${{splitinfer_add:${{hydra.job.num}},{done}}}'"  # quoted: one value, resolved per job
                config.hydra.overrides.hydra.append(f"hydra.sweep.subdir={subdir}")
        sampler = sweeper.get("sampler") or {}
        (sweep_dir / SEARCH_FILE).write_text(json.dumps({
            "objectives": names, "directions": ["minimize"] * len(names), "constraints": limits,
            "study_name": study_name, "storage": str(storage), "sampler": str(sampler.get("_target_")),
            "seed": sampler.get("seed"), "n_trials": sweeper.get("n_trials"), "batch": sweeper.get("n_jobs"),
            "resumed_after": done,
        }, indent=1) + "\n")


def study_trials(storage: str, study_name: str | None, n_objectives: int) -> int:
    """Trials already in the study (0 when there is none); refuses a study with other objectives."""
    import optuna

    if study_name not in {s.study_name for s in optuna.study.get_all_study_summaries(storage=storage)}:
        return 0
    study = optuna.load_study(study_name=study_name, storage=storage)
    if len(study.directions) != n_objectives:
        raise ConfigError(f"the study {study_name!r} in {storage} has {len(study.directions)} objectives and "
                          f"search.objectives has {n_objectives}: resume with the same objectives, or give "
                          "another hydra.sweep.dir")
    stale = [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:  # asked by a search that was stopped: their jobs are gone, so they count as failed
        study._storage.set_trial_state(t._trial_id, optuna.trial.TrialState.FAIL)
    if stale:
        log.info("%d trials of the stopped search marked failed: %s", len(stale), [t.number for t in stale])
    return len(study.trials)
