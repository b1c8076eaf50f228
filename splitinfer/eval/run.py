"""One task evaluation of a split against its unsplit baseline: the loop `splitinfer eval` and sweep jobs
share (a recipe component, so both compute their figures with the same code).

The unsplit baseline depends only on the model, the tasks' content and the evaluation settings, never on
the cut, codec or defense: it is computed once and kept in memory and under `splitinfer.cache.directory("eval")`, keyed by
the model's fingerprint, the tasks' digest (YAML + data files) and the settings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from splitinfer import cache as cache_store  # `cache` is unsplit_baseline's on/off argument
from splitinfer.errors import ConfigError
from splitinfer.eval.compare import compare, per_example
from splitinfer.eval.tasks import TaskSet, task_set

log = logging.getLogger(__name__)

_BASELINES = cache_store.memo("eval.baselines")  # key -> unsplit task results (cleared by splitinfer.cache.clear)


@dataclass(frozen=True)
class EvalSettings:
    """lm-eval's settings that change the results (batch size does not: it is kept out of the cache key)."""

    num_fewshot: int | None = None
    limit: float | None = None
    batch_size: int = 8
    max_length: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_fewshot is not None and (not isinstance(self.num_fewshot, int) or self.num_fewshot < 0):
            raise ConfigError(f"num_fewshot={self.num_fewshot!r}: must be an int >= 0")
        if self.limit is not None and not (isinstance(self.limit, int | float) and self.limit > 0):
            raise ConfigError(f"limit={self.limit!r}: must be > 0 (a count, or a fraction below 1)")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r}: must be an int >= 1")

    def key(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


def hf_checkpoint(lm) -> Path:
    """A local Hugging Face folder holding `lm`'s weights, for lm-eval's own `hf` model (the outside
    reference a split is checked against): the folder it was loaded from (a GGUF's conversion in the model
    cache, or a local directory), else a `save_pretrained` copy under `splitinfer.cache.directory("eval")`. Never downloads."""
    src = Path(str(getattr(lm.model.config, "name_or_path", "") or ""))
    if src.is_dir() and (src / "config.json").is_file() and (src / "tokenizer_config.json").is_file():
        return src
    target = cache_store.directory("eval") / f"hf-{lm.fingerprint}"
    if not (target / "config.json").is_file():
        if lm.tokenizer is None:
            raise ConfigError(f"model {lm.name!r} has no tokenizer; lm-eval's hf model needs one")
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


_ENV_INFO = cache_store.memo("eval.env_info")  # lm-eval's environment fields, collected once per process


def _env_info_once() -> None:
    """lm-eval adds the environment (torch's collect_env: a `pip list` subprocess, ~2 s) to every result;
    it cannot change within a process, so a sweep's jobs collect it once and copy it."""
    import lm_eval.evaluator as ev

    original = getattr(ev.add_env_info, "__wrapped__", ev.add_env_info)

    def add_env_info(results: dict) -> None:
        if not _ENV_INFO:
            scratch: dict = {}
            original(scratch)
            _ENV_INFO.update(scratch)
        results.update(_ENV_INFO)

    add_env_info.__wrapped__ = original  # type: ignore[attr-defined]
    ev.add_env_info = add_env_info


def evaluate_model(model, tasks: TaskSet, settings: EvalSettings, built: list | None = None) -> dict:
    """`lm_eval.simple_evaluate` on `model` (a `SplitLM`) with per-example samples kept."""
    import lm_eval

    _env_info_once()
    if logging.getLogger("lm_eval").getEffectiveLevel() < logging.WARNING and not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("lm_eval").setLevel(logging.WARNING)  # its INFO lines would flood a sweep's job logs

    return lm_eval.simple_evaluate(
        model=model, tasks=built if built is not None else tasks.build(), num_fewshot=settings.num_fewshot,
        limit=settings.limit, log_samples=True, task_manager=tasks.task_manager, random_seed=settings.seed,
        numpy_random_seed=settings.seed, torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
        bootstrap_iters=1000, verbosity="WARNING")


def baseline_key(lm, tasks: TaskSet, settings: EvalSettings) -> str:
    return cache_store.key({"model": lm.fingerprint, "tasks": tasks.digest(), **settings.key(), "v": 1})


def unsplit_baseline(lm, tasks: TaskSet, settings: EvalSettings, built: list | None = None,
                     cache: bool = True) -> dict:
    """{"results", "per_example", "seconds", "cached"} of the unsplit model: from memory, the disk cache,
    or computed (through `SplitLM(cut="unsplit")`: the same scoring code as every split)."""
    from splitinfer.eval.harness import SplitLM

    key = baseline_key(lm, tasks, settings)
    if cache and key in _BASELINES:
        return {**_BASELINES[key], "cached": True}
    path = cache_store.directory("eval") / f"unsplit-{key}.json"
    if cache and path.is_file():
        try:
            data = json.loads(path.read_text())
            _BASELINES[key] = data
            return {**data, "cached": True}
        except (OSError, ValueError) as e:  # a damaged cache file is recomputed, never trusted
            log.warning("ignoring unreadable baseline cache %s (%s)", path, e)
    t0 = time.perf_counter()
    res = evaluate_model(SplitLM(lm, cut="unsplit", batch_size=settings.batch_size,
                                 max_length=settings.max_length), tasks, settings, built)
    ex = per_example(res)
    data = {"model": lm.name, "results": {t: res["results"][t] for t in ex},
            "per_example": {t: {m: {str(k): v for k, v in d.items()} for m, d in ms.items()} for t, ms in ex.items()},
            "seconds": time.perf_counter() - t0}
    if cache:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)  # atomic: parallel jobs never read half a file
    data = json.loads(json.dumps(data))  # the same shape whether computed or read back (doc ids as strings)
    _BASELINES[key] = data
    return {**data, "cached": False}


