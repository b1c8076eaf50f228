"""report.search_replay: a sampler replayed on stored grid values picks valid configurations in Hydra's
batched loop, the hypervolume ratio climbs to the grid's, and the settings come from the search config."""

from __future__ import annotations

import pytest

from splitinfer.report.search import bounds, hypervolume, nondominated, normalise
from splitinfer.report.search_replay import (
    OBJECTIVES,
    first_reaching,
    hv_ratio_curve,
    plot_hv_vs_trials,
    replay,
    search_settings,
)

CODECS = ["fp16", "int8", "ec40"]


def _grid() -> dict[tuple[int, str], list[float]]:
    """A grid whose trade-off is real: fewer bytes cost quality, a later cut costs latency."""
    bits = {"fp16": 16.0, "int8": 8.0, "ec40": 3.4}
    return {(cut, c): [bits[c] * 100.0, 20.0 / bits[c] + 0.01 * cut, 1.0 + 0.1 * cut + 0.05 * bits[c]]
            for cut in range(6) for c in CODECS}


def _full(values):
    pts = list(values.values())
    lo, hi = bounds(pts)
    return lo, hi, hypervolume(normalise(pts, lo, hi), [1.1] * len(OBJECTIVES)) / 1.1 ** len(OBJECTIVES)


@pytest.mark.parametrize("sampler", ["nsga2", "random"])
def test_replay_picks_grid_configurations_and_the_ratio_reaches_the_grid(sampler):
    values = _grid()
    picked = replay(values, sampler, seed=0, n_trials=60, population=8, batch=4, codecs=CODECS)
    assert len(picked) == 60 and set(picked) <= set(values)
    assert picked == replay(values, sampler, seed=0, n_trials=60, population=8, batch=4, codecs=CODECS)
    lo, hi, full = _full(values)
    curve = hv_ratio_curve(picked, values, lo, hi, full)
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:], strict=False))  # never loses what it found
    front = {list(values)[i] for i in nondominated(list(values.values()))}
    assert curve[-1] == pytest.approx(1.0) if front <= set(picked) else curve[-1] < 1.0
    assert 0 < curve[0] <= curve[-1] <= 1.0 + 1e-9


def test_first_reaching_and_a_bad_sampler():
    assert first_reaching([0.2, 0.96, 0.99], 0.95) == 2 and first_reaching([0.2, 0.5], 0.95) is None
    with pytest.raises(ValueError, match="sampler 'tpe'.*nsga2"):
        replay(_grid(), "tpe", 0, 4, 8, 4, CODECS)


def test_settings_come_from_the_search_config_and_the_figure_is_drawn(tmp_path):
    s = search_settings()
    assert s["population"] > 1 and s["batch"] >= 1 and "int8" in s["codecs"]
    rows = [{"source": "replay-random", "seed": 0, "trials": i + 1, "hv_ratio": v} for i, v in
            enumerate([0.1, 0.5, 0.9, 1.0])]
    plot_hv_vs_trials(rows, tmp_path / "hv.png", n_grid=18, n_front=5)
    from PIL import Image

    with Image.open(tmp_path / "hv.png") as im:
        assert im.size[0] > 500 and len(set(im.convert("L").getdata())) > 10
