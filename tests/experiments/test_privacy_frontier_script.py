"""experiments/privacy_defense_frontier: the committed rows parse, the tables and figures are rebuilt from
them, the strongest-attack table keeps the runs it is told to, and bad recipe overrides are refused."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "experiments" / "privacy_defense_frontier"


def _module():
    spec = importlib.util.spec_from_file_location("run_frontier", HERE / "run_frontier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_rows_rebuild_the_tables_and_figures(tmp_path):
    mod = _module()
    shutil.copy(HERE / "rows.jsonl", tmp_path / "rows.jsonl")
    mod.main(["--plot-only", "--out", str(tmp_path)])
    rows = mod.load_rows(tmp_path)
    shown = {r["run"] for r in rows if r["run"] in mod.SHOWN_RUNS}
    assert shown, "no row of the runs the README reads"
    for name in ["frontier_all.png"] + [f"frontier_cut{c}.png" for c in sorted({r["cut"] for r in rows
                                                                                    if r["run"] in shown})]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = (tmp_path / "table.md").read_text()
    strongest = table.split("Strongest attack per setting")[1]
    runs_in_strongest = {line.split("|")[1].strip() for line in strongest.splitlines()[4:] if line.startswith("| ")}
    assert runs_in_strongest <= set(mod.SHOWN_RUNS) and runs_in_strongest
    # one line per setting (the same adapter measured by several attacks is one setting, rows written before
    # the recipe was recorded included)
    settings = [tuple(c.strip() for c in line.split("|")[1:6]) + (line.split("|")[12].strip(),)
                for line in strongest.splitlines()[4:] if line.startswith("| ")]
    assert len(settings) == len(set(settings)), "a setting listed twice in the strongest-attack table"
    # the control: without a defense the exhaustive white-box family rebuilds every token at every cut
    for r in rows:
        if r["run"] in shown and r["defense"] == "none" and r["attack"] in ("whitebox", "hybrid"):
            assert mod._get(r, "token_acc") == 1.0 and mod._get(r, "pii_recovery") == 1.0, r["cut"]
    # every utility figure carries its interval
    for r in rows:
        if r["run"] in shown and r["defense"] != "none":
            assert r["utility/delta_ppl_pct_ci_low"] <= r["utility/delta_ppl_pct"] <= r["utility/delta_ppl_pct_ci_high"]
    assert json.loads((HERE / "rows.jsonl").read_text().splitlines()[0])["cut"] in (4, 8, 15)


@pytest.mark.parametrize("bad", ["foo=1", "lr=abc", "steps="])
def test_bad_recipe_override_is_a_clear_error(bad, capsys):
    mod = _module()
    with pytest.raises(SystemExit):
        mod.main(["--train-set", bad, "--plot-only", "--out", "/nonexistent-frontier-dir"])
    assert "--train-set" in capsys.readouterr().err
