"""build_report and the report/recommend commands on synthetic sweep folders (no model runs)."""

from __future__ import annotations

import re

import pytest

from splitinfer.cli import main as cli
from splitinfer.report import build_report, load_runs

from .fake_sweep import row, with_ci, write_sweep


@pytest.fixture
def sweep(tmp_path):
    d = write_sweep(
        tmp_path / "sweep",
        [row(cut, codec) for codec in ("fp16", "int8", "int4") for cut in (0, 5, 10, 20, 30)],
    )
    (d / "99").mkdir()
    (d / "99" / "metrics.json").write_text("{not json")  # a job killed mid-write is skipped
    return d


def test_build_report(sweep, plot_check):
    rep = build_report(sweep, links=["3g", "wifi"])
    assert len(rep.rows) == 15
    assert rep.csv.read_text().count("\n") == 16
    names = {p.name for p in rep.plots}
    assert {"metrics_vs_cut.png", "tradeoff_pareto.png", "latency_by_link_int8.png"} <= names
    for p in rep.plots:
        plot_check(p)


def test_report_md_has_recommendation_frontier_and_plots(sweep):
    rep = build_report(sweep)
    md = rep.markdown.read_text()
    for heading in (
        "## Recommendation",
        "## How to read the numbers",
        "## Pareto frontier",
        "## Plots",
        "## All jobs",
    ):
        assert heading in md
    assert "Recommended: cut" in md and rep.recommendation in md
    assert "Privacy was not measured" in md and "split for privacy" not in md
    # relative image links to the plots written next to report.md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(p.name for p in rep.plots) and all(
        (rep.out_dir / x).is_file() for x in links
    )
    # the frontier section lists exactly the starred configurations
    front = md.split("## Pareto frontier")[1].split("## Plots")[0]
    starred = {(r["cut"], r["codec"]) for r in rep.rows if r.get("pareto")}
    listed = {(int(m[0]), m[1]) for m in re.findall(r"^\| (\d+) \| (\w+) \|", front, re.M)}
    assert listed == starred and starred
    # old metrics (no _ci_ keys): the interval is unknown and the report says so
    assert "no Δppl interval" in md and "[no CI]" in md


def test_rerun_replaces_its_plots(sweep, tmp_path):
    out = tmp_path / "rep"
    first = build_report(sweep, out, links=["3g"])
    assert (out / "latency_by_link_int4.png").exists()
    (out / "my_notes.png").write_bytes(b"not ours")
    second = build_report(sweep, out)  # no --links this time: the per-codec latency plots must go
    assert not list(out.glob("latency_by_link_*.png"))
    assert (out / "my_notes.png").exists()  # a file the report did not write stays
    assert {p.name for p in second.plots} < {p.name for p in first.plots}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        [*(p.name for p in second.plots), "my_notes.png"]
    )


def test_cli(sweep, capsys, tmp_path):
    assert cli(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    assert "tradeoff_pareto.png" in capsys.readouterr().out
    assert cli(["recommend", str(sweep), "--objective", "bytes", "--max-delta-ppl", "2"]) == 0
    out = capsys.readouterr().out
    assert "Recommended: cut" in out and "Quality bound applied" in out
    assert cli(["recommend", str(sweep), "--objective", "bytes", "--tie-tolerance", "-1"]) == 2
    assert "tie tolerance" in capsys.readouterr().err
    assert cli(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_link_sweep_gets_the_neurosurgeon_table_and_plot(tmp_path, plot_check):
    rows = [
        row(cut, "int8", link=link, tpot_s=rtt + cut / 100)
        for link, rtt in (("3g", 0.15), ("wifi", 0.02))
        for cut in (0, 10, 30)
    ]
    rep = build_report(write_sweep(tmp_path / "links", rows))
    plot_check(rep.out_dir / "latency_by_link.png")
    md = (rep.out_dir / "latency_by_link.md").read_text()
    assert "| cut | 3g s/token | wifi s/token |" in md and "all on server" in md and "best split" in md
    assert "**3g**" in rep.recommendation and "**wifi**" in rep.recommendation


def test_attack_sweep_report(tmp_path):
    rows = []
    for cut, (wb, inv) in ((0, (1.0, 0.9)), (10, (1.0, 0.6)), (20, (0.97, 0.4))):
        base = with_ci(row(cut, "int8"), (-0.1, 0.3))
        rows.append(
            dict(
                base,
                attack="whitebox",
                **{"privacy/whitebox/token_acc": wb, "privacy/whitebox/pii_recovery": 1.0},
            )
        )
        rows.append(dict(base, attack="learned_inverter", **{"privacy/learned_inverter/token_acc": inv}))
    rep = build_report(write_sweep(tmp_path / "priv", rows))
    md = rep.markdown.read_text()
    assert "Privacy (measured)" in md and "whitebox" in md and "Privacy was not measured" not in md
    assert "tokens recovered %" in md
    assert {r["leakage_attack"] for r in load_runs(tmp_path / "priv")} == {"whitebox"}
