"""The look every report figure shares: matplotlib on the Agg backend (`pyplot`), one (colour, marker) per
series (`series_styles`), axis scales chosen from the data with plain tick labels (`set_scale`, `tick_label`), the one
legend below the panels (`finish`), labels placed so they do not overlap (`place_labels`), and `save`.

Split out of report/plots.py (which keeps the figures themselves) so that each module holds one idea.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

LOG_SPAN_DECADES = 1.5


DPI = 110


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p", "d", "8")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use: the one
    way scripts and report code get it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_styles(labels: Sequence[str]) -> dict[str, tuple[str, str]]:
    """A fixed (colour, marker) per label, in the order given."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    return {
        lab: (matplotlib.colors.to_hex(colours[i % 10]), MARKERS[i % len(MARKERS)])
        for i, lab in enumerate(labels)
    }


def set_scale(ax, values: Sequence[float | None], axis: str = "y") -> str:
    """Linear unless the positive values span more than LOG_SPAN_DECADES decades; then log (symlog when
    some are zero), with plain-number tick labels. Returns the scale used."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    vals = [v for v in values if v is not None and math.isfinite(v)]
    pos = [v for v in vals if v > 0]
    if not pos or any(v < 0 for v in vals) or math.log10(max(pos) / min(pos)) <= LOG_SPAN_DECADES:
        _linear(ax, vals, axis)
        return "linear"
    axis_obj = ax.yaxis if axis == "y" else ax.xaxis
    if any(v == 0 for v in vals):
        thresh = 10 ** math.floor(math.log10(min(pos)))
        (ax.set_yscale if axis == "y" else ax.set_xscale)("symlog", linthresh=thresh, linscale=0.5)
        scale = "symlog"
    else:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        axis_obj.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if math.log10(max(pos) / min(pos)) < 3 else (1.0,))
        )
        axis_obj.set_minor_formatter(NullFormatter())
        scale = "log"
    axis_obj.set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
    return scale


FLAT_SPREAD = 0.02


def _linear(ax, vals: Sequence[float], axis: str) -> None:
    """Tick labels by `tick_label` (no "+5.81e2" offset, no "1e-7" corner factor); values that vary by less
    than FLAT_SPREAD of their size (bytes that differ by a header byte) get an axis of ±5 % around them, so
    they read as flat, not as noise blown up to the full height."""
    from matplotlib.ticker import FuncFormatter

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(FuncFormatter(lambda v, _: tick_label(v)))
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    mid = (lo + hi) / 2
    if mid and hi - lo < FLAT_SPREAD * abs(mid):
        (ax.set_ylim if axis == "y" else ax.set_xlim)(mid - 0.05 * abs(mid), mid + 0.05 * abs(mid))


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def tick_label(v: float) -> str:
    """Plain numbers between 0.0001 and 100000 (0.0005, 1, 500); powers of ten outside (10⁻⁵, 2×10⁻⁷)."""
    if abs(v) < 1e-300:
        return "0"
    if 1e-4 <= abs(v) < 1e5:
        return f"{v:.6g}"
    exp = math.floor(math.log10(abs(v)))
    mant = v / 10**exp
    power = "10" + str(exp).translate(_SUPERSCRIPT)
    return power if abs(mant - 1) < 1e-9 else f"{mant:g}×{power}"


def finish(fig, handles: list, labels: list[str], title: str, ncols: int = 6):
    """The title and the one legend of the figure (below the panels)."""
    fig.suptitle(title)
    if handles and len([a for a in fig.axes if a.axison]) == 1:
        fig.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    elif handles:
        # columns that fit the figure's width: ~0.07 in per character at 8 pt plus the marker and padding
        col_in = 0.07 * max(len(label) for label in labels) + 0.6
        fit = max(1, int(fig.get_figwidth() // col_in))
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(labels), ncols, fit),
            fontsize=8,
            frameon=False,
        )
    return fig


def save(fig, path: Path | None) -> Path | None:
    """Write `fig` to `path` and free it (None when there was nothing to draw)."""
    if fig is None:
        return None
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def place_labels(
    ax,
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    colours: Sequence[str],
    avoid: Sequence[tuple[float, float]] = (),
    fontsize: float = 7.5,
    lines: Sequence[Sequence[tuple[float, float]]] = (),
) -> list:
    """Annotate `points` with `texts` so labels do not overlap each other, the markers in `avoid` or the
    polylines in `lines`, and stay inside the axes: each label takes the first of 32 offsets around its point
    (4 radii x 8 directions) that is clear, else the least-overlapping one, with a leader line when it sits
    away from the point. Call after the figure's layout is final (positions are in pixels)."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    px_per_pt = fig.dpi / 72.0
    marker_r = 5.5 * px_per_pt  # the frontier ring (s=95) has a radius of ~5 pt
    centres = (
        [tuple(p) for p in ax.transData.transform(list(avoid) or list(points))] if (avoid or points) else []
    )
    obstacles = [(x - marker_r, y - marker_r, x + marker_r, y + marker_r) for x, y in centres]
    step = 2.0 * px_per_pt  # lines: small boxes every 2 pt along each segment
    for line in lines:
        pix = ax.transData.transform(list(line)) if len(line) > 1 else []
        for (x0, y0), (x1, y1) in zip(pix[:-1], pix[1:], strict=False):
            n = max(1, int(math.hypot(x1 - x0, y1 - y0) // step))
            obstacles += [
                (
                    x0 + (x1 - x0) * k / n - step,
                    y0 + (y1 - y0) * k / n - step,
                    x0 + (x1 - x0) * k / n + step,
                    y0 + (y1 - y0) * k / n + step,
                )
                for k in range(n + 1)
            ]
    placed: list[tuple[float, float, float, float]] = []
    out = []

    def overlap(a, b) -> float:
        w = min(a[2], b[2]) - max(a[0], b[0])
        h = min(a[3], b[3]) - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    directions = [(1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1)]
    order = sorted(range(len(points)), key=lambda i: points[i])
    for i in order:
        x, y = points[i]
        px, py = ax.transData.transform((x, y))
        probe = ax.text(x, y, texts[i], fontsize=fontsize)
        bb = probe.get_window_extent(renderer)
        probe.remove()
        w, h = bb.width, bb.height
        best = None
        for radius in (7, 12, 19, 28):
            for dx, dy in directions:
                norm = math.hypot(dx, dy)
                ox, oy = radius * dx / norm * px_per_pt, radius * dy / norm * px_per_pt
                x0 = px + ox if dx > 0 else px + ox - w if dx < 0 else px - w / 2
                y0 = py + oy if dy > 0 else py + oy - h if dy < 0 else py - h / 2
                cand = (x0, y0, x0 + w, y0 + h)
                outside = (
                    max(0.0, box.x0 - cand[0])
                    + max(0.0, cand[2] - box.x1)
                    + max(0.0, box.y0 - cand[1])
                    + max(0.0, cand[3] - box.y1)
                )
                score = (
                    1e6 * outside
                    + sum(overlap(cand, p) for p in placed)
                    + 0.5 * sum(overlap(cand, o) for o in obstacles)
                )
                if best is None or score < best[0]:
                    best = (score, radius, dx, dy, ox, oy, cand)
            if best[0] == 0:
                break
        _, radius, dx, dy, ox, oy, cand = best
        arrow = (
            {"arrowstyle": "-", "color": colours[i], "lw": 0.6, "shrinkA": 0, "shrinkB": 4}
            if radius > 7
            else None
        )
        t = ax.annotate(
            texts[i],
            (x, y),
            xytext=(ox / px_per_pt, oy / px_per_pt),
            textcoords="offset points",
            fontsize=fontsize,
            color=colours[i],
            arrowprops=arrow,
            ha="left" if dx > 0 else "right" if dx < 0 else "center",
            va="bottom" if dy > 0 else "top" if dy < 0 else "center",
            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
            zorder=5,
        )
        t.set_in_layout(False)
        placed.append(cand)
        out.append(t)
    return out
