"""scripts/ are recipes: argument parsing and calls into the package, each under ~150 lines (issue 29).
The engines they call are tested where they live (report.speculative, report.privacy_leakage,
transport.loadgen, splitinfer_testing.reliability.report)."""

from __future__ import annotations

from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# bench_codecs.py is being reworked in the codec issue; it joins this list when it is under the limit.
NOT_YET = {"bench_codecs.py"}


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.py") if p.name not in NOT_YET))
def test_script_is_a_short_recipe(name):
    n = len((SCRIPTS / name).read_text().splitlines())
    assert n <= 150, f"scripts/{name} has {n} lines: move its loops/tables into the package (limit 150)"
