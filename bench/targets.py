"""The performance issue's targets, checked against this run's figures."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from .context import Context
from .results import ms, num, rate, times


@dataclass(frozen=True)
class Target:
    goal: str
    key: str  # a Context.metrics key
    limit: float
    at_most: bool  # met when value <= limit (else when value >= limit)
    show: Callable[[float], str]
    measured_as: str
    floor_key: str = ""  # the same figure for the minimal relay (bench/minimal_relay.py)
    window_key: str = ""  # the same figure over the chunks sent while every stream ran

    def check(self, ctx: Context) -> tuple[str, str]:
        """(measured value, status) for this run."""
        value = ctx.get(self.key)
        if value is None:
            return "not measured", "not measured in this run"
        met = value <= self.limit if self.at_most else value >= self.limit
        return self.show(value), "**met**" if met else "**not met**"

    def how(self, ctx: Context) -> str:
        """How it was measured, with the figure over the window when every stream ran and the
        minimal relay's figures of the same run, if measured."""
        parts = [self.measured_as]
        window = ctx.get(self.window_key) if self.window_key else None
        if window is not None:
            busy = _busy(ctx, self.window_key)
            parts.append(f"while every stream ran (no job starting): {self.show(window)}{busy}")
        floor = ctx.get(self.floor_key) if self.floor_key else None
        if floor is not None:
            value = ctx.get(self.key)
            ratio = f" (tokenspool {times(value / floor)} that)" if value and floor > 0 else ""
            floor_window = ctx.get(self.floor_key.replace(".p", ".steady_p"))
            also = (
                f", while every stream ran {self.show(floor_window)}{_busy(ctx, self.floor_key)}"
                if floor_window is not None and window is not None
                else ""
            )
            parts.append(f"the minimal relay, same run: {self.show(floor)}{ratio}{also}")
        return "; ".join(parts)


def _busy(ctx: Context, key: str) -> str:
    """The machine's cores busy while every stream ran, as a suffix to a relay figure."""
    cores = ctx.get(key.rsplit(".", 1)[0] + ".steady_machine_cores")
    return f" (machine: {cores:.2f} of {os.cpu_count()} cores busy)" if cores is not None else ""


def _bytes(v: float) -> str:
    return f"{v:,.0f} B"


TARGETS = [
    Target(
        "pickup p50 ≤ 5 ms",
        "e2e.pickup_p50",
        0.005,
        True,
        ms,
        "POST answered (response head read) → job.started received, one request per job "
        "(POST with Accept: text/event-stream), 20 new jobs/s, 1 worker",
    ),
    Target("pickup p99 ≤ 25 ms", "e2e.pickup_p99", 0.025, True, ms, "same"),
    Target(
        "TTFT overhead p50 ≤ 10 ms at 20 new jobs/s",
        "e2e.ttft_p50",
        0.010,
        True,
        ms,
        "first content.delta received - POST sent - scripted TTFT (100 ms), one request per job",
    ),
    Target("TTFT overhead p99 ≤ 30 ms at 20 new jobs/s", "e2e.ttft_p99", 0.030, True, ms, "same"),
    Target(
        "relay p50 ≤ 2 ms, 500 streams at 20 chunks/s",
        "relay.500.p50",
        0.002,
        True,
        ms,
        "provider send → client receive, every chunk, 1 worker",
        "minimal.500.p50",
        "relay.500.steady_p50",
    ),
    Target(
        "relay p99 ≤ 15 ms, 500 streams at 20 chunks/s",
        "relay.500.p99",
        0.015,
        True,
        ms,
        "same",
        "minimal.500.p99",
        "relay.500.steady_p99",
    ),
    Target(
        "2,000 slow streams on one worker (5 chunks/s each): relay p99 ≤ 25 ms",
        "slow.p99",
        0.025,
        True,
        ms,
        "provider send → client receive, every chunk, 1 worker holding every stream",
        "minimal.slow.p99",
        "slow.steady_p99",
    ),
    Target(
        "2,000 slow streams on one worker: worker RSS ≤ 600 MB",
        "slow.worker_rss_bytes",
        600e6,
        True,
        lambda v: f"{v / 1e6:,.0f} MB",
        "peak VmRSS of the worker process during that run (MB = 10^6 B)",
    ),
    Target(
        "one worker ≥ 20,000 chunks/s",
        "tp.one_worker_rate",
        20_000,
        False,
        lambda v: rate(v, " chunks/s"),
        "a batch of 2,000-chunk jobs, no delay, SSE consumers; Redis makespan",
    ),
    Target(
        "one worker ≥ 8x litellm naive",
        "tp.vs_litellm",
        8.0,
        False,
        times,
        "the same figure ÷ litellm.acompletion consuming one stream in one process",
    ),
    Target(
        "one worker ≥ 50% of the plain-httpx + XADD limit",
        "tp.vs_httpx_xadd",
        0.5,
        False,
        times,
        "the same figure ÷ httpx + json.loads + pipelined XADD in one process (better of 1 and "
        "16 streams)",
    ),
    Target(
        "Redis memory per finished 1,000-token job ≤ 64 KB",
        "mem.job_bytes",
        64_000,
        True,
        _bytes,
        "MEMORY USAGE of the job hash + stream (KB = 1,000 B)",
    ),
    Target(
        "fewer Redis round trips than chunks (provider as fast as it goes)",
        "tp.round_trips_per_chunk",
        1.0,
        True,
        lambda v: num(v, 3) + " per chunk",
        "INFO total_reads_processed (all clients) ÷ chunks, saturation batch",
    ),
    Target(
        "fewer Redis round trips than chunks (500 streams at 20 chunks/s)",
        "relay.500.round_trips_per_chunk",
        1.0,
        True,
        lambda v: num(v, 2) + " per chunk",
        "the same counter over the relay run with the most streams",
    ),
]
