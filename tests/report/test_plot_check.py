"""The image check the plot tests use (`plot_check`, tests/conftest.py) tells a plot from a blank figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


def _save(path, draw) -> None:
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    draw(ax)
    fig.savefig(path)
    plt.close(fig)


def test_a_plotted_series_passes(tmp_path, plot_check):
    _save(tmp_path / "line.png", lambda ax: (ax.plot([0, 1, 2], [0, 2, 1], lw=2), ax.set_xlabel("cut")))
    seen = plot_check(tmp_path / "line.png")
    assert seen["width"] == 480 and seen["height"] == 320


@pytest.mark.parametrize("draw", [lambda ax: ax.set_axis_off(),  # a blank canvas
                                  lambda ax: ax.set_xlabel("cut")])  # empty axes: frame and labels only
def test_a_blank_or_empty_figure_fails(tmp_path, plot_check, draw):
    _save(tmp_path / "blank.png", draw)
    with pytest.raises(AssertionError):
        plot_check(tmp_path / "blank.png")


def test_a_tiny_image_fails(tmp_path, plot_check):
    fig, ax = plt.subplots(figsize=(1, 1), dpi=50)
    ax.plot([0, 1], [0, 1])
    fig.savefig(tmp_path / "tiny.png")
    plt.close(fig)
    with pytest.raises(AssertionError):
        plot_check(tmp_path / "tiny.png")
