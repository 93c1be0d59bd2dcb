"""State shared by the scenario groups of one run: sizes, the stack, the measured figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .stacks import BenchStack
from .stats import ratio

T = TypeVar("T")


@dataclass
class Context:
    """One benchmark run. ``metrics`` holds every headline number (SI units: seconds, bytes,
    per second) by key; later groups compute their ratios from earlier groups' baselines."""

    quick: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)  # data for the figure
    _stack: BenchStack | None = None

    def size(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    def stack(self) -> BenchStack:
        """The shared stack (started on first use, with one default worker)."""
        if self._stack is None:
            self._stack = BenchStack()
            self._stack.set_workers(1)
        return self._stack

    @property
    def redis_url(self) -> str | None:
        """The shared stack's Redis, if one was started."""
        return self._stack.redis_url if self._stack is not None else None

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.stop()

    def put(self, key: str, value: float | None) -> None:
        if value is not None and math.isfinite(value):
            self.metrics[key] = value

    def get(self, key: str) -> float | None:
        return self.metrics.get(key)

    def ratio_to(self, value: float | None, baseline_key: str) -> float | None:
        return ratio(value, self.metrics.get(baseline_key))
