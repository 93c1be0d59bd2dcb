"""Idle workers start a queued job when woken, not when their (here: hour-long) poll comes; a
poll does not re-check the jobs already running."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from tokenspool.client import AsyncClient
from tokenspool.stack import Stack, start_stack

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


async def _watch_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_watch", {}).get("calls", 0))


async def test_a_poll_does_not_recheck_the_jobs_the_worker_is_running(sleepy_stack: Stack) -> None:
    # arq alone re-checks every running job with WATCH/EXISTS/ZSCORE on each poll; each
    # submission wakes the worker for a poll
    running = 12
    async with (
        AsyncClient(sleepy_stack.api_url) as client,
        Redis.from_url(sleepy_stack.redis.url) as redis,
    ):
        slow = [
            (await client.submit("fake-gpt", f"hold {k} [fake chunks=400 delay_ms=50]")).id
            for k in range(running)
        ]

        async def started(job_id: str) -> None:
            async for event in client.events(job_id):
                if event.type == "content.delta":
                    return

        await asyncio.wait_for(asyncio.gather(*(started(j) for j in slow)), timeout=60)
        before = await _watch_calls(redis)
        prompt = "while busy [fake chunks=3]"
        job = await client.submit("fake-gpt", prompt)
        view = await client.wait(job.id)
        after = await _watch_calls(redis)
        for job_id in slow:
            await client.cancel(job_id)
    assert view.output.content == expected("fake-gpt", prompt).text
    # the new job's enqueue and its start; not one per running job
    assert after - before <= 2, f"{after - before} WATCH calls for one new job"
