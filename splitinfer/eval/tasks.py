"""Offline lm-eval tasks: found in local folders, their data checked on disk, built with paths that work
from any working directory.

A task YAML with `dataset_path: json` (or csv, parquet, text) names its files in
`dataset_kwargs.data_files`; datasets reads a relative name against the working directory, so the same
YAML would work from its own folder only. Here a relative name is read against the YAML's folder: each
task is built (its data loaded) with that folder as the working directory, and the built `Task` objects
are what lm-eval evaluates. A file that is not there is one line naming the task, the file and where to put
it. Tasks not found in the include paths go to lm-eval by name (with HF_DATASETS_OFFLINE=1: its own cache
or nothing).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from splitinfer.errors import ConfigError, NotFoundError

BUNDLED_TASKS = Path(__file__).resolve().parent / "tasks"
LOCAL_LOADERS = ("json", "csv", "parquet", "text", "arrow")
OFFLINE_ENV = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


class TaskDataMissingError(NotFoundError):
    """A task's data file is not on disk."""


class UnknownTaskError(ConfigError):
    """A task name that no include path and no lm-eval task defines."""


class _LenientLoader(yaml.SafeLoader):
    """Reads lm-eval YAMLs for their plain keys; `!function` and other tags become None."""


_LenientLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


@dataclass(frozen=True)
class LocalTask:
    """A task YAML found in an include path and the data files it names (absolute)."""

    name: str
    yaml_path: Path
    data_files: tuple[Path, ...] = field(default=())

    def check(self) -> None:
        for f in self.data_files:
            if not f.is_file():
                raise TaskDataMissingError(
                    f"task {self.name!r}: its data file {f} is not on disk; put the file there (the task's YAML "
                    f"{self.yaml_path} names it in dataset_kwargs.data_files, relative to the YAML's folder). "
                    "splitinfer never downloads data")

    def digest(self) -> str:
        """sha256 of the YAML and its data files: what the task's examples are (for the baseline cache)."""
        h = hashlib.sha256(self.yaml_path.read_bytes())
        for f in self.data_files:
            h.update(f.read_bytes())
        return h.hexdigest()[:16]


def _data_files(cfg: dict, folder: Path) -> tuple[Path, ...]:
    if str(cfg.get("dataset_path")) not in LOCAL_LOADERS:
        return ()
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, dict):
        names = [v for value in files.values() for v in (value if isinstance(value, list) else [value])]
    else:
        names = files if isinstance(files, list) else [files] if files else []
    return tuple((folder / str(n)).resolve() for n in names)


def include_paths(extra: list[str | os.PathLike] | None = None) -> list[Path]:
    """The bundled task folder plus the user's include paths (each must exist)."""
    paths = [BUNDLED_TASKS]
    for p in extra or []:
        path = Path(p).expanduser()
        if not path.exists():
            raise NotFoundError(f"include path {p} does not exist; give a folder (or YAML file) of lm-eval tasks")
        paths.append(path.resolve())
    return paths


def find_local_tasks(paths: list[Path]) -> dict[str, LocalTask]:
    """Every single task (a YAML whose `task` is a string) under `paths`, by name; later paths win."""
    found: dict[str, LocalTask] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(root.rglob("*.yaml"))
        for f in files:
            try:
                cfg = yaml.load(f.read_text(), Loader=_LenientLoader)  # noqa: S506 - a SafeLoader subclass
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
            if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
                found[cfg["task"]] = LocalTask(cfg["task"], f.resolve(), _data_files(cfg, f.resolve().parent))
    return found


def parse_task_list(tasks: str | list[str]) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if str(t).strip()]
    if not names:
        raise ConfigError("no tasks given: name at least one, e.g. --tasks splitinfer_mc")
    return names


@dataclass
class TaskSet:
    """The tasks of one evaluation: built lm-eval Task objects (local ones) and names left to lm-eval."""

    names: list[str]
    local: dict[str, LocalTask]
    task_manager: Any

    def digest(self) -> str:
        """What the tasks are: local tasks by their content, others by name (and lm-eval's version)."""
        import lm_eval

        parts = [f"{n}:{self.local[n].digest() if n in self.local else 'lm-eval'}" for n in self.names]
        return hashlib.sha256(f"{lm_eval.__version__}|{'|'.join(parts)}".encode()).hexdigest()[:16]

    def build(self) -> list[Any]:
        """What `simple_evaluate(tasks=...)` takes: local tasks as built Task objects (data read against
        their YAML's folder), the others by name."""
        from lm_eval.tasks import get_task_dict

        out: list[Any] = []
        for name in self.names:
            task = self.local.get(name)
            if task is not None:
                task.check()
            try:
                with _in_folder(task.yaml_path.parent if task else None):
                    built = get_task_dict([name], self.task_manager)
            except (OSError, ConnectionError, ValueError) as e:
                if task is not None or isinstance(e, UnknownTaskError):
                    raise
                raise TaskDataMissingError(
                    f"task {name!r}: lm-eval could not load its data offline ({type(e).__name__}); splitinfer "
                    "never downloads data: save the examples as JSON lines and point a task YAML at them with "
                    "dataset_path: json and dataset_kwargs.data_files, in a folder given to --include_path") from None
            out.extend(_leaves(built))
        return out


@contextlib.contextmanager
def _in_folder(folder: Path | None):
    """Run the block with `folder` as the working directory (None: where we are)."""
    if folder is None:
        yield
        return
    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def _leaves(task_dict: dict) -> list[Any]:
    out = []
    for v in task_dict.values():
        out.extend(_leaves(v) if isinstance(v, dict) else [v])
    return out


def offline_env() -> None:
    """lm-eval and datasets never reach the Hub from splitinfer."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)


def task_set(tasks: str | list[str], include: list[str | os.PathLike] | None = None) -> TaskSet:
    """Resolve task names against the bundled and given include paths; unknown names fail here."""
    from lm_eval.tasks import TaskManager

    offline_env()
    names = parse_task_list(tasks)
    paths = include_paths(include)
    local = find_local_tasks(paths)
    # lm-eval's own task index (thousands of YAMLs, ~10 s to read) only when a name needs it
    tm = TaskManager(include_path=[str(p) for p in paths], include_defaults=any(n not in local for n in names))
    for n in names:
        if n not in local and n not in tm.all_tasks:
            raise UnknownTaskError(f"task {n!r} is not in the include paths ({', '.join(map(str, paths))}) nor one of "
                                   f"lm-eval's tasks; add its YAML folder with --include_path DIR "
                                   f"(local tasks: {', '.join(sorted(local)) or 'none'})")
    return TaskSet(names, {n: local[n] for n in names if n in local}, tm)
