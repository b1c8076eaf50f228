"""splitinfer_testing.reliability.report: the figures scripts/reliability_report.py prints, from the real
scenarios at small sizes, its table and CSV, and the script's flags mapping onto `Sizes`."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from splitinfer_testing.reliability.report import Sizes, print_table, run_report, write_csv

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reliability_report.py"


def _script():
    spec = importlib.util.spec_from_file_location("reliability_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_flag_is_a_size_with_the_same_default():
    args = _script().parse_args([])
    flags = {k: v for k, v in vars(args).items() if k != "csv"}
    assert flags == dataclasses.asdict(Sizes())


def test_bad_sizes_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        _script().parse_args(["--kills", "4", "--kill-tokens", "5"])
    assert "--kill-tokens=5 leaves too few steps for --kills=4; use at least 12" in capsys.readouterr().err


@pytest.mark.reliability
def test_run_report_at_small_sizes_passes_every_check(lm, tmp_path, capsys):
    rows = run_report(lm, Sizes(messages=20, auth_messages=10, kills=2, kill_tokens=12, clients=2, steps=3,
                                flood=20, churn=3))
    failed = [r for r in rows if not r[3]]
    assert not failed, failed
    assert {r[0] for r in rows} == {"hostile", "load", "abuse", "faults", "auth"}
    tried = next(int(v) for s, f, v, _ in rows if (s, f) == ("hostile", "messages tried"))
    assert tried >= 20  # at least the messages asked for (hypothesis may draw a few more)
    assert ("faults", "server SIGKILLs survived in one generation", "2/2", True) in rows
    print_table(rows)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| scenario") and out[0].endswith("| ok |") and len(out) == len(rows) + 2
    assert len({len(line) for line in out}) == 1  # aligned
    write_csv(rows, tmp_path / "r" / "rel.csv")
    with open(tmp_path / "r" / "rel.csv", newline="") as f:
        back = list(csv.reader(f))
    assert back[0] == ["scenario", "figure", "value", "ok"] and len(back) == len(rows) + 1
    assert back[1] == [rows[0][0], rows[0][1], rows[0][2], "True"]
