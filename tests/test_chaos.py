"""Long fault runs (``make chaos``): Redis restarts under load and many resuming consumers."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from tokenspool.client import AsyncClient
from tokenspool.embedded import RedisServer
from tokenspool.stack import start_stack

from .conftest import ARTIFACTS, stack_dir
from .helpers import (
    Follower,
    drop_and_resume_consumer,
    expected,
    replace_worker,
    wait_until,
)

pytestmark = pytest.mark.chaos


async def test_redis_restart_with_aof_loses_no_acknowledged_event_and_jobs_finish() -> None:
    workdir = stack_dir("chaos-aof")
    stack = start_stack(
        workers=2, appendonly=True, workdir=workdir, extra_env={"TOKENSPOOL_READ_BLOCK_MS": "1000"}
    )
    try:
        prompts = [f"aof {i} [fake chunks=150 delay_ms=20]" for i in range(6)]
        async with AsyncClient(stack.api_url, read_timeout=30, max_reconnects=100) as client:
            jobs = [await client.submit("fake-gpt", p) for p in prompts]
            seen: dict[str, list] = {j.id: [] for j in jobs}

            async def follow(job_id: str) -> None:
                async for event in client.events(job_id):
                    seen[job_id].append(event)

            followers = [asyncio.create_task(follow(j.id)) for j in jobs]

            async def mid_way() -> bool:  # restart Redis while every stream is mid-way
                return all(sum(e.type == "content.delta" for e in v) >= 10 for v in seen.values())

            await wait_until(mid_way, timeout=30)
            before = {k: [e.event_id for e in v] for k, v in seen.items()}
            stack.redis.stop()
            stack.redis = RedisServer(
                stack.redis.port, appendonly=True, data_dir=stack.redis.data_dir
            ).start()
            await asyncio.wait_for(asyncio.gather(*followers), 90)

        for job, prompt in zip(jobs, prompts, strict=True):
            ids = [e.event_id for e in seen[job.id]]
            assert ids[: len(before[job.id])] == before[job.id]  # acknowledged events kept
            assert len(ids) == len(set(ids))
            text = "".join(
                e.text
                for e in seen[job.id]
                if e.type == "content.delta" and e.attempt == seen[job.id][-1].attempt
            )
            assert seen[job.id][-1].type == "job.completed"
            assert text == expected("fake-gpt", prompt).text
    finally:
        stack.stop()


async def test_200_consumers_dropping_at_random_points_reconstruct_the_exact_output(
    stack, client: AsyncClient, http: httpx.AsyncClient
) -> None:
    prompt = "two hundred [fake chunks=200 delay_ms=5]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)
    rng = random.Random(11)

    results = await asyncio.gather(
        *(drop_and_resume_consumer(http, job.id, rng, 60) for _ in range(200))
    )

    assert sum(r == want.text for r in results) == 200


async def test_killed_worker_fails_over_in_under_5_seconds_every_time(fault_stack, fclient):
    import signal
    import time

    failovers = []
    for i in range(3):
        prompt = f"failover {i} [fake chunks=300 delay_ms=20]"
        job = await fclient.submit("fake-gpt", prompt)
        follower = Follower(fclient, job.id)
        started = await follower.until(lambda e: e.type == "job.started")
        await follower.until(lambda e: e.type == "content.delta")
        killed = time.monotonic()  # measured from just before the kill
        victim = replace_worker(fault_stack, started.worker, signal.SIGKILL)
        assert victim.proc is not None and victim.proc.wait(5) == -signal.SIGKILL
        await follower.until(lambda e: e.type == "job.started" and e.attempt == 2)
        failovers.append(time.monotonic() - killed)
        events = await follower.done(within=60)
        assert events[-1].type == "job.completed"
        assert (
            "".join(e.text for e in events if e.type == "content.delta" and e.attempt == 2)
            == expected("fake-gpt", prompt).text
        )
        fault_stack.wait_ready()

    (ARTIFACTS / "failover-seconds.txt").write_text(" ".join(f"{f:.3f}" for f in failovers))
    assert max(failovers) < 5.0, failovers


async def test_cancel_closes_the_provider_connection_within_500_ms(fault_stack, fclient):
    import time

    from .helpers import fake_requests

    closes = []
    for i in range(3):
        prompt = f"cancel timing {i} [fake chunks=500 delay_ms=20]"
        job = await fclient.submit("fake-gpt", prompt)
        follower = Follower(fclient, job.id)
        await follower.until(lambda e: e.type == "content.delta")
        requested = time.time()
        await fclient.cancel(job.id)
        events = await follower.done()

        async def closed(prompt: str = prompt) -> float | None:
            log = [r for r in await fake_requests(fault_stack.fake_url) if r["prompt"] == prompt]
            return log[0]["disconnected_at"] if log and log[0]["disconnected_at"] else None

        closes.append(await wait_until(closed, timeout=10) - requested)
        assert events[-1].type == "job.cancelled"

    (ARTIFACTS / "cancel-close-seconds.txt").write_text(" ".join(f"{c:.3f}" for c in closes))
    assert max(closes) < 0.5, closes
