"""report.speculative: the committed speculative-split summaries are what the package computes from the
committed per-generation rows (speed-ups with their paired bootstrap intervals included)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from splitinfer.report.speculative import load_results, summarize, write_csv

EXP = Path(__file__).resolve().parents[2] / "experiments" / "speculative_split"
RUNS = sorted(p.parent.name for p in EXP.glob("*/results.csv") if (p.parent / "summary.csv").is_file())


def _key(r: dict) -> tuple:
    return int(r["cut"]), r["link"], r["mode"], r["kind"]


@pytest.mark.parametrize("run", RUNS)
def test_committed_summary_is_recomputed_from_its_rows(run, tmp_path):
    rows = load_results(EXP / run / "results.csv")
    links = list(dict.fromkeys(r["link"] for r in rows))
    summary = summarize(rows, sorted({r["cut"] for r in rows}), links)
    write_csv(tmp_path / "summary.csv", summary)  # written and read back as the committed file was
    with open(tmp_path / "summary.csv", newline="") as f:
        ours = {_key(r): r for r in csv.DictReader(f)}
    with open(EXP / run / "summary.csv", newline="") as f:
        theirs = {_key(r): r for r in csv.DictReader(f)}
    assert ours.keys() == theirs.keys()
    for key, r in theirs.items():
        assert ours[key]["same_text"] == r["same_text"], key
        for col in ("decode_tok_s", "speedup_vs_per_token", "speedup_ci_low", "speedup_ci_high"):
            # results.csv holds 6 significant digits, so the recomputation agrees to about that
            assert float(ours[key][col]) == pytest.approx(float(r[col]), rel=1e-4), (key, col)
        lo, sp, hi = (float(r[c]) for c in ("speedup_ci_low", "speedup_vs_per_token", "speedup_ci_high"))
        assert lo <= sp <= hi or r["mode"] == "per_token", key
    assert RUNS, "no committed results.csv with its summary.csv"
