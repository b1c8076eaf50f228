"""A split against the unsplit model, task by task: the difference of each metric, paired over examples.

Both models answer the same examples, so the interval is on the per-example difference (split − unsplit),
resampled by a bootstrap over examples: what varies is the split's effect, not which questions were asked.
A codec that changes no answer gets Δ 0 with the interval [0, 0]; lm-eval's own stderr (of each model's
accuracy alone) is far wider and says nothing about the difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from splitinfer.stats import Z_95, interval, resample_indices


def metric_names(task_results: dict) -> list[str]:
    """lm-eval's "metric,filter" keys of one task's results that hold a number (not stderr, not alias)."""
    return [k for k, v in task_results.items() if "," in k and "_stderr" not in k
            and isinstance(v, int | float) and not isinstance(v, bool)]


def per_example(results: dict) -> dict[str, dict[str, dict[int, float]]]:
    """{task: {"metric,filter": {doc_id: value}}} from a `simple_evaluate(log_samples=True)` result;
    metrics whose per-example value is not a number (corpus-level BLEU, ...) are left out."""
    out: dict[str, dict[str, dict[int, float]]] = {}
    for task, samples in (results.get("samples") or {}).items():
        keys = metric_names(results["results"].get(task, {}))
        table: dict[str, dict[int, float]] = {}
        for s in samples:
            for key in keys:
                metric, filt = key.split(",", 1)
                v = s.get(metric)
                if s.get("filter", "none") == filt and isinstance(v, int | float | bool):
                    table.setdefault(key, {})[int(s["doc_id"])] = float(v)
        out[task] = table
    return out


def paired_delta(split: dict[int, float], base: dict[int, float], seed: int = 0) -> dict[str, float]:
    """Mean of split − unsplit over the examples both have, with a 95 % bootstrap interval."""
    ids = sorted(set(split) & set(base))
    if not ids:
        return {"delta": math.nan, "delta_ci_low": math.nan, "delta_ci_high": math.nan, "n": 0}
    d = np.array([split[i] - base[i] for i in ids], dtype=np.float64)
    lo, hi = interval(d[resample_indices(len(d), seed)].mean(1))
    return {"delta": float(d.mean()), "delta_ci_low": float(lo), "delta_ci_high": float(hi), "n": len(ids),
            "changed": int(np.count_nonzero(d))}


def compare(split: dict, base: dict, seed: int = 0) -> list[dict[str, Any]]:
    """One row per (task, metric): the unsplit and split values with lm-eval's stderr, and Δ with its
    paired interval. `split` is a `simple_evaluate` result with samples; `base` the same or a cached
    baseline ({"results": ..., "per_example": ...})."""
    split_ex = per_example(split)
    base_ex = base.get("per_example") or per_example(base)
    rows = []
    for task, res in split["results"].items():
        b = base["results"].get(task, {})
        for key in metric_names(res):
            metric, filt = key.split(",", 1)
            row = {"task": task, "metric": metric, "filter": filt, "split": res[key],
                   "split_stderr": _num(res.get(f"{metric}_stderr,{filt}")),
                   "unsplit": _num(b.get(key)), "unsplit_stderr": _num(b.get(f"{metric}_stderr,{filt}"))}
            row.update(paired_delta(split_ex.get(task, {}).get(key, {}), base_ex.get(task, {}).get(key, {}), seed))
            rows.append(row)
    return rows


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def _pm(value: float, stderr: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.4f}" + ("" if math.isnan(stderr) else f" ± {Z_95 * stderr:.4f}")


def format_table(rows: list[dict[str, Any]], label: str = "split") -> str:
    """Markdown: each metric for unsplit and split (± the 95 % half-width from lm-eval's stderr) and Δ
    (split − unsplit) with its paired 95 % interval and how many examples changed."""
    head = ["task", "metric", "unsplit (95 % CI)", f"{label} (95 % CI)", "Δ [95 % CI, paired]", "changed / n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        delta = ("—" if math.isnan(r["delta"]) else
                 f"{r['delta']:+.4f} [{r['delta_ci_low']:+.4f}, {r['delta_ci_high']:+.4f}]")
        metric = r["metric"] + ("" if r["filter"] == "none" else f" ({r['filter']})")
        lines.append(f"| {r['task']} | {metric} | {_pm(r['unsplit'], r['unsplit_stderr'])} | "
                     f"{_pm(r['split'], r['split_stderr'])} | {delta} | {r.get('changed', 0)} / {r['n']} |")
    return "\n".join(lines)


def flat_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Rows as flat keys for metrics.json and loggers: `task/<task>/<metric>` and its `_stderr`,
    `_ci_low`/`_ci_high` (± 1.96 stderr), `_unsplit`, `_delta`, `_delta_ci_low`, `_delta_ci_high`, `_n`
    (the filter joins the metric name when it is not `none`)."""
    out: dict[str, float] = {}
    for r in rows:
        key = f"task/{r['task']}/{r['metric']}" + ("" if r["filter"] == "none" else f"_{r['filter']}")
        out[key] = r["split"]
        out[f"{key}_stderr"] = r["split_stderr"]
        out[f"{key}_ci_low"] = r["split"] - Z_95 * r["split_stderr"]
        out[f"{key}_ci_high"] = r["split"] + Z_95 * r["split_stderr"]
        out[f"{key}_unsplit"] = r["unsplit"]
        for k in ("delta", "delta_ci_low", "delta_ci_high", "n"):
            out[f"{key}_{k}"] = r[k]
    return out
