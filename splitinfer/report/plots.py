"""The report's figures: metrics against the cut, the bandwidth-quality(-leakage) trade-off with its
Pareto frontier, and Neurosurgeon-style latency per link.

Conventions: one shared legend per figure; each codec (or link) keeps one colour and one marker in every
figure; an axis is logarithmic only when its values span more than LOG_SPAN_DECADES decades, with plain
tick labels (0.1, 0.2, 0.5, 1); every axis names its unit; 95 % intervals (`*_ci_low/high`) are drawn as
bands or error bars where the jobs recorded them. The shared look (backend, styles, scales, the legend, label
placement, saving) is in report/style.py; this module holds the figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from splitinfer.report.measures import (
    LEAK,
    LEAK_PII,
    QUALITY_BOUND,
    QUALITY_BOUND_LABEL,
    QUALITY_BOUND_SOURCE,
    ci,
    codec_fidelity,
    config_key,
    configurations,
)
from splitinfer.report.runs import num
from splitinfer.report.style import (  # pyplot, save, set_scale, tick_label and place_labels stay importable from here
    DPI,
    finish,
    place_labels,
    pyplot,
    save,
    series_styles,
    set_scale,
    tick_label,  # noqa: F401 - re-exported
)
from splitinfer.report.tables import pareto_front, tradeoff_objectives, tradeoff_tolerances

CUT_LABEL = "cut (layers run on the device)"

# (column, axis label with unit, factor applied to the stored value)
PLOT_METRICS: list[tuple[str, str, float]] = [
    ("up_bytes_per_token_decode", "uplink per generated token (B)", 1.0),
    ("up_bytes_per_token_prefill", "uplink per prompt token (B)", 1.0),
    ("delta_ppl_pct", "Δ perplexity (%)", 1.0),
    ("kl_mean", "KL(unsplit ‖ split) (nats/token)", 1.0),
    ("top1_agreement", "top-1 agreement (fraction)", 1.0),
    ("exact_match_rate", "greedy exact match (fraction)", 1.0),
    ("device_memory_mb", "device memory (MB)", 1.0),
    ("tpot_s", "per-token latency (s)", 1.0),
    ("ttft_s", "time to first token (s)", 1.0),
    (LEAK, "prompt tokens recovered,\nstrongest attack (%)", 100.0),
    (LEAK_PII, "PII recovered,\nstrongest attack (%)", 100.0),
]


def series_label(r: dict, with_defense: bool) -> str:
    return str(r.get("codec")) + (f" + {r.get('defense')}" if with_defense else "")


def _codec_groups(rows: Sequence[dict]) -> tuple[dict[str, list[dict]], dict[str, tuple[str, str]]]:
    """Rows grouped by codec (and defense when it varies), most faithful codec first, with their styles."""
    with_defense = len({str(r.get("defense")) for r in rows}) > 1
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(series_label(r, with_defense), []).append(r)
    order = sorted(groups, key=lambda k: (codec_fidelity(groups[k][0].get("codec"), groups[k][0]).key(), k))
    groups = {k: sorted(groups[k], key=lambda r: r.get("cut", 0)) for k in order}
    return groups, series_styles(order)


def plot_metrics_vs_cut(rows: Sequence[dict], path: Path, title: str = "") -> Path | None:
    """`draw_metrics_vs_cut` saved to `path` (None when no metric is present)."""
    return save(draw_metrics_vs_cut(rows, title), path)


def plot_tradeoff(rows: Sequence[dict], path: Path) -> Path | None:
    """`draw_tradeoff` saved to `path` (None without bandwidth and quality metrics)."""
    return save(draw_tradeoff(rows), path)


def plot_latency_by_link(rows: Sequence[dict], path: Path, title: str = "") -> Path | None:
    """`draw_latency_by_link` saved to `path` (None without latency metrics)."""
    return save(draw_latency_by_link(rows, title), path)


def draw_metrics_vs_cut(rows: Sequence[dict], title: str = ""):
    """One panel per metric against the cut, one line per codec, 95 % interval bands where recorded."""
    rows = configurations(rows)
    metrics = [m for m in PLOT_METRICS if any(num(r.get(m[0])) is not None for r in rows)]
    if not metrics:
        return None
    plt = pyplot()
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4.6 * ncol, 3.0 * nrow + 0.9), squeeze=False, layout="constrained", dpi=DPI
    )
    groups, styles = _codec_groups(rows)
    any_band = False
    for ax, (key, label, factor) in zip(axes.flat, metrics, strict=False):
        shown: list[float | None] = []
        same = _same_for_all(groups, key)
        if same:
            xs = sorted(same)
            ax.plot(xs, [same[x][0] * factor for x in xs], color="0.25", marker=".", lw=1.2)
            ax.set_title("same for every codec", fontsize=8, loc="left", color="0.25")
            shown += [same[x][0] * factor for x in xs]
            banded = [x for x in xs if same[x][1] is not None]
            if banded:
                any_band = True
                lo = [same[x][1][0] * factor for x in banded]
                hi = [same[x][1][1] * factor for x in banded]
                ax.fill_between(banded, lo, hi, color="0.25", alpha=0.15, lw=0)
                shown += lo + hi
        for name, rs in ({} if same else groups).items():
            colour, marker = styles[name]
            pts = [(r["cut"], num(r.get(key)), ci(r, key)) for r in rs if num(r.get(key)) is not None]
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1] * factor for p in pts], color=colour, marker=marker, ms=4, lw=1.2, label=name)
            shown += [p[1] * factor for p in pts]
            banded = [p for p in pts if p[2] is not None]
            if banded:
                any_band = True
                ax.fill_between(
                    [p[0] for p in banded],
                    [p[2][0] * factor for p in banded],
                    [p[2][1] * factor for p in banded],
                    color=colour,
                    alpha=0.15,
                    lw=0,
                )
                shown += [v * factor for p in banded for v in p[2]]
        if key == "delta_ppl_pct":
            ax.axhline(0, color="0.5", lw=0.8)
        set_scale(ax, shown)
        if key in (LEAK, LEAK_PII):  # a share of the prompt: the full 0-100 % scale, not a zoom on 95-100
            ax.set_ylim(-3, 103)
        ax.set_xlabel(CUT_LABEL)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = _legend_entries(styles, band=any_band)
    return finish(fig, handles, labels, title or "metrics against the cut, per codec")


def _same_for_all(
    groups: dict[str, list[dict]], key: str
) -> dict[int, tuple[float, tuple[float, float] | None]] | None:
    """{cut: (value, interval)} when every series (codec) has the same values and intervals of `key` at
    the same cuts (memory, TTFT of identical stages), else None."""
    if len(groups) < 2:
        return None
    series = [
        {r["cut"]: (num(r.get(key)), ci(r, key)) for r in rs if num(r.get(key)) is not None}
        for rs in groups.values()
    ]
    first = series[0]
    if not first or any(set(s) != set(first) for s in series):
        return None

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)

    for s in series:
        for c, (v, interval) in first.items():
            v2, interval2 = s[c]
            if not close(v, v2) or (interval is None) != (interval2 is None):
                return None
            if interval is not None and not (
                close(interval[0], interval2[0]) and close(interval[1], interval2[1])
            ):
                return None
    return first


def _legend_entries(
    styles: dict[str, tuple[str, str]], band: bool = False, frontier: bool = False, hollow: bool = False
) -> tuple[list, list[str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list = [Line2D([], [], color=c, marker=m, ms=5, lw=1.2) for c, m in styles.values()]
    labels = list(styles)
    if band:
        handles.append(Patch(color="0.5", alpha=0.3))
        labels.append("95 % bootstrap interval")
    if frontier:
        handles.append(Line2D([], [], color="k", ls="--", lw=1, marker="o", mfc="none", mec="k", ms=8))
        labels.append("Pareto frontier (labels: cut)")
    if hollow:
        handles.append(Line2D([], [], color="0.3", marker="o", mfc="white", ls="none", ms=5))
        labels.append("open marker: no interval (point |Δppl|)")
    return handles, labels


def draw_tradeoff(rows: Sequence[dict]):
    """Uplink bytes against the quality bound (and against the strongest attack's token recovery when an
    attack ran), one marker per configuration, the Pareto frontier ringed and labelled with its cuts."""
    usable = [
        r
        for r in configurations(rows)
        if num(r.get("up_bytes_per_token_decode")) is not None and num(r.get(QUALITY_BOUND)) is not None
    ]
    if not usable:
        return None
    objectives = tradeoff_objectives(usable)
    leak = len(objectives) == 3
    front_keys = {
        config_key(usable[i]) for i in pareto_front(usable, objectives, tradeoff_tolerances(objectives))
    }
    plt = pyplot()
    panels = 2 if leak else 1
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(6.4 * panels + (2.4 if panels == 1 else 0), 5.0),
        squeeze=False,
        layout="constrained",
        dpi=DPI,
    )
    groups, styles = _codec_groups(usable)
    with_defense = len({str(r.get("defense")) for r in usable}) > 1
    pairs = [(QUALITY_BOUND, QUALITY_BOUND_LABEL + "\nbars: 95 % interval of |Δppl|", 1.0)]
    if leak:
        pairs.append((LEAK, "prompt tokens recovered, strongest attack (%)", 100.0))
    hollow = False
    xs_all = [r["up_bytes_per_token_decode"] for r in usable]
    labels_todo = []
    for ax, (yk, ylabel, factor) in zip(axes.flat, pairs, strict=True):
        ys_all: list[float | None] = []
        for name, rs in groups.items():
            colour, marker = styles[name]
            for r in rs:
                y = num(r.get(yk))
                if y is None:
                    continue
                y *= factor
                x = r["up_bytes_per_token_decode"]
                point = yk == QUALITY_BOUND and r.get(QUALITY_BOUND_SOURCE) != "ci95"
                hollow |= point
                ax.scatter(
                    [x],
                    [y],
                    s=26,
                    marker=marker,
                    facecolors="white" if point else colour,
                    edgecolors=colour,
                    linewidths=1.0,
                    zorder=3,
                )
                ys_all.append(y)
                interval = ci(r, "delta_ppl_pct") if yk == QUALITY_BOUND else None
                if interval is not None:
                    lo = 0.0 if interval[0] <= 0 <= interval[1] else min(abs(interval[0]), abs(interval[1]))
                    ax.plot([x, x], [lo, y], color=colour, lw=0.8, alpha=0.5, zorder=2)
        fr = sorted(
            (r for r in usable if config_key(r) in front_keys and num(r.get(yk)) is not None),
            key=lambda r: (r["up_bytes_per_token_decode"], r[yk]),
        )
        if fr:
            ax.scatter(
                [r["up_bytes_per_token_decode"] for r in fr],
                [r[yk] * factor for r in fr],
                s=95,
                facecolors="none",
                edgecolors="k",
                linewidths=1.0,
                zorder=4,
            )
            if not leak:
                ax.plot(
                    [r["up_bytes_per_token_decode"] for r in fr],
                    [r[yk] * factor for r in fr],
                    "k--",
                    lw=1,
                    zorder=1,
                )
            labels_todo.append((ax, fr, yk, factor))
        set_scale(ax, xs_all, axis="x")
        set_scale(ax, ys_all)
        if yk == LEAK:
            ax.set_ylim(-3, 103)
        ax.set_xlabel("uplink per generated token (B)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles, labels = _legend_entries(styles, frontier=True, hollow=hollow)
    finish(
        fig,
        handles,
        labels,
        "bandwidth–quality" + ("–privacy" if leak else "") + " trade-off (lower is better on every axis)",
        ncols=4,
    )
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout so the labels placed in pixels stay where they are
    for ax, fr, yk, factor in labels_todo:
        others = [
            (r["up_bytes_per_token_decode"], num(r.get(yk)) * factor)
            for r in usable
            if num(r.get(yk)) is not None
        ]
        # configurations drawn on the same spot (one codec, equal bytes and bound) share one label
        spots: dict[tuple, list[dict]] = {}
        for r in fr:
            spot = (r["up_bytes_per_token_decode"], r[yk] * factor, series_label(r, with_defense))
            spots.setdefault(spot, []).append(r)
        place_labels(
            ax,
            [(x, y) for x, y, _ in spots],
            [cut_label([r.get("cut") for r in rs]) for rs in spots.values()],
            [styles[name][0] for _, _, name in spots],
            avoid=others,
            lines=[] if leak else [[(r["up_bytes_per_token_decode"], r[yk] * factor) for r in fr]],
        )
    return fig


def cut_label(cuts: Sequence) -> str:
    """`cut 4`, `cuts 4, 8, 15`, or `11 cuts, 0-30` for many configurations on one spot."""
    cuts = sorted(cuts, key=lambda c: (not isinstance(c, int), c if isinstance(c, int) else 0))
    if len(cuts) == 1:
        return f"cut {cuts[0]}"
    if len(cuts) <= 3:
        return "cuts " + ", ".join(str(c) for c in cuts)
    return f"{len(cuts)} cuts, {cuts[0]}-{cuts[-1]}"


def draw_latency_by_link(rows: Sequence[dict], title: str = ""):
    """Neurosurgeon-style: TTFT and per-token latency at each cut, one line per link, with the
    all-on-device (black dashed) and all-on-server (dotted, per link) baselines."""
    if not any(num(r.get("tpot_s")) is not None for r in rows):
        return None
    from matplotlib.lines import Line2D

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained", dpi=DPI)
    by_link: dict[str, list[dict]] = {}
    for r in rows:
        by_link.setdefault(str(r.get("link")), []).append(r)
    styles = series_styles(list(by_link))
    for ax, key, label in (
        (axes[0], "ttft", "time to first token (s)"),
        (axes[1], "tpot", "per-token latency (s)"),
    ):
        device_line = None
        shown: list[float | None] = []
        for link, rs in by_link.items():
            rs = sorted((r for r in rs if num(r.get(f"{key}_s")) is not None), key=lambda r: r["cut"])
            if not rs:
                continue
            colour, marker = styles[link]
            ax.plot(
                [r["cut"] for r in rs],
                [r[f"{key}_s"] for r in rs],
                color=colour,
                marker=marker,
                ms=3.5,
                lw=1.2,
            )
            shown += [r[f"{key}_s"] for r in rs]
            srv = num(rs[0].get(f"{key}_all_server_s"))
            if srv is not None:
                ax.axhline(srv, color=colour, ls=":", lw=1)
                shown.append(srv)
            device_line = num(rs[0].get(f"{key}_all_device_s"))
        if device_line is not None:
            ax.axhline(device_line, color="k", ls="--", lw=1)
            shown.append(device_line)
        set_scale(ax, shown)
        ax.set_xlabel(CUT_LABEL)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], color=c, marker=m, ms=4, lw=1.2) for c, m in styles.values()]
    labels = [f"split, {link}" for link in styles]
    handles += [Line2D([], [], color="k", ls="--", lw=1), Line2D([], [], color="0.4", ls=":", lw=1)]
    labels += ["all on device", "all on server (dotted, colour of its link)"]
    return finish(fig, handles, labels, title or "latency at each cut per link", ncols=4)


def plot_serving(rows: list[dict], path: Path,
                 title: str = "SmolLM2-135M, cut 15, one server process (replayed device halves)") -> None:
    """Aggregate tokens/s and decode-step latency against concurrent sessions, batching off and on
    (the rows of scripts/bench_serving.py, from `transport.loadgen.run_load`)."""
    plt = pyplot()
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"off": "tab:blue", "on": "tab:orange"}
    for mode in ("off", "on"):
        rs = [r for r in rows if r["batching"] == mode]
        ns = [int(r["clients"]) for r in rs]
        c = colors[mode]
        a.plot(ns, [float(r["tok_per_s"]) for r in rs], "o-", color=c, label=f"batching {mode}: all tokens")
        a.plot(ns, [float(r["decode_tok_per_s"]) for r in rs], "s--", color=c, alpha=0.6,
               label=f"batching {mode}: decode phase")
        b.plot(ns, [float(r["step_p99_ms"]) for r in rs], "o-", color=c, label=f"batching {mode}: p99")
        b.plot(ns, [float(r["step_p50_ms"]) for r in rs], "s--", color=c, alpha=0.6, label=f"batching {mode}: p50")
    ns = sorted({int(r["clients"]) for r in rows})
    for ax, panel in ((a, "aggregate tokens/s"), (b, "decode-step latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        for axis in (ax.xaxis, ax.yaxis):
            fmt = ScalarFormatter()
            fmt.set_scientific(False)
            axis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(NullFormatter())
        lo, hi = ax.get_ylim()
        ax.yaxis.set_major_locator(FixedLocator([m * 10 ** e for e in range(-1, 6) for m in (1, 2, 5)
                                                 if lo <= m * 10 ** e <= hi]))
        ax.set_xlabel("concurrent sessions")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
