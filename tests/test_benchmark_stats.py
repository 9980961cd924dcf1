"""The benchmark's statistics: Student-t quantiles, estimates over seeds, deltas paired by seed."""
from __future__ import annotations

import math

import pytest

from solo_surgical.benchmark.stats import estimate, paired_delta, t_cdf, t_quantile, verdict

# t_{0.975, df} from printed tables
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df,value", sorted(TABLE.items()))
def test_t_quantile_matches_the_printed_table(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_t_quantile_edges():
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)
    assert t_quantile(0.025, 4) == pytest.approx(-t_quantile(0.975, 4))
    assert t_quantile(0.5, 7) == 0.0
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(t_quantile(0.995, 2), 2) == pytest.approx(0.995, abs=1e-10)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 5, 8, 13, 29, 30, 31, 100, 2.5):
        for p in (0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-9)


def test_estimate_by_hand():
    est = estimate([2.0, 4.0, 9.0])
    # by hand: mean 5; squared deviations 9 + 1 + 16 = 26, sd = sqrt(26 / 2) = sqrt(13)
    sd = math.sqrt(13.0)
    half = 4.302652729911275 * sd / math.sqrt(3.0)
    assert (est.n, est.mean, est.sd) == (3, pytest.approx(5.0), pytest.approx(sd))
    assert (est.ci_low, est.ci_high) == (pytest.approx(5.0 - half), pytest.approx(5.0 + half))
    assert est.half_width == pytest.approx(half)


def test_estimate_with_one_value_has_no_spread_and_no_interval():
    est = estimate([7.5, math.nan, None])  # missing values are dropped
    assert (est.n, est.mean, est.sd, est.ci_low, est.ci_high, est.half_width) == (1, 7.5, None, None, None, None)
    empty = estimate([])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert empty.as_dict()["mean"] is None


def test_paired_delta_matches_seeds_and_ignores_unpaired_ones():
    distill = {0: 50.0, 1: 52.0, 2: 47.0, 4: 60.0, 5: math.nan}  # seed 4: no plain twin; seed 5: no value
    plain = {0: 48.0, 1: 49.0, 2: 47.5, 3: 40.0, 5: 45.0}         # seed 3: no distilled twin
    pair = paired_delta(distill, plain)
    assert pair.seeds == (0, 1, 2)
    assert pair.deltas == (2.0, 3.0, -0.5)
    # by hand: mean (2 + 3 - 0.5) / 3 = 1.5; deviations 0.5, 1.5, -2 -> sd = sqrt(6.5 / 2)
    sd = math.sqrt(3.25)
    half = 4.302652729911275 * sd / math.sqrt(3.0)
    est = pair.estimate
    assert est.n == 3 and est.mean == pytest.approx(1.5) and est.sd == pytest.approx(sd)
    assert est.ci_low == pytest.approx(1.5 - half) and est.ci_high == pytest.approx(1.5 + half)
    assert verdict(est) == "unclear"
    # the paired interval differs from comparing the two unpaired means
    assert est.mean != pytest.approx(sum(v for v in distill.values() if v == v) / 4 - sum(plain.values()) / 5)


def test_paired_delta_with_one_pair_and_with_none():
    one = paired_delta({0: 40.0, 1: 41.0}, {1: 38.5, 2: 30.0})
    assert one.seeds == (1,) and one.deltas == (2.5,)
    assert one.estimate.n == 1 and one.estimate.mean == 2.5 and one.estimate.ci_low is None
    assert verdict(one.estimate) == "single"
    none = paired_delta({0: 1.0}, {1: 1.0})
    assert none.estimate.n == 0 and verdict(none.estimate) == "none"
    assert none.as_dict()["seeds"] == [] and none.as_dict()["mean"] is None


def test_verdict_follows_the_interval():
    assert verdict(estimate([2.0, 2.2, 1.9])) == "up"
    assert verdict(estimate([-2.0, -2.2, -1.9])) == "down"
    assert verdict(estimate([-1.0, 2.0, 0.5])) == "unclear"
