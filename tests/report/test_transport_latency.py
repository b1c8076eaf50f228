"""splitinfer.report.transport_latency: the saved bench_transport runs parse, and the figure is drawn from them."""

from __future__ import annotations

from pathlib import Path

from splitinfer.report.transport_latency import load, plot_decode_ratio

RUNS = Path(__file__).resolve().parents[2] / "experiments" / "transport_latency"


def test_saved_runs_parse():
    runs = sorted(RUNS.glob("run_*.csv"))
    assert len(runs) >= 3
    for path in runs:
        rows = load(path)
        assert ("in-process", "-") in rows and ("fp32", "warm") in rows and ("int8", "block") in rows
        for ratio, lo, hi in rows.values():
            assert 0.5 < lo <= ratio <= hi < 2.0
        assert (path.with_suffix(".txt")).is_file()  # the printed table next to each CSV


def test_the_figure_is_drawn_from_the_runs(tmp_path, plot_check):
    plot_decode_ratio(sorted(RUNS.glob("run_*.csv")), tmp_path / "ratio.png")
    plot_check(tmp_path / "ratio.png")
