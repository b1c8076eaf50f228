"""scripts/ are recipes: argument parsing and calls into the package, each under ~150 lines (issue 29).
The engines they call are tested where they live (report.speculative, report.privacy_leakage,
transport.loadgen, splitinfer_testing.reliability.report, metrics.codec_bench, report.codec_rd)."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_script_is_a_short_recipe(name):
    n = len((SCRIPTS / name).read_text().splitlines())
    assert n <= 150, f"scripts/{name} has {n} lines: move its loops/tables into the package (limit 150)"
