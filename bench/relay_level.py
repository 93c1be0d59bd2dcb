"""What one relay level measured (``bench/relay.py``), and the table cells made from it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .results import ms, us
from .stats import Summary

CHUNK_RATE = 20  # chunks per second per stream


@dataclass
class Level:
    """Relay latency with ``streams`` concurrent streams."""

    streams: int
    relay: Summary  # every content chunk
    steady: Summary  # chunks sent while every stream was running
    steady_seconds: float
    to_redis: Summary
    to_client: Summary
    lag: Summary  # the bench's own event-loop lag
    cores: dict[str, float]  # CPU cores busy, by process
    # CPU cores busy while every stream ran, by process and "machine" (empty: no such window)
    steady_cores: dict[str, float]
    elapsed: float  # seconds the level took
    chunks: int  # content chunks received (final attempts)
    redis: dict[str, float]  # INFO counter deltas over the level
    retries: int  # job.retrying events the consumers saw
    rate: int = CHUNK_RATE  # chunks per second per stream
    rss_kb: dict[str, int] = field(default_factory=dict)  # peak resident memory, by process
    errors: list[str] = field(default_factory=list)

    def cpu_per_chunk(self, prefix: str) -> float:
        busy = sum(v for k, v in self.cores.items() if k.startswith(prefix)) * self.elapsed
        return busy / self.chunks if self.chunks else math.nan

    def per_chunk(self, counter: str) -> float:
        return self.redis.get(counter, math.nan) / self.chunks if self.chunks else math.nan

    def cores_cell(self) -> str:
        """The "CPU cores: worker / API / Redis / client" cell (every worker process summed)."""
        c = self.cores
        worker = sum(v for k, v in c.items() if k.startswith("worker"))
        return f"{worker:.2f} / {c['api']:.2f} / {c['redis']:.2f} / {c['client']:.2f}"

    def steady_cores_cell(self) -> str:
        """The "while every stream ran: cores busy" cell: the whole machine's (of how many it
        has), then the worker's, API's, Redis's, provider's and client's."""
        c = self.steady_cores
        if not c:
            return "no such window"
        worker = sum(v for k, v in c.items() if k.startswith("worker"))
        parts = (worker, c.get("api", 0.0), c.get("redis", 0.0), c.get("clocked provider", 0.0))
        return f"{c['machine']:.2f} of {os.cpu_count()}; " + " / ".join(
            f"{v:.2f}" for v in (*parts, c.get("client", 0.0))
        )

    def cpu_cell(self) -> str:
        """The "CPU µs per chunk: worker / API" cell."""
        return f"{us(self.cpu_per_chunk('worker'))} / {us(self.cpu_per_chunk('api'))}"

    def failed_cell(self) -> str:
        return f"{len(self.errors)} of {self.streams}"

    def error_notes(self, prefix: str = "") -> list[str]:
        """Table notes naming the first three distinct errors of failed streams."""
        return [f"{prefix}error: {error}" for error in sorted(set(self.errors))[:3]]


def p50_p99(summary: Summary) -> str:
    """A "p50 / p99" cell."""
    return f"{ms(summary.p50)} / {ms(summary.p99)}"
