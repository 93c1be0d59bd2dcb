"""arq's worker, woken at once when a job is queued instead of only by its poll timer.

arq polls its queue every ``poll_delay`` and, at each poll, re-checks every running job; a
short poll buys pickup latency with CPU (docs/benchmarks.md). Here the API publishes the job's
id on the wake channel after each enqueue, and the worker's loop waits for either that message
or the poll delay. If a message is lost, the poll still finds the job.

The worker claims the ids it was woken for without reading the queue. The full poll (arq's
``_poll_iteration``: read the due ids, start the free ones, drop the finished tasks) runs at
start, every ``poll_delay``, and when more wake-ups are pending than ``max_woken``. A job stays
in arq's queue while it runs, so a poll reads every running id: with 2,000 running, each
``ZRANGEBYSCORE`` took 331 µs in Redis plus the worker's pass over its reply, and a poll per
wake-up made that a poll per job while 2,000 streams started.

arq's ``start_jobs`` claims each queued id on its own under WATCH (WATCH, EXISTS, ZSCORE, then
MULTI/PSETEX/EXEC: four round trips, or three to learn it runs already): with 200 streams
running and 4 polls a second, 3,200 round trips a second for nothing, and four per job started.
Here ids running in this process are skipped, and the claim is one script doing the same checks
and PSETEX atomically (``CLAIM``), so the claims of a poll go out in one pipelined round trip.
arq's accounting (its semaphore and job counter, ``run_job`` and the task per job) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq import Worker
from arq.connections import log_redis_info
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms

from tokenspool.errors import REDIS_UNREACHABLE
from tokenspool.tasks import stop_task

log = logging.getLogger("tokenspool.worker")

MAX_WOKEN = 10_000  # wake-ups held for the next claim; beyond them the worker polls instead

# arq's claim of a queued job, atomic: not in progress anywhere, still queued and due, then
# marked in progress. KEYS: in-progress key, queue; ARGV: job id, now (ms), in-progress TTL (ms).
# Returns the job's queue score, or nil. EVAL (not EVALSHA): Redis caches the compiled script by
# its SHA, and a restart that empties the cache cannot make a claim fail.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""


class WakeableWorker(Worker):
    """Runs arq's poll iteration when woken by ``wake_channel`` or after ``poll_delay``."""

    def __init__(
        self, *args: object, wake_channel: str, max_woken: int = MAX_WOKEN, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wake_channel = wake_channel
        self.max_woken = max_woken
        self._wake = asyncio.Event()
        self._woken: list[bytes] = []  # job ids named by wake-ups not yet served
        self._woken_overflow = False  # more came than max_woken: poll instead

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
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                self._woken, self._woken_overflow = [], False  # the poll finds them all
                await self._poll_iteration()
                next_poll = loop.time() + self.poll_delay_s
                while not self._woken_overflow and loop.time() < next_poll:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(next_poll):
                            await self._wake.wait()
                    self._wake.clear()
                    await self._start_woken()
        finally:
            await stop_task(listener)

    async def _start_woken(self) -> None:
        """Start the jobs the pending wake-ups name, as a poll would have (``start_jobs``)."""
        if self._woken_overflow or not self._woken:
            return
        job_ids, self._woken = self._woken, []
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.start_jobs(job_ids)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's ``start_jobs``: start every id that no worker runs yet, while this worker has
        room (``max_jobs``); waits for room as arq does."""
        pending: list[str] = []
        for raw_id in job_ids:
            job_id = raw_id.decode()
            task = self.tasks.get(job_id)
            if task is None or task.done():  # a done one may have been queued again (retry)
                pending.append(job_id)
        if len(pending) > self.max_jobs - self.job_counter:
            # more ids than room: leave out those running elsewhere first, or claims that fail
            # would take the room of ids that are free
            async with self.pool.pipeline(transaction=False) as pipe:
                for job_id in pending:
                    pipe.exists(in_progress_key_prefix + job_id)
                running = await pipe.execute()
            pending = [j for j, busy in zip(pending, running, strict=True) if not busy]
        while pending:
            await self.sem.acquire()  # arq's: wait for room
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            taken = 1
            while taken < len(pending) and self.job_counter + taken < self.max_jobs:
                if self.sem.locked():
                    break
                await self.sem.acquire()  # free: returns at once
                taken += 1
            batch, pending = pending[:taken], pending[taken:]
            self.job_counter += taken
            try:
                scores = await self._claim(batch)
            except BaseException:
                for _ in batch:
                    self._release_sem_dec_counter_on_complete()
                raise
            for job_id, score in zip(batch, scores, strict=True):
                if score is None:  # running elsewhere, finished, or not due yet
                    self._release_sem_dec_counter_on_complete()
                    continue
                t = self.loop.create_task(self.run_job(job_id, int(float(score))))
                t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = t

    async def _claim(self, job_ids: list[str]) -> list[bytes | None]:
        """``CLAIM`` each id in one round trip: its queue score, or None if not claimed."""
        now = str(timestamp_ms())
        ttl = str(int(self.in_progress_timeout_s * 1000))
        async with self.pool.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                in_progress = in_progress_key_prefix + job_id
                pipe.eval(CLAIM, 2, in_progress, self.queue_name, job_id, now, ttl)
            scores: list[bytes | None] = await pipe.execute()
        return scores

    def _woken_by(self, data: bytes | str) -> None:
        if len(self._woken) >= self.max_woken:
            self._woken_overflow = True  # bounded: the next poll reads the queue instead
        else:
            self._woken.append(data.encode() if isinstance(data, str) else data)
        self._wake.set()

    async def _listen(self) -> None:
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.wake_channel)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None:
                        self._woken_by(message["data"])
            except REDIS_UNREACHABLE as exc:
                log.warning("wake subscription lost (%s); the poll still finds jobs", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
