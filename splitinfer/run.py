"""`python -m splitinfer.run`: the Hydra entry point. One job = one configuration -> metrics.json.

    python -m splitinfer.run split.cut=15 codec=int8
    python -m splitinfer.run -m experiment=default_sweep
    python -m splitinfer.run -m split.cut='range(0,31)' codec=fp16,int8,int4_b32

See conf/config.yaml for the groups; `splitinfer report MULTIRUN_DIR` aggregates a sweep.

The configs ship inside the package as `splitinfer.conf` (the top-level conf/ of the repository, mapped
by setup.py), so an installed copy runs from any folder. Every config group is required and strict: an
option that does not exist (`codec=int9`, or `codec=int8,int9` in a sweep, or in an experiment's sweeper
params) is refused with one line before any job runs, exit status 2.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from splitinfer.cli import is_user_error
from splitinfer.errors import ConfigError, NotFoundError, UserError, exit_for_user_error
from splitinfer.registry import closest
from splitinfer.search import SearchCallback  # noqa: F401 - registers ${splitinfer_add:} (search job folders)

log = logging.getLogger(__name__)

CONFIG_MODULE = "splitinfer.conf"
CONFIG_NAME = "config"
# Groups that were renamed: an override of the old name gets this line instead of Hydra's "no match".
RENAMED_GROUPS = {
    "device": "the hardware-profile group `device` is now `hardware` (device/dtype name torch placement): use "
              "hardware=<profile> for the device side and server_hardware=<profile> for the server "
              "(profiles: conf/hardware/*.yaml, e.g. hardware=snapdragon_8_gen3 server_hardware=h100)",
}
# Groups that may be left empty (`experiment: null` in conf/config.yaml); every other group needs an option.
NULLABLE_GROUPS = frozenset({"experiment", "hparams_search"})


def config_path() -> str:
    """Where Hydra reads the configs: the installed package `splitinfer.conf` (a wheel, or an editable
    install that maps it), else the top-level conf/ of a source checkout (an older editable install)."""
    try:
        spec = importlib.util.find_spec(CONFIG_MODULE)
    except ImportError:
        spec = None
    if spec is not None and spec.origin and spec.origin.endswith("__init__.py"):
        return f"pkg://{CONFIG_MODULE}"
    checkout = Path(__file__).resolve().parents[1] / "conf"
    if (checkout / f"{CONFIG_NAME}.yaml").is_file():
        return str(checkout)
    return f"pkg://{CONFIG_MODULE}"  # checked (and refused with a clear line) by check_installed_configs


def check_installed_configs(path: str | None = None) -> None:
    """Refuse to run without the configs rather than let Hydra compose an empty config."""
    path = path or CONFIG_PATH
    if path.startswith("pkg://"):
        try:
            found = importlib.util.find_spec(CONFIG_MODULE) is not None
        except ImportError:
            found = False
    else:
        found = (Path(path) / f"{CONFIG_NAME}.yaml").is_file()
    if not found:
        raise NotFoundError(f"the splitinfer configs ({CONFIG_MODULE}, conf/{CONFIG_NAME}.yaml) are not installed "
                            "with this copy of splitinfer; reinstall it (pip install .) or run from a checkout")


CONFIG_PATH = config_path()


# ---------------------------------------------------------------------------------------------------------------
# Strict config groups
# ---------------------------------------------------------------------------------------------------------------


def unknown_option_message(group: str, value: str, choices: list[str]) -> str:
    """One line: the group, the bad value, the nearest option, every option."""
    near = closest(value, choices, n=1)  # difflib, the same hint as every other "unknown name" error
    hint = f" Did you mean {group}={near[0]}?" if near else ""
    return f"{group}={value}: no such option in config group '{group}'.{hint} Choices: {', '.join(choices)}"


def _override_values(override: Any) -> list[Any] | None:
    """The options a group override selects (every value of a sweep); None when it cannot tell (glob)."""
    from hydra.core.override_parser.types import Glob

    if override.is_sweep_override():
        if isinstance(override.value(), Glob):
            return None  # glob(...) filters the existing options: it cannot name a missing one
        return list(override.sweep_string_iterator())
    value = override.value()
    if value is None:
        return [None]
    if isinstance(value, list):  # codec=[a,b]: several configs of one group (not a sweep)
        return [str(v) for v in value]
    return [override.get_value_element_as_str()]


def check_group_overrides(overrides: list[str], repo: Any) -> None:
    """Raise ConfigError for the first override that selects an option its group does not have.

    `repo` is a Hydra config repository (anything with group_exists / get_group_options)."""
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        group = override.key_or_group
        renamed = RENAMED_GROUPS.get(group.split(".")[0].split("/")[0])
        if renamed and not repo.group_exists(group.split(".")[0]):
            raise ConfigError(renamed)
        if override.is_delete() or not repo.group_exists(group):
            continue
        values = _override_values(override)
        if values is None:
            continue
        choices = repo.get_group_options(group, results_filter=ObjectType.CONFIG)
        for value in values:
            if value is None:
                if group.split("/")[0] in NULLABLE_GROUPS or group.startswith("hydra/"):
                    continue
                raise ConfigError(f"{group}=null: the config group '{group}' needs an option. "
                                  f"Choices: {', '.join(choices)}")
            if value not in choices:
                raise ConfigError(unknown_option_message(group, str(value), choices))


def _hydra_args(argv: list[str]) -> Any:
    """Hydra's own parse of the command line (None when it would not parse: Hydra reports that)."""
    from hydra._internal.utils import get_args_parser

    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return None
    return args


