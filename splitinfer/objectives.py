"""What a search minimises and limits: objectives and constraints read from one job's metrics.

- `OBJECTIVES`: the names a search may minimise (`search.objectives`), each read from a job's metrics.
- `CONSTRAINTS`: the limits it may set (`search.constraints`; value = measured - limit, <= 0 is feasible).
- `trial_metrics` (called by `experiment.run_job` when the config has a `search` node): `objective/<name>`
  and `constraint/<name>` values written into the job's metrics.json.
- `objective_values`: what the job returns to the sweeper (`splitinfer.run`).

Apart from `splitinfer.search` (the Hydra callbacks) so that the job, the report and the sweeper read one
definition without importing each other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from splitinfer.errors import ConfigError
from splitinfer.registry import closest


def finite(v: Any) -> float | None:
    """`v` as a finite float, or None (missing, NaN, a bool, a string)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


TRIAL_PREFIX = "objective/"
CONSTRAINT_PREFIX = "constraint/"


def _quality_bound(m: Mapping[str, Any]) -> float | None:
    # imported here: importing the report package (plots, tables) at start-up would cost seconds
    from splitinfer.report.measures import quality_bound

    return quality_bound(dict(m))[0]


def _leakage(m: Mapping[str, Any]) -> float | None:
    """The strongest attack's token recovery in this job (max over privacy/<attack>/token_acc)."""
    vals = [finite(v) for k, v in m.items() if k.startswith("privacy/") and k.endswith("/token_acc")]
    vals = [v for v in vals if v is not None]
    return max(vals) if vals else None


def _mb(m: Mapping[str, Any]) -> float | None:
    b = finite(m.get("device_memory_bytes"))
    return None if b is None else b / 1e6


# name -> (how to read it from a job's metrics, unit, what it is). All are minimised.
OBJECTIVES: dict[str, tuple[Callable[[Mapping[str, Any]], float | None], str, str]] = {
    "bytes": (lambda m: finite(m.get("up_bytes_per_token_decode")), "B", "uplink bytes per generated token"),
    "bytes_prefill": (lambda m: finite(m.get("up_bytes_per_token_prefill")), "B", "uplink bytes per prompt token"),
    "dppl_ub": (_quality_bound, "%", "upper end of the 95 % interval of |Δppl|"),
    "kl": (lambda m: finite(m.get("kl_mean")), "nats", "mean KL(unsplit || split)"),
    "leakage": (_leakage, "", "token recovery of the strongest attack run (needs attack=...)"),
    "latency": (lambda m: finite(m.get("tpot_s")), "s", "per-token latency on the job's link and device"),
    "ttft": (lambda m: finite(m.get("ttft_s")), "s", "time to first token on the job's link and device"),
    "energy": (lambda m: finite(m.get("energy_j_per_token")), "J", "device energy per token"),
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
    return [v if (v := finite(got.get(TRIAL_PREFIX + n))) is not None else float("nan")
            for n in got["search_objectives"]]


def labelled(names: list[str], values: list[float | None]) -> str:
    """Objective values with their names and units: `bytes 354.7 B, dppl_ub 2.12 %, latency 0.214 s`."""
    parts = []
    for name, v in zip(names, values, strict=True):
        unit = OBJECTIVES[name][1] if name in OBJECTIVES else ""
        x = finite(v)
        parts.append(f"{name} {'—' if x is None else format(x, '.4g')}{' ' + unit if unit else ''}")
    return ", ".join(parts)
