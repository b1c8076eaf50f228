"""Metric loggers: a small protocol (`log_dict`, `log_config`, `log_table`, `log_image`, `close`) that
hides whether metrics go to a local JSONL file, to Weights & Biases, or both.

The JSONL log is always written, so reports never depend on W&B. W&B is imported lazily, runs
offline unless asked otherwise (nothing leaves the machine; `wandb sync DIR` uploads later), and if
it is missing or fails to start we warn and carry on with JSONL alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class MetricLogger(Protocol):
    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None: ...
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def log_image(self, name: str, path: str | Path) -> None: ...
    def close(self) -> None: ...


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON has no NaN/Infinity
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


class JsonlLogger:
    """Appends one JSON object per call to a file: {"kind": "config"|"metrics"|"table"|"image", ...}."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        record = {"time": time.time(), **record}
        self._fh.write(json.dumps(_jsonable(record), allow_nan=False) + "\n")
        self._fh.flush()

    def log(self, key: str, value: Any, step: int | None = None) -> None:
        self.log_dict({key: value}, step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._write({"kind": "metrics", "step": step, "metrics": metrics})

    def log_config(self, config: dict[str, Any]) -> None:
        self._write({"kind": "config", "config": config})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._write({"kind": "table", "name": name, "columns": columns, "rows": rows})

    def log_image(self, name: str, path: str | Path) -> None:
        self._write({"kind": "image", "name": name, "path": str(path)})

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class WandbLogger:
    """One W&B run per job. Raises on failure to start; `build_logger` turns that into a warning."""

    def __init__(self, project: str, group: str | None, job_type: str, name: str | None, mode: str,
                 dir: str | Path, config: dict[str, Any] | None = None, entity: str | None = None,
                 tags: list[str] | None = None) -> None:
        import os

        os.environ.setdefault("WANDB_SILENT", "true")  # one run per job: keep the sweep's console readable
        import wandb  # lazy: W&B is optional at run time

        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.wandb.mode={mode!r} is not one of offline, online, disabled")
        self._wandb = wandb
        Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, entity=entity, group=group, job_type=job_type, name=name,
                              mode=mode, dir=str(dir), config=config, tags=tags or None,
                              reinit="finish_previous", settings=wandb.Settings(quiet=True))

    def log(self, key: str, value: Any, step: int | None = None) -> None:
        self.log_dict({key: value}, step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        self.run.log(numbers, step=step)
        for k, v in metrics.items():  # strings (codec name, link...) go to the summary
            self.run.summary[k] = v

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self._wandb.Table(columns=columns, data=[[_jsonable(c) for c in r] for r in rows])})

    def log_image(self, name: str, path: str | Path) -> None:
        self.run.log({name: self._wandb.Image(str(path))})

    def close(self) -> None:
        self.run.finish()


class MultiLogger:
    """Fans every call out; a failing W&B call is warned about and never loses the JSONL record."""

    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = loggers

    def _each(self, method: str, *args: Any) -> None:
        for lg in self.loggers:
            try:
                getattr(lg, method)(*args)
            except Exception as e:  # noqa: BLE001 - a logger must never kill the experiment
                if isinstance(lg, JsonlLogger):
                    raise
                warnings.warn(f"{type(lg).__name__}.{method} failed ({e}); the JSONL log still has it",
                              stacklevel=2)

    def log(self, key: str, value: Any, step: int | None = None) -> None:
        self._each("log_dict", {key: value}, step)

    def log_dict(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._each("log_dict", metrics, step)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._each("log_table", name, columns, rows)

    def log_image(self, name: str, path: str | Path) -> None:
        self._each("log_image", name, path)

    def close(self) -> None:
        self._each("close")


def build_logger(out_dir: str | Path, jsonl_path: str = "metrics.jsonl", wandb: dict | None = None,
                 group: str | None = None, job_type: str = "sweep", name: str | None = None,
                 run_config: dict[str, Any] | None = None) -> MultiLogger:
    """The JSONL logger in `out_dir`, plus a W&B run when `wandb` options are given and W&B works."""
    out_dir = Path(out_dir)
    loggers: list[Any] = [JsonlLogger(out_dir / jsonl_path)]
    if wandb:
        opts = dict(wandb)
        mode = str(opts.pop("mode", "offline"))
        wdir = opts.pop("dir", None) or out_dir
        try:
            loggers.append(WandbLogger(group=group, job_type=job_type, name=name, mode=mode, dir=wdir,
                                       config=run_config, **opts))
        except Exception as e:  # noqa: BLE001 - missing package, bad key, no disk...: fall back, loudly
            warnings.warn(f"W&B logging is off for this job ({type(e).__name__}: {e}); "
                          f"metrics are still written to {out_dir / jsonl_path}", stacklevel=2)
    logger = MultiLogger(loggers)
    if run_config is not None:
        loggers[0].log_config(run_config)
    return logger
