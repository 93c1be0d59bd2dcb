"""Idle workers start a queued job when woken, not when their (here: hour-long) poll comes;
and a poll does not re-claim the queued jobs that already run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from arq.worker import func

from tokenspool.client import AsyncClient
from tokenspool.connections import close, connect, job_deserializer, job_serializer
from tokenspool.jobs import new_job_id
from tokenspool.settings import Settings
from tokenspool.stack import Stack, start_stack
from tokenspool.tasks import stop_task
from worker.wakeable import WakeableWorker

from .conftest import stack_dir
from .helpers import expected, wait_until


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


class HoldingWorkers:
    """Two arq workers on a queue of their own whose jobs wait until ``release`` is set."""

    def __init__(self, settings: Settings, max_jobs: tuple[int, int] = (500, 500)) -> None:
        self.release = asyncio.Event()
        self.queue = f"test-queue-{new_job_id()}"
        self.redis = connect(settings)

        async def hold(ctx: dict[str, Any]) -> None:
            await asyncio.wait_for(self.release.wait(), timeout=30)

        self.workers = [
            WakeableWorker(
                functions=[func(hold, name="hold")],
                wake_channel=f"{self.queue}:wake",
                redis_pool=self.redis,
                queue_name=self.queue,
                poll_delay=3600,
                handle_signals=False,
                keep_result=0,
                max_jobs=room,
                job_serializer=job_serializer,
                job_deserializer=job_deserializer,
            )
            for room in max_jobs
        ]

    async def enqueue(self, count: int, **options: Any) -> list[bytes]:
        jobs = [
            await self.redis.enqueue_job("hold", _queue_name=self.queue, **options)
            for _ in range(count)
        ]
        return [job.job_id.encode() for job in jobs if job is not None]

    async def aclose(self) -> None:
        self.release.set()
        for worker in self.workers:
            await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        await self.redis.delete(self.queue)
        await close(self.redis)


@pytest.fixture
async def holding(settings: Settings) -> AsyncIterator[HoldingWorkers]:
    workers = HoldingWorkers(settings)
    try:
        yield workers
    finally:
        await workers.aclose()


async def test_poll_skips_queued_jobs_already_running_without_claiming_them_again(
    holding: HoldingWorkers, caplog: pytest.LogCaptureFixture
) -> None:
    here, elsewhere = holding.workers
    ids = await holding.enqueue(3)
    await here.start_jobs(ids)
    assert sorted(here.tasks) == sorted(i.decode() for i in ids)

    caplog.set_level(logging.DEBUG, logger="arq.worker")
    await here.start_jobs(ids)  # a later poll: they are still in the queue
    await elsewhere.start_jobs(ids)  # another worker's poll

    assert sorted(here.tasks) == sorted(i.decode() for i in ids) and not elsewhere.tasks
    assert "already running elsewhere" not in caplog.text  # no per-job WATCH dance


async def test_two_workers_polling_one_burst_start_each_job_exactly_once(
    holding: HoldingWorkers,
) -> None:
    # the poll filter reads in-progress keys before arq's claim; both polls run at once
    ids = await holding.enqueue(150)
    await asyncio.gather(*(w.start_jobs(ids) for w in holding.workers))
    claimed = [job_id for w in holding.workers for job_id in w.tasks]
    assert sorted(claimed) == sorted(i.decode() for i in ids)  # all, none twice


async def test_a_worker_with_room_for_two_starts_the_two_free_jobs_among_many_running_elsewhere(
    settings: Settings,
) -> None:
    workers = HoldingWorkers(settings, max_jobs=(500, 2))
    try:
        here, small = workers.workers
        busy = await workers.enqueue(20)
        await here.start_jobs(busy)
        free = await workers.enqueue(2)

        await small.start_jobs(busy + free)

        assert sorted(small.tasks) == sorted(i.decode() for i in free)
        assert small.job_counter == 2 and len(here.tasks) == 20
    finally:
        await workers.aclose()


async def test_a_job_deferred_to_later_is_not_started_before_it_is_due(
    holding: HoldingWorkers,
) -> None:
    here, _ = holding.workers
    later = await holding.enqueue(1, _defer_by=60)
    now = await holding.enqueue(1)

    await here.start_jobs(later + now)

    assert sorted(here.tasks) == [now[0].decode()]
    assert here.job_counter == 1


async def test_a_wake_up_starts_the_job_it_names_without_reading_the_queue(
    holding: HoldingWorkers,
) -> None:
    here, _ = holding.workers
    polls: list[int] = []
    poll = here._poll_iteration

    async def counted_poll() -> None:
        polls.append(len(here.tasks))
        await poll()

    here._poll_iteration = counted_poll  # type: ignore[method-assign]
    running = asyncio.create_task(here.main())
    try:
        await wait_until(lambda: _true(polls))  # the poll at start (poll_delay: an hour)
        ids = await holding.enqueue(3)
        for job_id in ids:  # what the API's enqueue publishes
            await holding.redis.publish(here.wake_channel, job_id)

        await wait_until(lambda: _true(len(here.tasks) == 3))

        assert sorted(here.tasks) == sorted(i.decode() for i in ids)
        assert polls == [0]  # started from the messages; the queue was not read again
    finally:
        await stop_task(running)


async def test_more_pending_wake_ups_than_max_woken_leave_the_jobs_to_a_poll(
    holding: HoldingWorkers,
) -> None:
    here, _ = holding.workers
    here.max_woken = 2
    ids = await holding.enqueue(3)
    for job_id in ids:
        here._woken_by(job_id)

    await here._start_woken()
    assert not here.tasks and len(here._woken) == 2  # bounded, and not served

    await here._poll_iteration()
    assert sorted(here.tasks) == sorted(i.decode() for i in ids)


async def _true(value: object) -> bool:
    return bool(value)
