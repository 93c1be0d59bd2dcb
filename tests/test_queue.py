"""Submitting a job writes arq's job the way arq's own ``enqueue_job`` does, in the same round
trip as the job's record, and wakes the workers."""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis
from arq.jobs import Job

from tokenspool import queue
from tokenspool.connections import held, job_deserializer, transaction
from tokenspool.jobs import JobPayload, JobRequest, new_job_id
from tokenspool.settings import Settings
from tokenspool.store import JobStore


async def test_a_queued_job_is_stored_as_arqs_enqueue_job_stores_it(
    redis: ArqRedis, settings: Settings
) -> None:
    # a queue of its own: the stack's workers never take these jobs
    store = JobStore(redis, settings.model_copy(update={"queue_name": f"q-{new_job_id()}"}))
    request = JobRequest(model="fake-gpt", messages=[{"role": "user", "content": "hi"}])
    ours, theirs = new_job_id(), new_job_id()
    payload = JobPayload(job_id=ours, request=request)
    pubsub = redis.pubsub()
    await pubsub.subscribe(store.keys.wake_channel)
    try:
        enqueue = queue.enqueue_command(redis, store, ours, payload)
        async with held(redis) as conn:
            added = await transaction(conn, [enqueue, enqueue])  # the same id again
        await redis.enqueue_job(
            queue.RUN_JOB,
            payload.model_dump(mode="json", exclude_none=True),
            _job_id=theirs,
            _queue_name=store.settings.queue_name,
        )
        got = [
            await Job(
                j, redis, _queue_name=store.settings.queue_name, _deserializer=job_deserializer
            ).info()
            for j in (ours, theirs)
        ]
        async with asyncio.timeout(10):
            woken = None
            while woken is None or woken["type"] != "message":
                woken = await pubsub.get_message(timeout=5)
        ttls = [await redis.pttl(f"arq:job:{j}") for j in (ours, theirs)]
    finally:
        await pubsub.aclose()
        await redis.delete(store.settings.queue_name, f"arq:job:{ours}", f"arq:job:{theirs}")

    assert added == [1, 0]
    mine, arqs = got
    assert mine is not None and arqs is not None
    assert (mine.function, mine.args, mine.kwargs, mine.job_try) == (
        arqs.function,
        arqs.args,
        arqs.kwargs,
        arqs.job_try,
    )
    assert abs(mine.score - mine.enqueue_time.timestamp() * 1000) <= 1  # due at once, as arq
    assert abs(ttls[0] - ttls[1]) < 5_000  # arq's expiry
    assert woken["data"] == ours.encode()
