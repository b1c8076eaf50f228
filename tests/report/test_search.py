"""The search report: exact hypervolume, the Pareto set of feasible trials, trials in order, the front plot
and recommend on a search folder (synthetic job folders, no model runs)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from splitinfer.report import build_report, load_runs
from splitinfer.report.search import (
    bounds,
    hypervolume,
    hypervolume_curve,
    load_search,
    nondominated,
    normalise,
)

from .fake_sweep import row


def test_hypervolume_exact_small_cases():
    assert hypervolume([[0.5]], [1.0]) == pytest.approx(0.5)
    # Two boxes overlapping in the unit square: 0.5*1 + 1*0.5 - 0.5*0.5.
    assert hypervolume([[0.5, 0.0], [0.0, 0.5]], [1.0, 1.0]) == pytest.approx(0.75)
    # A dominated point and a point beyond the reference add nothing.
    assert hypervolume([[0.5, 0.0], [0.0, 0.5], [0.6, 0.6], [1.2, 0.0]], [1.0, 1.0]) == pytest.approx(0.75)
    # 3-D: the union of [x,1]x[y,1]x[z,1] for three points, by inclusion-exclusion.
    pts = [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]
    single, pair, triple = 0.25, 0.125, 0.125
    assert hypervolume(pts, [1.0, 1.0, 1.0]) == pytest.approx(3 * single - 3 * pair + triple)


def test_hypervolume_matches_monte_carlo_in_3d_and_4d():
    rng = random.Random(0)
    for d in (3, 4):
        pts = [[rng.random() for _ in range(d)] for _ in range(12)]
        ref = [1.0] * d
        samples = [[rng.random() for _ in range(d)] for _ in range(40000)]
        hit = sum(any(all(p[k] <= s[k] for k in range(d)) for p in pts) for s in samples) / len(samples)
        assert hypervolume(pts, ref) == pytest.approx(hit, abs=0.01)


def test_nondominated_keeps_ties_and_drops_dominated():
    assert nondominated([[1, 2], [2, 1], [1, 2], [2, 2], [3, 0]]) == [0, 1, 2, 4]


def test_hypervolume_curve_is_monotone_and_ends_at_the_full_front():
    rng = random.Random(1)
    pts = [[rng.random(), rng.random(), rng.random()] for _ in range(30)]
    lo, hi = bounds(pts)
    curve = hypervolume_curve(pts, lo, hi)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(curve))
    assert curve[-1] == pytest.approx(hypervolume(normalise(pts, lo, hi), [1.1] * 3) / 1.1**3)
    assert 0 < curve[-1] <= 1


def _search_folder(tmp_path, constraints=None):
    """A search folder as `hparams_search=split_optuna` leaves it: search.json and one folder per trial."""
    sweep = tmp_path / "search"
    sweep.mkdir()
    objectives = ["bytes", "dppl_ub"]
    (sweep / "search.json").write_text(json.dumps({
        "objectives": objectives, "directions": ["minimize"] * 2, "constraints": constraints or {},
        "study_name": "synthetic", "storage": "sqlite:///optuna.db", "sampler": "optuna.samplers.NSGAIISampler",
        "seed": 0, "n_trials": 6, "batch": 2}))
    trials = [(10, "fp16"), (4, "int8"), (20, "int4"), (4, "int8"), (8, "ec40"), (2, "int3")]
    for n, (cut, codec) in enumerate(trials):
        r = row(cut, codec)
        r["delta_ppl_pct_ci_low"], r["delta_ppl_pct_ci_high"] = r["delta_ppl_pct"] - 0.1, r["delta_ppl_pct"] + 0.1
        from splitinfer.search import trial_metrics

        r.update(trial_metrics({"objectives": objectives, "constraints": constraints or {}}, r))
        d = sweep / str(n)
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps(r))
    return sweep


def test_load_search_pareto_set_and_trials_in_order(tmp_path):
    sweep = _search_folder(tmp_path)
    s = load_search(sweep, load_runs(sweep))
    assert [r["trial"] for r in s.trials] == list(range(6))
    # (bytes, |Δppl| bound): fp16 (1200, 0.1), int8 cut 4 (650, 1.5), ec40 cut 8 (400, 3.7), int3 cut 2
    # (300, 6.1) are on the front (int8, tried twice, once); int4 at cut 20 (350, 12.1) is beaten by int3.
    assert sorted(r["codec"] for r in s.front) == ["ec40", "fp16", "int3", "int8"]
    assert len(s.hv_curve) == 6 and s.hv_curve[-1] > s.hv_curve[0]


def test_constraints_filter_the_pareto_set(tmp_path):
    sweep = _search_folder(tmp_path, {"max_delta_ppl_pct": 2.5})
    s = load_search(sweep, load_runs(sweep))
    assert {r["codec"] for r in s.front} == {"fp16", "int8"}  # ec40 at cut 8: 2 x 1.8 = 3.6 % (+0.1)
    assert [r["feasible"] for r in s.trials] == [True, True, False, True, False, False]


def test_report_and_recommend_on_a_search_folder(tmp_path, capsys, plot_check):
    from splitinfer.cli import main as cli

    sweep = _search_folder(tmp_path)
    rep = build_report(sweep)
    md = (sweep / "report" / "report.md").read_text()
    assert "## Search" in md and "**Pareto set** (4 configurations" in md and "**Trials in order**" in md
    plot_check(sweep / "report" / "search_front.png")
    assert rep.search is not None and (sweep / "report" / "search_trials.csv").read_text().count("\n") == 7
    assert cli(["recommend", str(sweep), "--objective", "bytes", "--max-delta-ppl", "2"]) == 0
    assert "Recommended: cut" in capsys.readouterr().out


def test_a_grid_folder_has_no_search_section(tmp_path):
    sweep = _search_folder(tmp_path)
    (sweep / "search.json").unlink()
    rep = build_report(sweep)
    assert rep.search is None and "## Search" not in rep.markdown.read_text()
