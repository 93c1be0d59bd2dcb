"""arq's worker, woken at once when a job is queued instead of only by its poll timer.

arq polls its queue every ``poll_delay`` and, at each poll, re-checks every running job; a
short poll buys pickup latency with CPU (docs/benchmarks.md). Here the API publishes on the
wake channel after each enqueue, and the worker's loop waits for either that message or the
(now long) poll delay. If a message is lost, the poll still finds the job.

A job stays in arq's queue while it runs, and arq's ``start_jobs`` checks each queued id with
four round trips (WATCH, EXISTS, ZSCORE, UNWATCH) before it sees the job is in progress: with
200 streams running and 4 polls a second, 3,200 round trips a second for nothing. Ids that run
in this process, or whose in-progress key exists, are dropped first (one pipelined EXISTS for
all of them); arq still claims the others under WATCH, so the filter only saves work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq import Worker
from arq.connections import log_redis_info
from arq.constants import in_progress_key_prefix
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenspool.tasks import stop_task

log = logging.getLogger("tokenspool.worker")


class WakeableWorker(Worker):
    """Runs arq's poll iteration when woken by ``wake_channel`` or after ``poll_delay``."""

    def __init__(self, *args: object, wake_channel: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wake_channel = wake_channel
        self._wake = asyncio.Event()

    async def main(self) -> None:
        # arq's own main() with the poll timer replaced (the pool is always passed in)
        log.info(
            "Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions)
        )
        await log_redis_info(self.pool, log.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        listener = asyncio.create_task(self._listen(), name="wake-listener")
        try:
            while True:
                self._wake.clear()
                await self._poll_iteration()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_delay_s):
                        await self._wake.wait()
        finally:
            await stop_task(listener)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        candidates = []
        for job_id in job_ids:
            task = self.tasks.get(job_id.decode())
            if task is None or task.done():  # a done one may have been queued again (retry)
                candidates.append(job_id)
        if candidates:
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in candidates:
                    pipe.exists(in_progress_key_prefix + job_id.decode())
                running = await pipe.execute()
            candidates = [j for j, busy in zip(candidates, running, strict=True) if not busy]
        await super().start_jobs(candidates)

    async def _listen(self) -> None:
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.wake_channel)
                while True:
                    if await pubsub.get_message(timeout=5.0) is not None:
                        self._wake.set()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("wake subscription lost (%s); the poll still finds jobs", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
