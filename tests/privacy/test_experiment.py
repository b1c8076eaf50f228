"""The saved privacy experiment: one Δppl unit (percent), and READMEs that say what its CSVs hold."""

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments" / "privacy_leakage_vs_cut"


def _bench():
    from splitinfer.report import privacy_leakage

    return privacy_leakage


def test_saved_rows_report_delta_ppl_in_percent_of_their_own_perplexities():
    paths = sorted(EXP.glob("privacy*.csv"))
    assert paths
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            assert "delta_ppl" not in reader.fieldnames and "delta_ppl_pct" in reader.fieldnames, path
            for r in reader:
                m = json.loads(r["metrics_json"])
                assert "privacy/utility/delta_ppl" not in m
                pct = 100 * (m["privacy/utility/ppl"] / m["privacy/utility/ppl_clean"] - 1)
                assert float(r["delta_ppl_pct"]) == pytest.approx(pct, abs=1e-9)
                assert m["privacy/utility/delta_ppl_pct"] == pytest.approx(pct, abs=1e-9)


def test_legacy_rows_are_converted_from_their_perplexities():
    bench = _bench()
    m = {"privacy/utility/ppl_clean": 40.0, "privacy/utility/ppl": 100.0, "privacy/utility/delta_ppl": 60.0}
    assert bench.delta_ppl_pct({"delta_ppl": "60.0", "metrics_json": json.dumps(m)}) == pytest.approx(150.0)
    assert bench.delta_ppl_pct({"delta_ppl": "60.0", "metrics_json": "{}"}) is None  # never guessed


def test_experiment_readme_is_what_its_csvs_say():
    bench = _bench()
    rows = bench.load_rows(EXP)
    assert (EXP / "README.md").read_text() == bench.readme_text(rows)
    assert (EXP / "table.md").read_text() == bench.table_text(rows)
    whitebox = [r for r in rows if r["attack"] == "whitebox" and r["part"] == "cut"]
    assert len(whitebox) == 7
    assert all(float(r["token_acc"]) == float(r["pii_recovery"]) == 1.0 for r in whitebox)
    noisy = [r for r in rows if r["attack"] == "whitebox" and r["part"] in ("defense", "codec")]
    assert noisy and min(float(r["token_acc"]) for r in noisy) >= 0.91


def test_main_readme_privacy_figures_match_the_csvs():
    bench = _bench()
    rows = bench.load_rows(EXP)
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Privacy"):text.index("\n## ", text.index("## Privacy") + 5)]
    sigma03 = next(r for r in rows if r["attack"] == "whitebox" and r["defense"] == "gaussian"
                   and float(r["strength"]) == 0.3)
    said = re.search(r"σ = 0\.3[^()]*\(Δppl \+(\d+) %", section)
    assert said, "the README should give σ = 0.3's Δppl in percent"
    assert int(said.group(1)) == round(sigma03["delta_ppl_pct"])
    assert "100 % of the tokens" in section and "every cut" in section
    low = min(float(r["token_acc"]) for r in rows if r["attack"] == "whitebox" and r["part"] in ("defense", "codec"))
    assert f"≥ {int(100 * low)} %" in section


def test_row_from_rebuilds_the_saved_rows_from_their_metrics():
    """bench_privacy's row builder (report.privacy_leakage.row_from) gives back every saved row's columns
    from the metrics the row stored, and fills exactly COLUMNS."""
    from types import SimpleNamespace

    pl = _bench()
    checked = 0
    for path in sorted(EXP.glob("privacy*.csv")):
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                m = json.loads(r["metrics_json"])
                victims = [SimpleNamespace(num_tokens=int(r["tokens"]))]
                strength = float(r["strength"])
                ours = pl.row_from(r["part"], int(r["cut"]), r["attack"], r["defense"], strength, r["codec"], m, victims)
                assert set(ours) == set(pl.COLUMNS)
                for col in ("token_acc", "rouge_l", "pii_recovery", "dcor", "top1_agreement", "invert_s", "partial"):
                    if col in r:
                        assert ("" if ours[col] is None else str(ours[col])) == r[col], (path.name, col)
                checked += 1
    assert checked > 20


def test_attack_and_defense_specs():
    pl = _bench()
    assert pl.attack_spec("whitebox", noisy=False) == {"name": "whitebox"}
    assert pl.attack_spec("whitebox", noisy=True, whitebox_max_candidates=64) == {"name": "whitebox",
                                                                                 "max_candidates": 64}
    assert pl.attack_spec("learned_inverter", False, "mlp", 40.0, 100) == {
        "name": "learned_inverter", "arch": "mlp", "train_budget_s": 40.0, "max_steps": 100}
    assert pl.defense_spec("none", 0.0) is None
    assert pl.defense_spec("gaussian", 0.3) == {"name": "gaussian", "sigma": 0.3}
    assert pl.defense_spec("dchi", 500.0) == {"name": "dchi", "eta": 500.0}