def check_command_line(argv: list[str], primary: str | None = None) -> None:
    """Check every config group option on the command line (sweep values included) before Hydra runs."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = _hydra_args(argv)
    if args is None or args.config_path is not None or args.help or args.hydra_help or args.shell_completion:
        return
    search_path = create_config_search_path(primary or CONFIG_PATH)
    if args.config_dir is not None:
        search_path.prepend(provider="command-line", path=f"file://{os.path.abspath(args.config_dir)}")
    loader = ConfigLoaderImpl(config_search_path=search_path)
    try:
        # Hydra's own search path for these overrides (hydra.searchpath=[...] included).
        _, repo = loader._parse_overrides_and_create_caching_repo(args.config_name or CONFIG_NAME,
                                                                  list(args.overrides))
    except (HydraException, OmegaConfBaseException):
        return  # a malformed override or a missing config dir: Hydra's own message says which
    except AttributeError:  # a Hydra without this (private) helper: Hydra's own checks still apply
        log.debug("Hydra %s: no config-group pre-check", hydra.__version__)
        return
    check_group_overrides(list(args.overrides), repo)


def _repo_of(config: DictConfig) -> Any:
    """The config repository a composed config came from (its hydra.runtime.config_sources)."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search_path = ConfigSearchPathImpl()
    for source in config.hydra.runtime.config_sources:
        search_path.append(source.provider, f"{source.schema}://{source.path}")
    return ConfigRepository(config_search_path=search_path)


class CheckChoices(Callback):
    """Before a multirun launches anything: every option its sweeper params select must exist (the command
    line was checked already; an experiment's `hydra.sweeper.params` are checked here)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        params = dict(config.hydra.sweeper.get("params") or {})
        if not params:
            return
        try:
            check_group_overrides([f"{k}={v}" for k, v in params.items()], _repo_of(config))
        except UserError as e:
            exit_for_user_error(e)


# ---------------------------------------------------------------------------------------------------------------
# Progress and the job's summary
# ---------------------------------------------------------------------------------------------------------------


def count_jobs(overrides: list[str], sweeper_params: dict[str, Any] | None = None) -> int | None:
    """Number of jobs a basic-sweeper multirun expands to (None if it cannot tell)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    merged = list(overrides) + [f"{k}={v}" for k, v in (sweeper_params or {}).items() if k not in given]
    try:
        parsed = OverridesParser.create().parse_overrides(merged)
        return math.prod(len(list(o.sweep_string_iterator())) for o in parsed if o.is_sweep_override())
    except Exception:  # noqa: BLE001 - a progress bar must never stop a sweep
        return None


