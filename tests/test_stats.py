"""splitinfer.stats: known values, edge cases, and the properties the figures rely on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitinfer import stats


def test_percentile_interpolates_between_order_statistics():
    xs = [4.0, 1.0, 3.0, 2.0]  # sorted 1, 2, 3, 4
    assert stats.percentile(xs, 0) == 1.0 and stats.percentile(xs, 100) == 4.0
    assert stats.p50(xs) == 2.5 == stats.median(xs)
    assert stats.percentile(xs, 25) == pytest.approx(1.75)
    assert stats.p99(list(range(101))) == pytest.approx(99.0)
    assert stats.p99([7.0]) == 7.0


def test_percentile_of_nothing_is_nan_and_a_bad_q_is_refused():
    assert math.isnan(stats.p50([]))
    with pytest.raises(ValueError, match=r"q=101.*\[0, 100\]"):
        stats.percentile([1.0], 101)


def test_wilson_interval_known_values():
    lo, hi = stats.wilson_interval(5, 10)  # the textbook value for 5/10 at 95 %
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = stats.wilson_interval(0, 20)  # sensible at 0: starts at 0, upper end above 0
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = stats.wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(3, 2)


def test_bootstrap_interval_covers_the_mean_narrows_with_data_and_is_seeded():
    rng = np.random.default_rng(1)
    small, large = rng.normal(10, 2, 20), rng.normal(10, 2, 2000)
    lo_s, hi_s = stats.bootstrap_interval(small)
    lo_l, hi_l = stats.bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    # the standard error of a mean: 2 / sqrt(n); the 95 % interval is about 2 x 1.96 of it wide
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * 2 / math.sqrt(2000), rel=0.15)
    assert hi_l - lo_l < (hi_s - lo_s) / 5
    assert stats.bootstrap_interval(small, seed=3) == stats.bootstrap_interval(small, seed=3)
    assert stats.bootstrap_interval(small, seed=3) != stats.bootstrap_interval(small, seed=4)


def test_bootstrap_interval_of_a_constant_is_that_constant_and_one_value_says_nothing():
    assert stats.bootstrap_interval([2.0] * 5, "median") == (2.0, 2.0)
    assert all(math.isnan(v) for v in stats.bootstrap_interval([2.0]))
    with pytest.raises(ValueError, match="statistic='mode'.*mean"):
        stats.bootstrap_interval([1.0, 2.0], "mode")


def test_bootstrap_ratio_is_paired():
    # den[i] = 2 num[i] exactly: every resample has ratio 0.5, so the paired interval has no width
    num = [1.0, 5.0, 2.0, 9.0]
    r, lo, hi = stats.bootstrap_ratio(num, [2 * v for v in num])
    assert r == lo == hi == 0.5
    r, lo, hi = stats.bootstrap_ratio([1.0, 3.0], [1.0, 1.0])
    assert r == 2.0 and 1.0 <= lo <= r <= hi <= 3.0
    assert all(math.isnan(v) for v in stats.bootstrap_ratio([], []))
    with pytest.raises(ValueError, match="2 numerators but 1 denominators"):
        stats.bootstrap_ratio([1.0, 2.0], [1.0])


def test_interval_is_the_central_level_of_the_samples():
    assert stats.interval(np.arange(1001)) == pytest.approx((25.0, 975.0))
    assert stats.interval(np.arange(1001), level=0.5) == pytest.approx((250.0, 750.0))
