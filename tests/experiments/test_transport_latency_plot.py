"""experiments/transport_latency/plot.py, the recipe: it writes the figure of the saved runs where --out says.
What it calls (reading the runs, drawing) is tested in tests/report/test_transport_latency.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "experiments" / "transport_latency"


def test_the_recipe_writes_the_figure(tmp_path, plot_check):
    spec = importlib.util.spec_from_file_location("transport_latency_plot", HERE / "plot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "ratio.png"
    assert mod.main(["--out", str(out)]) == 0
    plot_check(out)
