"""Statistics of the benchmark: means over seeds and paired deltas with Student-t intervals.

Pure Python and numpy (no scipy). The t quantile is computed exactly: the Student-t CDF is
written with the regularised incomplete beta function (evaluated by its continued fraction),
and inverted by bisection.

A *paired* delta matches two variants of one method and budget by seed: only seeds with a
finite value in both variants count; a seed present in one variant only is not paired.
With fewer than two pairs there is no standard deviation and no confidence interval
(``sd``/``ci_low``/``ci_high`` are None), never a "± 0".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional

import numpy as np

LEVEL = 0.95


# --- Student's t ----------------------------------------------------------------------------
def _incomplete_beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 10_000):
        # even step: d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))
        num = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        result *= d * c
        # odd step: d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))
        num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        result *= step
        if abs(step - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (``df=inf``: standard normal)."""
    if math.isinf(df):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (e.g. ``t_quantile(0.975, 4) = 2.776...``), by bisection."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if not df > 0:
        raise ValueError(f"df must be positive, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return 0.5 * (low + high)


# --- estimates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """Mean of ``n`` values with the sample sd and a Student-t interval of the mean (n >= 2 only)."""
    n: int
    mean: float                      # nan when n == 0
    sd: Optional[float] = None       # sample standard deviation (ddof=1); None when n < 2
    ci_low: Optional[float] = None   # None when n < 2
    ci_high: Optional[float] = None
    level: float = LEVEL

    @property
    def half_width(self) -> Optional[float]:
        return None if self.ci_low is None else (self.ci_high - self.ci_low) / 2.0

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": None if math.isnan(self.mean) else self.mean, "sd": self.sd,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "level": self.level}


def _finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v):
            out.append(v)
    return out


def estimate(values: Iterable, level: float = LEVEL) -> Estimate:
    """Mean, sample sd and the ``level`` t-interval of the mean; None/NaN values are dropped."""
    arr = np.asarray(_finite(values), dtype=float)
    n = int(arr.size)
    if n == 0:
        return Estimate(0, math.nan, level=level)
    mean = float(arr.mean())
    if n == 1:
        return Estimate(1, mean, level=level)
    sd = float(arr.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Estimate(n, mean, sd, mean - half, mean + half, level)


@dataclass(frozen=True)
class PairedDelta:
    """``a - b`` matched by seed: the seeds paired, their deltas and the estimate of the mean delta."""
    seeds: tuple
    deltas: tuple
    estimate: Estimate = field(default_factory=lambda: Estimate(0, math.nan))

    def as_dict(self) -> dict:
        return {"seeds": list(self.seeds), "deltas": list(self.deltas), **self.estimate.as_dict()}


def paired_delta(a: Mapping, b: Mapping, level: float = LEVEL) -> PairedDelta:
    """Mean of ``a[seed] - b[seed]`` over the seeds where both are finite numbers."""
    def ok(v) -> bool:
        return v is not None and math.isfinite(float(v))

    seeds = sorted(s for s in set(a) & set(b) if ok(a[s]) and ok(b[s]))
    deltas = tuple(float(a[s]) - float(b[s]) for s in seeds)
    return PairedDelta(tuple(seeds), deltas, estimate(deltas, level))


def verdict(est: Estimate) -> str:
    """``up`` (interval above 0), ``down`` (below 0), ``unclear`` (interval holds 0),
    ``single`` (one value: no interval) or ``none`` (no value)."""
    if est.n == 0:
        return "none"
    if est.n == 1:
        return "single"
    if est.ci_low > 0:
        return "up"
    if est.ci_high < 0:
        return "down"
    return "unclear"
