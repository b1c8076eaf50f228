"""Report and recommendation on synthetic sweep folders (no model runs)."""

from __future__ import annotations

import json

import pytest

from splitinfer.cli import main as cli
from splitinfer.report import (
    Constraints,
    ReportError,
    build_report,
    load_runs,
    pareto_front,
    recommend,
)


def _row(cut: int, codec: str, **kw) -> dict:
    nbytes = {"fp16": 1200.0, "int8": 650.0, "int4": 350.0}[codec]
    bad = {"fp16": 0.0, "int8": 1.0, "int4": 4.0}[codec]
    row = {
        "name": "synthetic", "cut": cut, "codec": codec, "defense": "none", "link": "4g_lte", "device": "phone",
        "up_bytes_per_token_prefill": nbytes - 100, "up_bytes_per_token_decode": nbytes,
        "up_ratio_vs_fp32_decode": nbytes / 2304, "delta_ppl_pct": bad * (1 + cut / 10), "kl_mean": bad / 100,
        "top1_agreement": 1 - bad / 100, "exact_match_rate": 1.0 if bad == 0 else 0.5,
        "device_memory_bytes": 100e6 + cut * 15e6, "device_prefill_s_per_token": 0.001 * cut,
        "server_prefill_s_per_token": 0.001 * (30 - cut), "whole_prefill_s_per_token": 0.03,
        "device_decode_s_per_token": 0.01 * cut, "server_decode_s_per_token": 0.01 * (30 - cut),
        "whole_decode_s_per_token": 0.3, "down_bytes_per_token_decode": 4.0, "device_flops_per_token": 1e7 * cut,
        "whole_flops_per_token": 3e8, "device_slowdown": 2.0, "latency_prompt_tokens": 64,
        "tpot_s": 0.01 * cut * 2 + nbytes * 8 / 5.85e6 + 0.07 + 0.01 * (30 - cut), "ttft_s": 1.0 + cut / 10,
        "tpot_all_device_s": 0.6, "tpot_all_server_s": 0.3, "ttft_all_device_s": 4.0, "ttft_all_server_s": 2.0,
        "energy_j_per_token": 0.01,
    }
    row.update(kw)
    return row


@pytest.fixture
def sweep(tmp_path):
    d = tmp_path / "sweep"
    n = 0
    for codec in ("fp16", "int8", "int4"):
        for cut in (0, 5, 10, 20, 30):
            (d / str(n)).mkdir(parents=True)
            (d / str(n) / "metrics.json").write_text(json.dumps(_row(cut, codec)))
            n += 1
    (d / "99").mkdir()
    (d / "99" / "metrics.json").write_text("{not json")  # a job killed mid-write is skipped
    return d


def test_pareto_front():
    rows = [{"a": 1, "b": 5}, {"a": 2, "b": 2}, {"a": 3, "b": 3}, {"a": 5, "b": 1}, {"a": 1, "b": 6}]
    assert pareto_front(rows, ["a", "b"]) == [0, 1, 3]


def test_build_report(sweep):
    rep = build_report(sweep, links=["3g", "wifi"])
    assert len(rep.rows) == 15
    assert rep.csv.read_text().count("\n") == 16
    md = rep.markdown.read_text()
    assert "| cut | codec |" in md and "★" in md
    names = {p.name for p in rep.plots}
    assert {"metrics_vs_cut.png", "tradeoff_pareto.png", "latency_by_link_int8.png"} <= names
    assert all(p.stat().st_size > 10_000 for p in rep.plots)


def test_recommend_under_constraints(sweep):
    rows = load_runs(sweep)
    rec = recommend(rows, "bytes")
    assert rec.best["codec"] == "int4"
    rec = recommend(rows, "bytes", Constraints(max_delta_ppl_pct=2.0))
    assert rec.best["codec"] == "int8" and "Δppl" in rec.explanation and "would be best" in rec.explanation
    rec = recommend(rows, "latency", Constraints(max_device_mb=160, max_delta_ppl_pct=0.5))
    assert rec.best["codec"] == "fp16" and rec.best["cut"] <= 4
    rec = recommend(rows, "bytes", Constraints(max_delta_ppl_pct=-1))
    assert rec.best is None and "No configuration meets" in rec.explanation


def test_recommend_for_another_link(sweep):
    rows = load_runs(sweep)
    on_wifi = recommend(rows, "latency", link="wifi")
    on_3g = recommend(rows, "latency", link="3g")
    assert on_wifi.best["link"] == "wifi" and on_3g.best["tpot_s"] > on_wifi.best["tpot_s"]
    with pytest.raises(ReportError, match="not one of"):
        recommend(rows, "latency", link="carrier_pigeon")
    with pytest.raises(ReportError, match="attack"):
        recommend(rows, "bytes", Constraints(max_leakage=0.1))


def test_cli(sweep, capsys, tmp_path):
    assert cli(["report", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    assert "tradeoff_pareto.png" in capsys.readouterr().out
    assert cli(["recommend", str(sweep), "--objective", "bytes", "--max-delta-ppl", "2"]) == 0
    assert "Recommended: cut" in capsys.readouterr().out
    assert cli(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_link_sweep_gets_the_neurosurgeon_table_and_plot(tmp_path):
    d = tmp_path / "links"
    n = 0
    for link, rtt in (("3g", 0.15), ("wifi", 0.02)):
        for cut in (0, 10, 30):
            (d / str(n)).mkdir(parents=True)
            (d / str(n) / "metrics.json").write_text(json.dumps(_row(cut, "int8", link=link, tpot_s=rtt + cut / 100)))
            n += 1
    rep = build_report(d)
    assert (rep.out_dir / "latency_by_link.png").stat().st_size > 10_000
    md = (rep.out_dir / "latency_by_link.md").read_text()
    assert "| cut | 3g s/token | wifi s/token |" in md and "all on server" in md and "best split" in md


def test_recommend_with_a_leakage_budget(tmp_path):
    d = tmp_path / "priv"
    for n, (cut, leak) in enumerate(((0, 0.9), (10, 0.4), (20, 0.1))):
        (d / str(n)).mkdir(parents=True)
        row = _row(cut, "int8", **{"privacy/whitebox/token_acc": leak, "privacy/dcor": 0.5,
                                   "privacy/utility/top1_agreement": 0.9})
        (d / str(n) / "metrics.json").write_text(json.dumps(row))
    rows = load_runs(d)
    rec = recommend(rows, "latency", Constraints(max_leakage=0.5))
    assert rec.best["cut"] == 10 and "privacy/whitebox/token_acc" in rec.explanation
    assert (build_report(d).out_dir / "tradeoff_pareto.png").exists()
