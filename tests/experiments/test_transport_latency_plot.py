"""experiments/transport_latency: the saved bench_transport runs parse, and the figure is drawn from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "experiments" / "transport_latency"


def _plot_module():
    spec = importlib.util.spec_from_file_location("transport_latency_plot", HERE / "plot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_saved_runs_parse_and_the_figure_is_written(tmp_path, plot_check):
    mod = _plot_module()
    runs = sorted(HERE.glob("run_*.csv"))
    assert len(runs) >= 3
    for path in runs:
        rows = mod.load(path)
        assert ("in-process", "-") in rows and ("fp32", "warm") in rows and ("int8", "block") in rows
        for ratio, lo, hi in rows.values():
            assert 0.5 < lo <= ratio <= hi < 2.0
        assert (path.with_suffix(".txt")).is_file()  # the printed table next to each CSV
    out = tmp_path / "ratio.png"
    assert mod.main(["--out", str(out)]) == 0
    plot_check(out)
