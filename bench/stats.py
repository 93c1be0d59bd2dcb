"""Percentiles and summaries of samples (latencies in seconds, rates, sizes)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated."""
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Distribution of one measured quantity."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float
    min: float
    mean: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Summary:
        ordered = sorted(values)
        if not ordered:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(
            n=len(ordered),
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
            min=ordered[0],
            mean=sum(ordered) / len(ordered),
        )

    def scaled(self, factor: float) -> Summary:
        """The same distribution in another unit (e.g. seconds x 1000 = ms)."""
        return Summary(
            self.n,
            self.p50 * factor,
            self.p90 * factor,
            self.p99 * factor,
            self.max * factor,
            self.min * factor,
            self.mean * factor,
        )


def median(values: Iterable[float]) -> float:
    return percentile(sorted(values), 50)


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is zero."""
    if value is None or baseline is None or not math.isfinite(value):
        return None
    if not math.isfinite(baseline) or baseline == 0:
        return None
    return value / baseline
