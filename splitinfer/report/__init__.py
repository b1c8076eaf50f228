"""Turn a sweep's `metrics.json` files into a CSV, a Markdown report, plots, and a recommendation.

Reads only metrics files (and, to re-evaluate latency for another link, `conf/link/*.yaml`); never
runs a model, so a report of a finished sweep takes seconds.

- `runs`: load the jobs, re-evaluate latency for another link.
- `measures`: the quality bound (upper 95 % bound of |Δppl|), codec fidelity tiers, strongest-attack leakage.
- `tables`: Pareto frontier, CSV, Markdown tables.
- `plots`: metrics against the cut, the trade-off with its frontier, latency per link.
- `recommend`: the cut + codec under constraints, with honest reasons.
- `build`: `build_report` ties them together; `log_report` sends them to W&B.
- Benchmark outputs, imported by their recipes only (no model runs): `codec_rd` (scripts/bench_codecs.py:
  CSV, tables, figures), `transport_latency` (experiments/transport_latency/plot.py: decode ratio by wait mode).
"""

from __future__ import annotations

from splitinfer.report.build import Report, build_report, log_report, remove_previous_outputs
from splitinfer.report.measures import (
    LEAK,
    LEAKAGE_SUFFIXES,
    PRIVACY_NOT_MEASURED,
    QUALITY_BOUND,
    annotate,
    codec_fidelity,
    configurations,
    privacy_columns,
    quality_bound,
)
from splitinfer.report.plots import (
    PLOT_METRICS,
    plot_latency_by_link,
    plot_metrics_vs_cut,
    plot_tradeoff,
    set_scale,
)
from splitinfer.report.recommend import (
    OBJECTIVES,
    TIE_TOLERANCE,
    Constraints,
    Recommendation,
    choose,
    recommend,
)
from splitinfer.report.runs import CONF_DIR, ReportError, available_links, load_link, load_runs, with_latency
from splitinfer.report.tables import (
    TABLE_COLUMNS,
    latency_pivot,
    mark_pareto,
    markdown_table,
    pareto_front,
    tradeoff_objectives,
    write_csv,
)

__all__ = [
    "CONF_DIR",
    "LEAK",
    "LEAKAGE_SUFFIXES",
    "OBJECTIVES",
    "PLOT_METRICS",
    "PRIVACY_NOT_MEASURED",
    "QUALITY_BOUND",
    "TABLE_COLUMNS",
    "TIE_TOLERANCE",
    "Constraints",
    "Recommendation",
    "Report",
    "ReportError",
    "annotate",
    "available_links",
    "build_report",
    "choose",
    "codec_fidelity",
    "configurations",
    "latency_pivot",
    "load_link",
    "load_runs",
    "log_report",
    "mark_pareto",
    "markdown_table",
    "pareto_front",
    "plot_latency_by_link",
    "plot_metrics_vs_cut",
    "plot_tradeoff",
    "privacy_columns",
    "quality_bound",
    "recommend",
    "remove_previous_outputs",
    "set_scale",
    "tradeoff_objectives",
    "with_latency",
    "write_csv",
]
