"""Event-loop lag of the bench process: the error bound of its own receive timestamps."""

from __future__ import annotations

import asyncio
import time

from tokenspool.tasks import stop_task

from .stats import Summary

TICK = 0.01


class LoopLag:
    """Samples how late a 10 ms sleep wakes up while the bench is measuring."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopLag:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            self.samples.append(time.perf_counter() - before - TICK)

    def summary(self) -> Summary:
        return Summary.of(max(0.0, s) for s in self.samples)