class SweepProgress(Callback):
    """What a multirun shows while it runs and when it ends, whatever the launcher.

    A tqdm bar over the jobs (on a terminal; it moves when jobs run in this process: the basic launcher);
    a line every few seconds counting the jobs that wrote metrics.json (the only thing this process sees of
    jobs run by joblib, submitit or ray workers); and, at the end, one summary line: jobs done, failed, time,
    folder and the command that reports it."""

    def __init__(self) -> None:
        self.bar = None
        self.beat = None
        self.total: int | None = None
        self.sweep_dir: Path | None = None
        self.t0 = 0.0

    def __getstate__(self) -> dict:
        # Process launchers (joblib) pickle the callbacks into every worker: the bar and the heartbeat's
        # thread stay in this process.
        return {**self.__dict__, "bar": None, "beat": None}

    def done(self) -> int:
        return sum(1 for _ in self.sweep_dir.rglob("metrics.json")) if self.sweep_dir else 0

    def _status(self) -> str:
        return f"{self.done()}" + (f" of {self.total}" if self.total else "") + " jobs done"

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        import time

        from tqdm.auto import tqdm

        from splitinfer.progress import Heartbeat

        params = dict(config.hydra.sweeper.get("params") or {})
        n_trials = config.hydra.sweeper.get("n_trials")  # a search (Optuna sweeper): its trial budget
        self.total = (int(n_trials) if n_trials
                      else count_jobs(list(config.hydra.overrides.task), {k: str(v) for k, v in params.items()}))
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=self.total, desc=f"sweep {config.get('name', '')}", unit="job", disable=None)
        if self.bar.disable:  # no terminal: lines instead of a bar
            self.beat = Heartbeat(f"sweep {config.get('name', '')}", log, status=self._status,
                                  start_line=False).start()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        import time

        if self.beat is not None:
            self.beat.stop(done_line=False)  # the summary below says it
        if self.bar is not None:
            self.bar.close()
        done = self.done()
        failed = f", {self.total - done} without metrics.json (failed: see their folders' logs)" if (
            self.total and done < self.total) else ""
        print(f"sweep done: {done}" + (f" of {self.total}" if self.total else "") + f" jobs{failed} in "
              f"{time.perf_counter() - self.t0:.0f} s -> {self.sweep_dir}\n"
              f"report it: splitinfer report {self.sweep_dir}", flush=True)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def summarize(metrics: Mapping[str, Any], out_dir: str | Path | None = None) -> str:
    """The headline metrics of one job as a few lines (only the ones the job measured)."""
    m = metrics
    lines = [f"cut {m.get('cut')} | codec {m.get('codec')} | defense {m.get('defense', 'none')}"
             + (f" | attack {m['attack']}" if m.get("attack") not in (None, "none") else "")]
    up_p, up_d = _num(m.get("up_bytes_per_token_prefill")), _num(m.get("up_bytes_per_token_decode"))
    if up_p is not None or up_d is not None:
        parts = [f"{v:,.0f} B/token {name}" for name, v in (("prefill", up_p), ("decode", up_d)) if v is not None]
        lines.append("uplink       " + ", ".join(parts))
    dppl = _num(m.get("delta_ppl_pct"))
    if dppl is not None:
        lo, hi = _num(m.get("delta_ppl_pct_ci_low")), _num(m.get("delta_ppl_pct_ci_high"))
        ci = f" (95% CI {lo:+.3f} .. {hi:+.3f})" if lo is not None and hi is not None else ""
        lines.append(f"Δppl         {dppl:+.3f} %{ci}")
    quality = []
    if (kl := _num(m.get("kl_mean"))) is not None:
        quality.append(f"KL {kl:.3g} nats")
    if (top1 := _num(m.get("top1_agreement"))) is not None:
        quality.append(f"top-1 {top1 * 100:.1f} %")
    if (em := _num(m.get("exact_match_rate"))) is not None:
        quality.append(f"exact match {em * 100:.1f} %")
    if quality:
        lines.append("quality      " + ", ".join(quality))
    ttft, tpot = _num(m.get("ttft_s")), _num(m.get("tpot_s"))
    if ttft is not None or tpot is not None:
        parts = [f"{name} {v * 1e3:.1f} ms" for name, v in (("TTFT", ttft), ("TPOT", tpot)) if v is not None]
        where = f" (link {m['link']}, device {m.get('device', '?')})" if m.get("link") else ""
        lines.append("latency      " + ", ".join(parts) + where)
    privacy = [(k.removeprefix("privacy/"), v) for k, v in m.items()
               if k.startswith("privacy/") and _num(v) is not None]
    if privacy:
        lines.append("privacy      " + ", ".join(f"{k} {float(v):.3g}" for k, v in sorted(privacy)))
    if out_dir is not None:
        lines.append(f"output       {out_dir}")
    return "\n".join(lines)


def remove_if_empty(out_dir: Path, log_name: str | None = None) -> bool:
    """Remove a job folder that holds only what Hydra put there (.hydra/, its job log); True if removed.
    Emptied parent folders under the working directory go too (outputs/<name>/ of a first failed job)."""
    import shutil

    hydra_only = {".hydra"} | ({f"{log_name}.log"} if log_name else set())
    try:
        entries = {p.name for p in out_dir.iterdir()}
    except FileNotFoundError:
        return False
    if not entries <= hydra_only:
        return False
    shutil.rmtree(out_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = out_dir.resolve().parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break
        parent = parent.parent
    return True


def _task(cfg: DictConfig) -> float | list[float] | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from splitinfer.experiment import run_job

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        metrics = run_job(cfg)
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: Hydra prints the traceback, the folder (with its log) stays
        # Bad input: one clear line, no traceback, and no folder left behind with nothing in it.
        remove_if_empty(out_dir, hc.job.name)
        exit_for_user_error(e)
    if hc.mode != RunMode.MULTIRUN:
        shown = Path(os.path.relpath(out_dir)) if out_dir.resolve().is_relative_to(Path.cwd().resolve()) else out_dir
        print(summarize(metrics, shown), flush=True)
    if cfg.get("search") is not None:  # a search trial (hparams_search=...): its objectives, to the sweeper
        from splitinfer.objectives import objective_values

        return objective_values(cfg.search, metrics)
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna): the per-token latency.
    value = metrics.get("tpot_s")
    return float(value) if isinstance(value, int | float) else None


hydra_main = hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)(_task)


def main() -> None:
    """`python -m splitinfer.run [hydra args]`: check the configs and the group options, then run Hydra."""
    try:
        check_installed_configs()
        check_command_line(sys.argv[1:])
    except UserError as e:
        exit_for_user_error(e)
    hydra_main()


if __name__ == "__main__":
    main()
