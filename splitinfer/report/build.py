"""`build_report`: a sweep folder -> report.csv, report.md (recommendation, Pareto rows, plots, full table)
and PNG plots; `log_report` sends them to W&B."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitinfer.report.measures import (
    LEAK,
    QUALITY_BOUND_TEXT,
    ci_note,
    configurations,
    privacy_columns,
)
from splitinfer.report.plots import plot_latency_by_link, plot_metrics_vs_cut, plot_tradeoff
from splitinfer.report.recommend import OBJECTIVES, TIE_RULE, TIE_TOLERANCE, recommend
from splitinfer.report.runs import ReportError, load_link, load_runs, num, with_latency
from splitinfer.report.search import search_report
from splitinfer.report.tables import latency_pivot, mark_pareto, markdown_table, write_csv

# Files a report writes besides report.csv/report.md; a re-run removes them first, so no stale plot survives.
GENERATED = ("metrics_vs_cut.png", "tradeoff_pareto.png", "latency_by_link.png", "latency_by_link.md",
             "search_front.png", "search_trials.csv")
GENERATED_GLOBS = ("latency_by_link_*.png",)
FRONTIER_COLUMNS = (
    "cut",
    "codec",
    "defense",
    "link",
    "up_bytes_per_token_decode",
    "up_ratio_vs_fp32_decode",
    "delta_ppl_pct",
    "abs_dppl_ub_pct",
    "kl_mean",
    "exact_match_rate",
    "tpot_s",
    "leakage_attack",
    LEAK,
)


@dataclass
class Report:
    rows: list[dict]
    out_dir: Path
    csv: Path
    markdown: Path
    table: str
    plots: list[Path] = field(default_factory=list)
    recommendation: str = ""
    frontier: list[dict] = field(default_factory=list)
    search: Any = None  # splitinfer.report.search.Search for a search folder (conf/hparams_search), else None


def _series(rows: Sequence[dict], key: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(str(r.get(key)), []).append(r)
    return out


def remove_previous_outputs(out: Path) -> list[Path]:
    """Delete the plots and side tables an earlier report wrote into `out` (GENERATED names and
    GENERATED_GLOBS only: other files there are left alone)."""
    paths = [out / n for n in GENERATED] + [p for g in GENERATED_GLOBS for p in out.glob(g)]
    gone = [p for p in paths if p.is_file()]
    for p in gone:
        p.unlink()
    return gone


def _recommendations(rows: list[dict]) -> str:
    """The unconstrained recommendation per link (latency when timed, else bytes), as Markdown; lines every
    link shares (the privacy note) are written once, after the per-link lists."""
    parts: list[tuple[str, list[str]]] = []
    for link, rs in _series(rows, "link").items():
        objective = "latency" if any(num(r.get("tpot_s")) is not None for r in rs) else "bytes"
        head = f"**{link}**, objective: {OBJECTIVES[objective][1]}, no constraints"
        try:
            lines = recommend(rs, objective).explanation.splitlines()
        except ReportError as e:
            lines = [f"no recommendation: {e}"]
        parts.append((head, lines))
    shared = set.intersection(*(set(lines) for _, lines in parts)) if len(parts) > 1 else set()
    out = [
        f"{head}\n\n" + "\n".join(f"- {line}" for line in lines if line not in shared)
        for head, lines in parts
    ]
    if shared:
        first = parts[0][1]
        out.append("**Every link**\n\n" + "\n".join(f"- {line}" for line in first if line in shared))
    return "\n\n".join(out)


def _markdown(
    title: str,
    sweep_dir: str | Path,
    rows: list[dict],
    recommendation: str,
    frontier: list[dict],
    plots: list[Path],
    table: str,
) -> str:
    n_configs = len(configurations(rows))
    attacked = any(num(r.get(LEAK)) is not None for r in rows)
    out = [
        f"# {title}: {len(rows)} jobs ({n_configs} configurations) from {sweep_dir}",
        "",
        "## Recommendation",
        "",
        "Add constraints with `splitinfer recommend DIR --max-delta-ppl 1 --max-device-mb 200 --link wifi` "
        "(see `--help`).",
        "",
        recommendation,
        "",
        "## How to read the numbers",
        "",
        '- **Quality bound** (`abs_dppl_ub_pct`, column "abs Δppl ≤ % (95%)"): '
        f"{QUALITY_BOUND_TEXT}. The Pareto "
        "frontier and `--max-delta-ppl` use it, never the signed Δppl. " + ci_note(rows),
        f"- **Ties**: {TIE_RULE.format(tol=100 * TIE_TOLERANCE)} (`recommend --tie-tolerance`).",
        "- **Privacy**: "
        + (
            "leakage is the strongest attack run on each configuration (highest share of "
            'prompt tokens recovered), column "tokens recovered %".'
            if attacked
            else "not measured (no attack ran), so this report says nothing about how much of the prompt the "
            "server can rebuild; a split alone does not protect it (see the recommendation)."
        )
        + (
            " Columns `downlink/<attack>/answer_token_acc` (U-shape jobs, attack=downlink) are the share of the "
            "ANSWER's tokens its server recovers from the hidden states it returns (intervals in report.csv)."
            if any(k.startswith("privacy/downlink/") for r in rows for k in r)
            else ""
        ),
        "",
    ]
    out += ["## Pareto frontier", ""]
    if frontier:
        objectives = "uplink bytes per generated token and the |Δppl| upper bound" + (
            " and the strongest attack's token recovery" if attacked else ""
        )
        out += [
            f"Configurations no other configuration beats on {objectives} (all lower is better):",
            "",
            markdown_table(frontier, columns=FRONTIER_COLUMNS),
            "",
        ]
    else:
        out += ["No frontier: the jobs have no quality (Δppl) or bandwidth metrics.", ""]
    if plots:
        out += ["## Plots", ""]
        out += [f"![{p.stem.replace('_', ' ')}]({p.name})\n" for p in plots]
    out += ["## All jobs", "", table, ""]
    return "\n".join(out)


def build_report(
    sweep_dir: str | Path, out_dir: str | Path | None = None, links: Sequence[str] | None = None
) -> Report:
    """Aggregate a sweep into `report.csv`, `report.md` and PNG plots under `out_dir`
    (default SWEEP_DIR/report), replacing the plots of an earlier report there. `links` adds a
    latency-by-link figure re-evaluated from the jobs' bytes and timings (e.g. all of conf/link for a
    single-link sweep)."""
    rows = load_runs(sweep_dir)
    out = Path(out_dir) if out_dir else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    remove_previous_outputs(out)
    groups = _series(rows, "link")
    frontier: list[dict] = []
    for rs in groups.values():  # the frontier is per link (latency does not enter it, but keep sweeps apart)
        frontier += mark_pareto(rs)
    table = markdown_table(rows, privacy_columns(rows))
    csv_path, md_path = out / "report.csv", out / "report.md"
    write_csv(rows, csv_path)
    title = str(rows[0].get("name", "sweep"))
    plots = [
        p
        for p in (
            plot_metrics_vs_cut(
                rows if len(groups) == 1 else next(iter(groups.values())),
                out / "metrics_vs_cut.png",
                f"{title}: metrics against the cut"
                + (f" (latency on {next(iter(groups))})" if len(groups) > 1 else ""),
            ),
            plot_tradeoff(rows, out / "tradeoff_pareto.png"),
        )
        if p
    ]
    if len(groups) > 1:
        codecs = _series(rows, "codec")
        pick = next(iter(codecs.values())) if len(codecs) == 1 else rows
        p = plot_latency_by_link(pick, out / "latency_by_link.png", f"{title}: latency at each cut per link")
        if p:
            plots.append(p)
            (out / "latency_by_link.md").write_text(latency_pivot(pick) + "\n", encoding="utf-8")
    elif links:
        for codec, rs in _series(rows, "codec").items():
            relinked = [r2 for name in links for r2 in with_latency(rs, load_link(name))]
            p = plot_latency_by_link(
                relinked,
                out / f"latency_by_link_{codec}.png",
                f"{title}: latency at each cut per link ({codec})",
            )
            if p:
                plots.append(p)
    recommendation = _recommendations(rows)
    search = search_report(sweep_dir, rows, out)  # a search folder: Pareto set, trials in order, front plot
    if search is not None and search.plot is not None:
        plots.append(search.plot)
    text = _markdown(title, sweep_dir, rows, recommendation, frontier, plots, table)
    if search is not None:
        text = text.replace("## Pareto frontier", search.markdown + "\n## Pareto frontier", 1)
    md_path.write_text(text, encoding="utf-8")
    return Report(rows, out, csv_path, md_path, table, plots, recommendation, frontier, search)


def log_report(report: Report, group: str | None = None, mode: str = "offline") -> None:
    """Send the report's table and plots to W&B as a `report` run in the sweep's group (JSONL too)."""
    from splitinfer.loggers import build_logger

    cols = sorted({k for r in report.rows for k in r if num(r.get(k)) is not None or k in ("codec", "link")})
    logger = build_logger(
        report.out_dir,
        "report.jsonl",
        {"project": "splitinfer", "mode": mode},
        group=group or str(report.rows[0].get("name")),
        job_type="report",
        name="report",
    )
    try:
        logger.log_table("sweep_table", cols, [[r.get(c) for c in cols] for r in report.rows])
        for p in report.plots:
            logger.log_image(p.stem, p)
    finally:
        logger.close()
