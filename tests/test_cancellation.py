"""The worker process's cancel watcher, against the real (embedded) Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from tokenspool import keys as k
from tokenspool.cancellation import CancelWatcher
from tokenspool.jobs import JobRequest, new_job_id
from tokenspool.store import JobStore


async def queued_job(store: JobStore) -> str:
    job_id = new_job_id()
    request = JobRequest.model_validate(
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    await store.create(job_id, request)
    return job_id


async def test_cancel_flag_set_without_a_message_wakes_only_that_job_at_the_next_check(
    store: JobStore, redis: Redis
) -> None:
    cancelled, running = await queued_job(store), await queued_job(store)
    watcher = CancelWatcher(
        redis, store.keys.cancel_channel, store.cancels_requested, check_seconds=0.05
    )
    watcher.start()
    try:
        cancelled_event = watcher.register(cancelled)
        running_event = watcher.register(running)

        # the flag alone, as when the pub/sub message was lost
        await redis.hset(store.keys.job(cancelled), k.F_CANCEL, "1")
        await asyncio.wait_for(cancelled_event.wait(), timeout=10)
        await watcher.check_now()

        assert not running_event.is_set()
    finally:
        await watcher.stop()


async def test_cancel_flags_of_many_jobs_are_read_in_one_call(
    store: JobStore, redis: Redis
) -> None:
    jobs = [await queued_job(store) for _ in range(3)]
    await redis.hset(store.keys.job(jobs[1]), k.F_CANCEL, "1")

    flags = await store.cancels_requested([*jobs, "job_missing"])

    assert flags == [False, True, False, False]
