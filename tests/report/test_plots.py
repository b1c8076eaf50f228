"""The report's figures: one legend, a marker per codec, log axes only for wide ranges, units, interval
bands, frontier labels that neither overlap nor leave the axes."""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from splitinfer.report import annotate, mark_pareto  # noqa: E402
from splitinfer.report.plots import (  # noqa: E402
    cut_label,
    draw_latency_by_link,
    draw_metrics_vs_cut,
    draw_tradeoff,
    place_labels,
    set_scale,
    tick_label,
)

from .fake_sweep import row, with_ci  # noqa: E402

SAVED = Path(__file__).resolve().parents[2] / "experiments" / "neurosurgeon_latency" / "figure" / "report.csv"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _sweep(ci: bool = True) -> list[dict]:
    rows = []
    for codec, kl, width in (
        ("fp16", 1e-7, 0.003),
        ("int8", 1e-4, 0.1),
        ("ec40", 1e-2, 0.7),
        ("int3", 3e-2, 1.2),
    ):
        for cut in (1, 4, 8, 15, 22, 29):
            d = {"fp16": 0.0, "int8": 0.05, "ec40": 0.9, "int3": 2.0}[codec] + (cut % 3 - 1) * width / 3
            r = row(cut, codec, delta_ppl_pct=d, kl_mean=kl * (1 + cut / 30))
            rows.append(with_ci(r, (d - width, d + width), kl=(kl * 0.8, kl * 1.3)) if ci else r)
    annotate(rows)
    return rows


def _text_box(t, renderer):
    """The label's own box (an Annotation's extent also covers its leader line)."""
    return Text.get_window_extent(t, renderer)


def _boxes_disjoint(boxes) -> bool:
    return all(
        a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
        for a, b in itertools.combinations(boxes, 2)
    )


def test_scale_rule_and_tick_labels():
    fig, ax = plt.subplots()
    assert set_scale(ax, [0.2, 0.25, 0.43]) == "linear"  # narrow: no "2×10⁻¹" ticks
    assert set_scale(ax, [0.1, 3.0]) == "linear"  # 1.48 decades
    assert set_scale(ax, [1e-7, 3e-2]) == "log"
    fig, ax = plt.subplots()
    assert set_scale(ax, [0.0, 0.002, 150.0]) == "symlog"
    fig, ax = plt.subplots()
    assert set_scale(ax, [-0.5, 0.01, 180.0]) == "linear"
    assert tick_label(0.2) == "0.2" and tick_label(500) == "500"
    assert tick_label(1e-5) == "10⁻⁵" and tick_label(2e-7) == "2×10⁻⁷"


def test_flat_values_read_flat():
    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [674.6, 674.87, 674.7])
    set_scale(ax, [674.6, 674.87, 674.7])
    lo, hi = ax.get_ylim()
    fig.canvas.draw()
    assert hi - lo > 50 and not ax.yaxis.get_offset_text().get_text()
    assert all("e" not in t.get_text() for t in ax.get_yticklabels())
    fig, ax = plt.subplots()  # tiny linear values: "4×10⁻⁷", not "0.0000004" or a "1e-7" corner factor
    ax.plot([0, 1], [1e-7, 6e-7])
    set_scale(ax, [1e-7, 6e-7])
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "4×10⁻⁷" in labels and not ax.yaxis.get_offset_text().get_text()


def test_metrics_vs_cut_layout():
    fig = draw_metrics_vs_cut(_sweep())
    assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[:4] == ["fp16", "int8", "int3", "ec40"] or legend[:4] == ["fp16", "int8", "ec40", "int3"]
    assert "95 % bootstrap interval" in legend
    panels = [ax for ax in fig.axes if ax.axison]
    for ax in panels:
        assert "(" in ax.get_ylabel() and "(" in ax.get_xlabel()  # a unit on every axis
    by_label = {ax.get_ylabel(): ax for ax in panels}
    dppl = by_label["Δ perplexity (%)"]
    markers = {line.get_marker() for line in dppl.get_lines() if line.get_marker() not in ("None", None, "")}
    assert len(markers) == 4  # one marker per codec
    assert len(dppl.collections) == 4  # a 95 % band per codec
    assert dppl.get_yscale() == "linear"
    assert by_label["KL(unsplit ‖ split) (nats/token)"].get_yscale() == "log"  # 1e-7..4e-2: > 1.5 decades
    assert by_label["top-1 agreement (fraction)"].get_yscale() == "linear"
    # without intervals: no bands, and the legend does not promise any
    fig = draw_metrics_vs_cut(_sweep(ci=False))
    assert "95 % bootstrap interval" not in [t.get_text() for t in fig.legends[0].get_texts()]
    assert not any(ax.collections for ax in fig.axes)


