"""Multi-objective search over cut x codec x defense with Hydra's Optuna sweeper (conf/hparams_search/).

    python -m splitinfer.run -m hparams_search=split_optuna                  # NSGA-II, 3 objectives
    python -m splitinfer.run -m hparams_search=split_optuna hydra.sweeper.n_trials=200
    python -m splitinfer.run -m hparams_search=split_privacy_optuna         # + defense strength, leakage
    python -m splitinfer.run -m hparams_search=split_optuna hydra.sweep.dir=<the folder>   # resume it

Pieces:
- `splitinfer.objectives`: `OBJECTIVES` / `CONSTRAINTS` (what a search may minimise and limit, read from a
  job's metrics), `trial_metrics` (written into each trial's metrics.json and logged: W&B one run per
  trial, the search one group) and `objective_values` (what the job returns to the sweeper).
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
import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from splitinfer.errors import ConfigError, UserError, exit_for_user_error
from splitinfer.objectives import (  # noqa: F401 - the objectives' names stay importable from here
    CONSTRAINT_PREFIX,
    CONSTRAINTS,
    OBJECTIVES,
    TRIAL_PREFIX,
    constraint_limits,
    finite,
    labelled,
    objective_names,
    objective_values,
    trial_metrics,
)

SEARCH_FILE = "search.json"
EVERY_CUT = "every_cut"  # hydra.sweeper.params value: every cut of the job's model (SearchCallback.cut_space)
OPTUNA_SWEEPER_LOGGER = "hydra_plugins.hydra_optuna_sweeper._impl"

log = logging.getLogger(__name__)

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
        vals = [finite(m.get(CONSTRAINT_PREFIX + n)) for n in names]
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
            self.prepare(config)
            self.cut_space(config)
        except UserError as e:
            exit_for_user_error(e)
        quiet_optuna(objective_names(config.search))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """The Pareto set as `splitinfer report` counts it, labelled, with why Optuna's count can differ."""
        from splitinfer.report.search import front_summary

        try:
            print(front_summary(str(config.hydra.sweep.dir)), flush=True)
        except UserError as e:  # no finished trial: the sweeper said why
            log.warning("no Pareto set to show: %s", e)

    @staticmethod
    def cut_space(config: DictConfig) -> None:
        """`split.cut: every_cut` (conf/hparams_search): every cut of the job's model, 0..num_layers, from its
        depth (read from its config, no weights), so the space fits any model (model=tiny_llama: 0..4)."""
        params = config.hydra.sweeper.get("params") or {}
        if str(params.get("split.cut", "")).strip() != EVERY_CUT:
            return
        from hydra.utils import instantiate

        depth = int(instantiate(config.model).num_layers())
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.params["split.cut"] = f"int(interval(0,{depth}))"
        log.info("search space: split.cut in 0..%d (every cut of %s)", depth, config.model.get("name"))

    def prepare(self, config: DictConfig) -> None:
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


class LabelledValues(logging.Filter):
    """Rewrites the Optuna sweeper's closing lines: `Values: [354.67, 2.12, 0.21]` gets the objectives'
    names and units, and its Pareto count says what it counts (every non-dominated trial, infeasible ones
    and repeats of one configuration included; `splitinfer report` keeps feasible ones, one per configuration)."""

    VALUES = re.compile(r"^(\s*)Values: \[(.*)\], Params: (.*)$")

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        if m := self.VALUES.match(msg):
            try:
                vals = [float(v) for v in m.group(2).split(",")]
            except ValueError:
                return True
            if len(vals) == len(self.names):
                record.msg, record.args = f"{m.group(1)}{labelled(self.names, vals)}; params {m.group(3)}", ()
        elif msg.startswith("Number of Pareto solutions:"):
            record.msg = (msg.replace("Number of Pareto solutions:", "Optuna's Pareto trials (every non-dominated "
                                      "trial, infeasible ones and repeats included):"))
        return True


def quiet_optuna(names: list[str]) -> None:
    """What a search prints, made readable: labelled objective values (LabelledValues), Optuna's log lines
    without colour codes when stderr is not a terminal, and no ExperimentalWarning for the sampler options
    Hydra's sweeper passes (constraints_func and MOTPE are marked experimental in the Optuna 2.10 it needs;
    nothing a user can change)."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sweeper_log = logging.getLogger(OPTUNA_SWEEPER_LOGGER)
    for f in [f for f in sweeper_log.filters if isinstance(f, LabelledValues)]:
        sweeper_log.removeFilter(f)
    sweeper_log.addFilter(LabelledValues(names))
    if not sys.stderr.isatty():
        plain = logging.Formatter("[%(levelname)1.1s %(asctime)s] %(message)s")
        for handler in logging.getLogger("optuna").handlers:
            handler.setFormatter(plain)


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
