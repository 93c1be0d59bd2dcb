"""arq's worker, woken at once when a job is queued instead of only by its poll timer.

arq polls its queue every ``poll_delay`` and, at each poll, re-checks every running job; a
short poll buys pickup latency with CPU (docs/benchmarks.md). Here the API publishes on the
wake channel after each enqueue, and the worker's loop waits for either that message or the
(now long) poll delay. If a message is lost, the poll still finds the job. A poll skips the jobs
already running, so its cost does not grow with the streams a worker holds.
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
        # arq's poll reads every job id in the queue, the running ones included (a job leaves
        # the queue when it ends), and checks each with WATCH, EXISTS and ZSCORE: three round
        # trips per running job per poll, so a worker holding 2,000 streams spent its time
        # re-checking them and a new job waited behind them. Here the jobs this worker runs
        # are skipped, and those running elsewhere are found in one pipelined round trip;
        # arq's own check still guards the rest.
        fresh = [j for j in job_ids if j.decode() not in self.tasks]
        if not fresh:
            return
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in fresh:
                pipe.exists(in_progress_key_prefix + job_id.decode())
            running = await pipe.execute()
        await super().start_jobs([j for j, busy in zip(fresh, running, strict=True) if not busy])

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
