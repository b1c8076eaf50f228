"""`python -m splitinfer.run`: the Hydra entry point. One job = one configuration -> metrics.json.

    python -m splitinfer.run split.cut=15 codec=int8
    python -m splitinfer.run -m experiment=default_sweep
    python -m splitinfer.run -m split.cut='range(0,31)' codec=fp16,int8,int4_b32

See conf/config.yaml for the groups; `splitinfer report MULTIRUN_DIR` aggregates a sweep.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
    """A tqdm bar over the jobs of a multirun (updates when jobs run in this process: basic launcher)."""

    def __init__(self) -> None:
        self.bar = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        params = dict(config.hydra.sweeper.get("params") or {})
        total = count_jobs(list(config.hydra.overrides.task), {k: str(v) for k, v in params.items()})
        self.bar = tqdm(total=total, desc=f"sweep {config.get('name', '')}", unit="job", disable=None)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from splitinfer.experiment import run_job

    try:
        metrics = run_job(cfg)
    except (ValueError, FileNotFoundError) as e:
        # Bad input: one clear line, no traceback (the message names the value and what is allowed).
        print(f"splitinfer.run: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna): the per-token latency.
    value = metrics.get("tpot_s")
    return float(value) if isinstance(value, int | float) else None


if __name__ == "__main__":
    main()
