"""Runs the scenario groups in order, each isolated from the others' failures."""

from __future__ import annotations

import asyncio
import sys
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import uvloop

from . import baselines, footprint, latency, procstat, redis_limits, relay, throughput
from .context import Context
from .results import GroupResult


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    module: ModuleType

    @property
    def run(self) -> Callable[[Context, GroupResult], Coroutine[Any, Any, None]]:
        fn: Callable[[Context, GroupResult], Coroutine[Any, Any, None]] = self.module.run
        return fn


# in this order: later groups compute their ratios from the baselines measured first
GROUPS = [
    Group("baselines", "Baselines: consuming the provider directly", baselines),
    Group("redis", "The limit: raw Redis on the same server", redis_limits),
    Group("latency", "tokenspool end to end: pickup and TTFT", latency),
    Group("relay", "tokenspool end to end: relay latency vs concurrency", relay),
    Group("throughput", "tokenspool end to end: throughput, cost per chunk, scaling", throughput),
    Group("footprint", "tokenspool end to end: memory", footprint),
]
NAMES = [g.name for g in GROUPS]


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def run(ctx: Context, names: Sequence[str]) -> list[tuple[GroupResult, str | None]]:
    """Run the named groups (in the canonical order); a failing group is reported, not fatal."""
    out = []
    for group in GROUPS:
        if group.name not in names:
            continue
        result = GroupResult(group.name, group.title)
        log(f"{group.name}: {group.title}")
        started = time.monotonic()
        others = procstat.OtherLoad()
        others.start()
        try:
            # uvloop, as in tokenspool's worker and API (uvicorn picks it): the bench's clients
            # share the cores with what they measure, and the stock loop costs more per read
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(group.run(ctx, result))
        except Exception as exc:  # supervising loop: record the failure, run the next group
            result.error = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        result.seconds = time.monotonic() - started
        result.other_cores = others.stop()
        log(
            f"{group.name}: {'failed' if result.error else 'done'} in {result.seconds:.0f} s "
            f"(other processes on the machine: {result.other_cores:.2f} cores)"
        )
        out.append((result, group.module.__doc__))
    return out
