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


def _ngram_row(set_name, kind, n, tokens, rounds, drafting, drafted, accepted):
    return {"set": set_name, "kind": kind, "min_ngram": n, "tokens": tokens, "rounds": rounds,
            "rounds_with_draft": drafting, "drafted": drafted, "accepted": accepted}


def test_ngram_summary_lines_pool_prompts_and_skip_empty_kinds():
    from splitinfer.report.speculative import ngram_summary_lines

    rows = [_ngram_row("benchmark", "chat", 2, 9, 4, 2, 8, 6), _ngram_row("benchmark", "chat", 2, 5, 4, 0, 0, 0)]
    lines = ngram_summary_lines(rows, ["benchmark"], [2])
    # 12 decoded tokens in 8 rounds; 6 of 8 drafted accepted in 2 drafting rounds; 8 drafted per 12 tokens
    assert lines[1:] == ["benchmark,chat,2: 0.667, 0.750 (6/8), 3.00, 0.67",
                         "benchmark,all,2: 0.667, 0.750 (6/8), 3.00, 0.67"]  # no grounded prompt: no line
    assert ngram_summary_lines(rows[1:], ["benchmark"], [2])[1].endswith(": 1.000, nan (0/0), nan, 0.00")


def test_unsplit_rows_add_the_modelled_network_only_on_the_server():
    from splitinfer.report.runs import load_link
    from splitinfer.report.speculative import unsplit_rows

    prof = load_link("4g_lte")
    base = {"prompt": 0, "kind": "chat", "prompt_tokens": 10, "cut": 4}
    dev = unsplit_rows(base, "all_device", "4g_lte", prof, 10, [1, 2, 3, 4, 5], 0.1, [0.02] * 4, True)
    srv = unsplit_rows(base, "all_server", "4g_lte", prof, 10, [1, 2, 3, 4, 5], 0.1, [0.02] * 4, False)
    assert dev["ttft_s"] == 0.1 and dev["decode_s"] == pytest.approx(0.08) and dev["round_trips"] == 0
    assert dev["decode_tok_s"] == pytest.approx(4 / 0.08) and dev["up_bytes_per_token"] == 0.0
    first = prof.rtt_ms / 1e3 + prof.up_s(40) + prof.down_s(4)
    assert srv["ttft_s"] == pytest.approx(0.1 + first) and srv["round_trips"] == 1 and srv["same_text"] is False
    assert srv["decode_s"] == pytest.approx(0.08 + 4 * prof.down_s(4)) and srv["up_bytes_per_token"] == 8.0
    assert srv["total_s"] == pytest.approx(srv["ttft_s"] + srv["decode_s"])