def test_tradeoff_labels_only_the_frontier_inside_the_axes():
    rows = _sweep()
    front = mark_pareto(rows)
    fig = draw_tradeoff(rows)
    ax = fig.axes[0]
    assert ax.get_ylabel().startswith("|Δppl| upper 95 % bound (%)") and ax.get_xlabel().endswith("(B)")
    labels = [t for t in ax.texts if t.get_text().startswith("cut")]
    labelled = sorted(int(c) for t in labels for c in re.findall(r"\d+", t.get_text()))
    assert labelled == sorted(r["cut"] for r in front)  # every frontier configuration, nothing else
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    boxes = [_text_box(t, renderer) for t in labels]
    assert all(
        box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0 and b.y1 <= box.y1 + 1 for b in boxes
    )
    assert _boxes_disjoint(boxes)
    assert len(fig.legends) == 1


def test_configurations_on_one_spot_share_a_label():
    rows = [row(cut, codec) for codec in ("fp16", "int8") for cut in range(0, 31, 3)]  # fp16: all on one spot
    annotate(rows)
    front = mark_pareto(rows)
    assert len([r for r in front if r["codec"] == "fp16"]) == 11
    fig = draw_tradeoff(rows)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["11 cuts, 0-30", "cut 0"]
    assert cut_label([8, 4]) == "cuts 4, 8"


def test_place_labels_separates_a_cluster():
    fig, ax = plt.subplots(figsize=(4, 3))
    pts = [(1.0 + i * 0.01, 1.0 + (i % 3) * 0.01) for i in range(8)] + [(0.0, 0.0), (2.0, 2.0)]
    ax.scatter(*zip(*pts, strict=True))
    labels = place_labels(ax, pts, [f"cut {i}" for i in range(len(pts))], ["k"] * len(pts))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    boxes = [_text_box(t, renderer) for t in labels]
    assert _boxes_disjoint(boxes)
    assert all(
        box.x0 - 1 <= b.x0 and b.x1 <= box.x1 + 1 and box.y0 - 1 <= b.y0 and b.y1 <= box.y1 + 1 for b in boxes
    )


def _saved_rows() -> list[dict]:
    def conv(v: str):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v

    with SAVED.open() as fh:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(fh)]


@pytest.mark.skipif(not SAVED.is_file(), reason="the saved Neurosurgeon report is not in this checkout")
def test_saved_neurosurgeon_report_draws_readably():
    rows = _saved_rows()
    fig = draw_latency_by_link(rows)
    assert len(fig.legends) == 1
    for ax in fig.axes:
        assert ax.get_yscale() == "linear" and ax.get_ylabel().endswith("(s)")
        markers = [line.get_marker() for line in ax.get_lines() if len(line.get_xdata()) > 2]
        assert len(set(markers)) == len(markers) == 5  # five links, five markers
    fig = draw_metrics_vs_cut([r for r in rows if r["link"] == "3g"])
    for ax in (a for a in fig.axes if a.axison):
        fig.canvas.draw()
        assert ax.get_yscale() == "linear" and not ax.yaxis.get_offset_text().get_text()


def test_plot_serving_draws_both_panels_under_the_given_title(tmp_path, plot_check, monkeypatch):
    """The serving figure (scripts/bench_serving.py) renders from loadgen rows, and its title is the one given
    (a loop variable used to shadow it, so the figure was titled after its second panel)."""
    from splitinfer.report import plots

    titles = []
    real_suptitle = plt.Figure.suptitle
    monkeypatch.setattr(plt.Figure, "suptitle", lambda fig, t, **kw: titles.append(t) or real_suptitle(fig, t, **kw))
    rows = [{"batching": mode, "clients": n, "tok_per_s": f * n, "decode_tok_per_s": 0.8 * f * n,
             "step_p50_ms": 20 + n, "step_p99_ms": 30 + 2 * n}
            for mode, f in (("off", 10.0), ("on", 25.0)) for n in (1, 2, 4, 8)]
    path = tmp_path / "serving.png"
    plots.plot_serving(rows, path, title="my run")
    plot_check(path)
    assert titles == ["my run"]