def _int_keys(per_ex: dict) -> dict:
    return {t: {m: {int(k): v for k, v in d.items()} for m, d in ms.items()} for t, ms in per_ex.items()}


@dataclass
class TaskEvaluation:
    """A split's lm-eval result, its unsplit baseline and the per-task comparison rows."""

    result: dict
    baseline: dict
    rows: list[dict[str, Any]]
    split_seconds: float
    description: str
    bytes_up: int
    scored_tokens: int


def evaluate_tasks(lm, tasks: str | list[str] | TaskSet, *, cut: Any, codec: Any = "none", defense: Any = None,
                   server: str | None = None, include: list | None = None,
                   settings: EvalSettings | None = None, baseline: bool = True,
                   cache: bool = True) -> TaskEvaluation:
    """Evaluate the split (cut, codec, defense; in process or at `server`) on `tasks` and compare it with
    the unsplit model on the same examples."""
    from splitinfer.eval.harness import SplitLM

    settings = settings or EvalSettings()
    ts = tasks if isinstance(tasks, TaskSet) else task_set(tasks, include)
    built = ts.build()
    model = SplitLM(lm, cut=cut, codec=codec, defense=defense, server=server, batch_size=settings.batch_size,
                    max_length=settings.max_length)
    try:
        t0 = time.perf_counter()
        result = evaluate_model(model, ts, settings, built)
        seconds = time.perf_counter() - t0
    finally:
        model.close()
    base = unsplit_baseline(lm, ts, settings, built, cache=cache) if baseline else {"results": {}, "per_example": {}}
    rows = compare(result, {"results": base["results"], "per_example": _int_keys(base["per_example"])},
                   seed=settings.seed)
    return TaskEvaluation(result, base, rows, seconds, model.description, model.traffic_bytes_up,
                          model.scored_tokens)


_TASK_SETS = cache_store.memo("eval.task_sets")  # (names, include, ...) -> TaskSet


def job_task_set(tasks: Any, include: Any = ()) -> TaskSet:
    """A sweep job's task set (`metrics.tasks`, `metrics.task_include`), resolved once per process and
    checked (names, data files on disk) before any model loads."""
    from splitinfer.eval import require_lm_eval
    from splitinfer.eval.tasks import parse_task_list

    require_lm_eval()
    names = tuple(parse_task_list(list(tasks) if not isinstance(tasks, str) else tasks))
    key = (names, tuple(str(p) for p in include or ()))
    if key not in _TASK_SETS:
        ts = task_set(list(names), list(key[1]))
        for t in ts.local.values():
            t.check()
        _TASK_SETS[key] = ts
    return _TASK_SETS[key]


def job_task_metrics(lm, cut: int, codec: Any, defense: Any, opts) -> dict[str, Any]:
    """The task metrics of one sweep job (`MetricOptions.tasks`): each metric with its stderr and 95 %
    interval, the unsplit value and Δ with its paired interval (`compare.flat_metrics`), for metrics.json
    and the loggers; the unsplit baseline is computed once per model and cached."""
    from splitinfer.eval.compare import flat_metrics

    ts = job_task_set(opts.tasks, opts.task_include)
    settings = EvalSettings(num_fewshot=opts.task_num_fewshot, limit=opts.task_limit,
                            batch_size=int(opts.task_batch_size))
    ev = evaluate_tasks(lm, ts, cut=cut, codec=codec, defense=defense, settings=settings)
    return {**flat_metrics(ev.rows), "tasks": ",".join(ts.names), "task_eval_s": ev.split_seconds,
            "task_baseline_cached": bool(ev.baseline.get("cached")), "task_limit": settings.limit}
