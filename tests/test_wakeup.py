"""Idle workers start a queued job when woken, not when their (here: hour-long) poll comes;
and a poll does not re-claim the queued jobs that already run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from arq.worker import func

from tokenspool.client import AsyncClient
from tokenspool.connections import close, connect, job_deserializer, job_serializer
from tokenspool.jobs import new_job_id
from tokenspool.settings import Settings
from tokenspool.stack import Stack, start_stack
from worker.wakeable import WakeableWorker

from .conftest import stack_dir
from .helpers import expected


@pytest.fixture(scope="module")
def sleepy_stack() -> Iterator[Stack]:
    s = start_stack(
        workers=1,
        extra_env={"TOKENSPOOL_POLL_DELAY_SECONDS": "3600"},
        workdir=stack_dir("sleepy-stack"),
    )
    try:
        s.wait_ready()  # the worker's first poll has run; the next one is an hour away
        yield s
    finally:
        s.stop()


async def test_queued_job_starts_on_the_wake_up_message_not_the_poll(sleepy_stack: Stack) -> None:
    prompt = "wake up [fake chunks=4]"
    async with AsyncClient(sleepy_stack.api_url) as client:
        for _ in range(3):  # every job, not just the first after start-up
            job = await client.submit("fake-gpt", prompt)
            view = await client.wait(job.id)
            assert (
                view.status == "completed"
                and view.output.content == expected("fake-gpt", prompt).text
            )


async def test_poll_skips_queued_jobs_already_running_without_claiming_them_again(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        await asyncio.wait_for(release.wait(), timeout=30)

    queue = f"test-queue-{new_job_id()}"
    redis = connect(settings)
    workers = [
        WakeableWorker(
            functions=[func(hold, name="hold")],
            wake_channel=f"{queue}:wake",
            redis_pool=redis,
            queue_name=queue,
            poll_delay=3600,
            handle_signals=False,
            keep_result=0,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
        )
        for _ in range(2)
    ]
    here, elsewhere = workers
    try:
        jobs = [await redis.enqueue_job("hold", _queue_name=queue) for _ in range(3)]
        ids = [job.job_id.encode() for job in jobs if job is not None]
        await here.start_jobs(ids)
        assert sorted(here.tasks) == sorted(i.decode() for i in ids)

        caplog.set_level(logging.DEBUG, logger="arq.worker")
        await here.start_jobs(ids)  # a later poll: they are still in the queue
        await elsewhere.start_jobs(ids)  # another worker's poll

        assert sorted(here.tasks) == sorted(i.decode() for i in ids) and not elsewhere.tasks
        assert "already running elsewhere" not in caplog.text  # no per-job WATCH dance
    finally:
        release.set()
        await asyncio.gather(*here.tasks.values(), return_exceptions=True)
        await redis.delete(queue)
        await close(redis)


async def test_two_workers_polling_one_burst_start_each_job_exactly_once(
    settings: Settings,
) -> None:
    # the poll filter reads in-progress keys before arq's claim; both polls run at once
    release = asyncio.Event()

    async def hold(ctx: dict[str, Any]) -> None:
        await asyncio.wait_for(release.wait(), timeout=30)

    queue = f"test-queue-{new_job_id()}"
    redis = connect(settings)
    workers = [
        WakeableWorker(
            functions=[func(hold, name="hold")],
            wake_channel=f"{queue}:wake",
            redis_pool=redis,
            queue_name=queue,
            poll_delay=3600,
            handle_signals=False,
            keep_result=0,
            max_jobs=500,
            job_serializer=job_serializer,
            job_deserializer=job_deserializer,
        )
        for _ in range(2)
    ]
    try:
        jobs = [await redis.enqueue_job("hold", _queue_name=queue) for _ in range(150)]
        ids = [job.job_id.encode() for job in jobs if job is not None]
        await asyncio.gather(*(w.start_jobs(ids) for w in workers))
        claimed = [job_id for w in workers for job_id in w.tasks]
        assert sorted(claimed) == sorted(i.decode() for i in ids)  # all, none twice
    finally:
        release.set()
        for w in workers:
            await asyncio.gather(*w.tasks.values(), return_exceptions=True)
        await redis.delete(queue)
        await close(redis)
