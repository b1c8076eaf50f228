"""What a long privacy run shows while it works: tqdm bars on a terminal, one line per finished step
everywhere else.

Bars use `disable=None`, so they appear only when stderr is a terminal (never in log files or CI).
`say` is the line that is always visible: an INFO log record when logging is set up (Hydra's job log,
pytest), otherwise a plain line on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable

from tqdm.auto import tqdm

from splitinfer.progress import say  # noqa: F401 - the privacy modules' line, shared with the sweep


def bar(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "", unit: str = "it",
        leave: bool = True) -> tqdm:
    """A tqdm bar with ETA, shown only on a terminal."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=None, dynamic_ncols=True,
                mininterval=0.5)


def eta(done: int, total: int, elapsed: float) -> str:
    """'ETA 1 min 20 s' from the mean time per finished item ('' before the first)."""
    if done <= 0 or total <= done:
        return ""
    left = elapsed / done * (total - done)
    return f"ETA {int(left // 60)} min {left % 60:.0f} s" if left >= 60 else f"ETA {left:.0f} s"
