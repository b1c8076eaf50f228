"""The Pareto frontier (noise-proof quality measure) and the Markdown tables."""

from __future__ import annotations

from splitinfer.report import annotate, mark_pareto, markdown_table, pareto_front

from .fake_sweep import row, with_ci


def test_pareto_front():
    rows = [{"a": 1, "b": 5}, {"a": 2, "b": 2}, {"a": 3, "b": 3}, {"a": 5, "b": 1}, {"a": 1, "b": 6}]
    assert pareto_front(rows, ["a", "b"]) == [0, 1, 3]
    # within 1 % on `a` two rows tie there, so the better `b` wins
    near = [{"a": 100.0, "b": 3}, {"a": 100.5, "b": 2}]
    assert pareto_front(near, ["a", "b"]) == [0, 1]
    assert pareto_front(near, ["a", "b"], [0.01, 0.0]) == [1]


def _noisy_sweep() -> list[dict]:
    """The new user's sweep: a lossy 3-bit codec whose signed Δppl is noise around zero at some cuts."""
    rows = []
    for cut, (d, lo, hi) in {
        3: (-0.86, -1.6, -0.1),
        11: (-0.54, -1.3, 0.2),
        19: (0.67, -0.1, 1.4),
        25: (2.1, 1.2, 3.0),
    }.items():
        rows.append(with_ci(row(cut, "int3", delta_ppl_pct=d), (lo, hi)))
    for cut in (3, 11, 19, 25):
        rows.append(with_ci(row(cut, "fp16", delta_ppl_pct=0.001), (-0.002, 0.003 + cut / 10000)))
        rows.append(with_ci(row(cut, "int8", delta_ppl_pct=0.05), (-0.06, 0.12 + cut / 1000)))
    annotate(rows)
    return rows


def test_frontier_is_not_decided_by_noise():
    rows = _noisy_sweep()
    front = mark_pareto(rows)
    codecs = {r["codec"] for r in front}
    # signed Δppl would star only int3 (it "improves" perplexity at cut 3 with the fewest bytes)
    assert pareto_front(rows, ["up_bytes_per_token_decode", "delta_ppl_pct"]) == [0]
    assert codecs == {"fp16", "int8", "int3"}
    assert [r["cut"] for r in front if r["codec"] == "int3"] == [11]  # smallest |Δppl| bound (1.3), not -0.86
    assert sum(1 for r in rows if r.get("pareto")) == len(front) == 3


def test_markdown_shows_intervals_and_the_bound():
    noisy = _noisy_sweep()
    rows = [noisy[0], noisy[4], row(0, "fp16")]  # int3 cut 3, fp16 cut 3 (tiny interval), old-style fp16
    annotate(rows)
    table = markdown_table(rows)
    assert "| Δppl % [95% CI] | abs Δppl ≤ % (95%) |" in table
    assert "-0.86 [-1.60, -0.10] | 1.60 |" in table
    assert "+0.00 [no CI] | 0.00 (point) |" in table and "+0.001 [-0.002, +0.0033]" in table
