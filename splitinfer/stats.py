"""The statistics every figure uses: percentiles, the bootstrap interval and the Wilson interval.

One definition each, so a p99 or a 95 % interval means the same thing in a sweep, a benchmark and a
report. Percentiles interpolate linearly between order statistics (numpy's default), intervals are
two-sided at `CI_LEVEL`, and the bootstrap is seeded (the same data gives the same interval).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CI_LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
Z_95 = 1.959964  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (q in [0, 100]) with linear interpolation; nan for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q!r}: must be in [0, 100]")
    if len(values) == 0:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def p50(values: Sequence[float]) -> float:
    """The median (50th percentile); nan for no values."""
    return percentile(values, 50)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (the tail a latency figure quotes); nan for no values."""
    return percentile(values, 99)


median = p50
# Statistics `bootstrap_interval` knows by name: each maps a (samples, n) array to (samples,).
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"mean": lambda x: x.mean(1),
                                                            "median": lambda x: np.median(x, 1)}


def interval(samples: np.ndarray | Sequence[float], level: float = CI_LEVEL) -> tuple[float, float]:
    """The central `level` interval of a bootstrap distribution (percentile method)."""
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def resample_indices(n: int, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> np.ndarray:
    """(samples, n) indices drawn with replacement: one bootstrap resample per row. Callers that resample
    several statistics of the same units use one draw for all (a paired bootstrap)."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_interval(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | str = "mean",
                       seed: int = 0, samples: int = BOOTSTRAP_SAMPLES,
                       level: float = CI_LEVEL) -> tuple[float, float]:
    """The `level` bootstrap interval of `statistic` over `values` (units resampled with replacement).

    `statistic` is "mean", "median" or a function of a (samples, n) array returning (samples,). Fewer than
    two values give (nan, nan): one unit says nothing about its spread."""
    if isinstance(statistic, str) and statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: use one of {sorted(STATISTICS)} or a function of a "
                         "(samples, n) array")
    fn = STATISTICS[statistic] if isinstance(statistic, str) else statistic
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return float("nan"), float("nan")
    return interval(fn(a[resample_indices(a.size, seed, samples)]), level)


def bootstrap_ratio(num: Sequence[float], den: Sequence[float], seed: int = 0,
                    samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float, float]:
    """sum(num) / sum(den) and its paired bootstrap interval (num[i] and den[i] are one unit, resampled
    together). (nan, nan, nan) when there is no unit or the denominator sums to 0."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"bootstrap_ratio: {a.size} numerators but {b.size} denominators; give one of each per unit")
    if a.size == 0 or b.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    if a.size < 2:
        return float(a.sum() / b.sum()), float("nan"), float("nan")
    pick = resample_indices(a.size, seed, samples)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi = interval(a[pick].sum(1) / b[pick].sum(1))
    return float(a.sum() / b.sum()), lo, hi


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion (sensible at 0 and 1, unlike the normal approximation)."""
    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: {successes} successes out of {n}; need 0 <= successes <= n")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
