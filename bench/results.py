"""What a scenario group hands to the report: tables of formatted cells, notes, and errors."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .stats import Summary


@dataclass
class Table:
    """One markdown table; cells are already formatted."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        assert len(cells) == len(self.columns), (self.title, cells)
        self.rows.append([str(c) for c in cells])


@dataclass
class GroupResult:
    """Everything one scenario group measured (or why it could not)."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    other_cores: float = 0.0  # CPU used by processes outside the bench meanwhile
    error: str | None = None

    def table(self, title: str, columns: list[str]) -> Table:
        t = Table(title, columns)
        self.tables.append(t)
        return t


def _ok(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def ms(seconds: float | None, digits: int = 2) -> str:
    return f"{seconds * 1000:.{digits}f} ms" if _ok(seconds) else "n/a"  # type: ignore[operator]


def us(seconds: float | None) -> str:
    return f"{seconds * 1e6:,.1f} µs" if _ok(seconds) else "n/a"  # type: ignore[operator]


def rate(per_second: float | None, unit: str = "/s") -> str:
    return f"{per_second:,.0f}{unit}" if _ok(per_second) else "n/a"


def num(value: float | None, digits: int = 2) -> str:
    return f"{value:,.{digits}f}" if _ok(value) else "n/a"


def kib(n_bytes: float | None) -> str:
    """A size in KiB, or MiB from 10 MiB up."""
    if not _ok(n_bytes):
        return "n/a"
    assert n_bytes is not None
    if abs(n_bytes) >= 10 * 2**20:
        return f"{n_bytes / 2**20:,.1f} MiB"
    return f"{n_bytes / 1024:,.1f} KiB"


def times(value: float | None) -> str:
    """A ratio to a baseline, e.g. ``3.20x``."""
    return f"{value:.2f}x" if _ok(value) else "n/a"


def pcts_ms(s: Summary) -> list[str]:
    """p50, p99 and max of a latency summary (seconds) as ms cells."""
    return [ms(s.p50), ms(s.p99), ms(s.max)]
