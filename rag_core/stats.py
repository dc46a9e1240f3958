"""Intervals for the decisions the platform takes from data: Wilson intervals and the two-proportion test
for rates, and seeded percentile bootstraps (independent groups, or paired units) for means and latencies.
Used by the A/B report (rag_core.experiments) and the promotion gate (rag_core.promotion)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    samples: int

    def show(self, digits: int = 3) -> str:
        if self.value is None:
            return "–"
        if self.low is None or self.high is None:
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    """One metric of one arm against the control: the difference (arm − control), its interval, and a
    two-sided p-value where the test gives one."""

    metric: str
    difference: float | None
    low: float | None
    high: float | None
    p_value: float | None = None

    def better(self, higher_is_better: bool) -> bool:
        if self.low is None or self.high is None:
            return False
        return self.low > 0 if higher_is_better else self.high < 0

    def worse_beyond(self, higher_is_better: bool, tolerance: float) -> bool:
        if self.low is None or self.high is None:
            return False
        return self.high < -tolerance if higher_is_better else self.low > tolerance


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, trials: int, confidence: float = 0.95) -> Estimate:
    """A proportion with its Wilson score interval (sound near 0 and 1, unlike the normal one)."""
    if trials == 0:
        return Estimate(None, None, None, 0)
    z, p = _z(confidence), successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return Estimate(p, max(0.0, centre - spread), min(1.0, centre + spread), trials)


def two_proportions(
    metric: str, control: Sequence[bool], arm: Sequence[bool], confidence: float = 0.95
) -> Comparison:
    """The two-proportion z-test: the difference's interval (unpooled) and its p-value (pooled)."""
    n1, n2 = len(control), len(arm)
    if not n1 or not n2:
        return Comparison(metric, None, None, None)
    p1, p2 = sum(control) / n1, sum(arm) / n2
    spread = _z(confidence) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (sum(control) + sum(arm)) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = math.erfc(abs(p2 - p1) / se / math.sqrt(2)) if se > 0 else (1.0 if p1 == p2 else 0.0)
    return Comparison(metric, p2 - p1, p2 - p1 - spread, p2 - p1 + spread, p_value)


Statistic = Callable[[np.ndarray], np.ndarray]  # over the last axis of a (resamples, n) array


def mean(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=-1)


def _percentile(q: float) -> Statistic:
    return lambda samples: np.percentile(samples, q, axis=-1)


STATISTICS: dict[str, Statistic] = {
    "mean_rating": mean,
    "latency_p50_ms": _percentile(50),
    "latency_p95_ms": _percentile(95),
}


def _draws(units: int, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """`rounds` resamples (with replacement) of the indices of `units` observations."""
    return rng.integers(0, units, size=(rounds, units))


def _resampled(values: Sequence[float], statistic: Statistic, rounds: int, rng: np.random.Generator) -> np.ndarray:
    data = np.asarray(values, dtype=float)
    return statistic(data[_draws(len(data), rounds, rng)])


def _interval(spread: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of a bootstrap distribution."""
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(spread, tail)), float(np.percentile(spread, 100 - tail))


def bootstrap(
    values: Sequence[float], statistic: Statistic, confidence: float = 0.95, rounds: int = 2000, seed: int = 0
) -> Estimate:
    """The statistic with its percentile bootstrap interval (seeded: a report reads the same twice)."""
    if not values:
        return Estimate(None, None, None, 0)
    value = float(statistic(np.asarray(values, dtype=float)))
    spread = _resampled(values, statistic, rounds, np.random.default_rng(seed))
    return Estimate(value, *_interval(spread, confidence), len(values))


def bootstrap_difference(
    metric: str,
    control: Sequence[float],
    arm: Sequence[float],
    statistic: Statistic,
    confidence: float = 0.95,
    rounds: int = 2000,
    seed: int = 0,
) -> Comparison:
    """statistic(arm) − statistic(control), each group resampled on its own."""
    if not control or not arm:
        return Comparison(metric, None, None, None)
    rng = np.random.default_rng(seed)
    differences = _resampled(arm, statistic, rounds, rng) - _resampled(control, statistic, rounds, rng)
    observed = float(statistic(np.asarray(arm, dtype=float)) - statistic(np.asarray(control, dtype=float)))
    return Comparison(metric, observed, *_interval(differences, confidence))


def paired_bootstrap_difference(
    metric: str,
    control: Sequence[float],
    arm: Sequence[float],
    statistic: Statistic = mean,
    confidence: float = 0.95,
    rounds: int = 2000,
    seed: int = 0,
) -> Comparison:
    """statistic(arm) − statistic(control) over paired observations (`control[i]` and `arm[i]` are one unit
    measured twice, e.g. one judged query under two builds): each resample draws units, both values of a unit
    together, so what a unit's two values share (an easy or a hard query) cancels out of the interval."""
    if len(control) != len(arm):
        raise ValueError(f"paired samples differ in length ({len(control)} vs {len(arm)}) — pair them by unit first")
    if not control:
        return Comparison(metric, None, None, None)
    first, second = np.asarray(control, dtype=float), np.asarray(arm, dtype=float)
    draws = _draws(len(first), rounds, np.random.default_rng(seed))
    differences = statistic(second[draws]) - statistic(first[draws])
    return Comparison(metric, float(statistic(second) - statistic(first)), *_interval(differences, confidence))
