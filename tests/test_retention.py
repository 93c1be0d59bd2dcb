"""A stream capped by MAXLEN: readers that fall behind the cap are told, never silently skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from tokenspool import tail
from tokenspool.client import AsyncClient
from tokenspool.errors import StreamGoneError
from tokenspool.stack import Stack, start_stack

from .conftest import stack_dir
from .helpers import wait_until


@pytest.fixture(scope="module")
def capped_stack() -> Iterator[Stack]:
    workdir = stack_dir("capped-stack")
    s = start_stack(workers=1, extra_env={"TOKENSPOOL_STREAM_MAXLEN": "100"}, workdir=workdir)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def capped(capped_stack: Stack) -> AsyncIterator[tuple[AsyncClient, Redis, str]]:
    """A finished job of 400 chunks whose stream was trimmed to about 100 entries."""
    redis = Redis.from_url(capped_stack.redis.url)
    async with AsyncClient(capped_stack.api_url) as client:
        job = await client.submit("fake-gpt", "long enough to trim [fake chunks=400]")

        async def finished() -> bool:
            return (await client.get(job.id)).status == "completed"

        await wait_until(finished, timeout=30)
        try:
            yield client, redis, job.id
        finally:
            await redis.aclose()


async def test_offset_older_than_the_retained_events_is_410(
    capped_stack: Stack, capped: tuple[AsyncClient, Redis, str]
) -> None:
    _, redis, job_id = capped
    newest = [
        i.decode() for i, _ in await redis.xrevrange(f"tokenspool:{{{job_id}}}:events", count=3)
    ]

    async with httpx.AsyncClient(base_url=capped_stack.api_url) as http:
        gone = await http.get(f"/v1/jobs/{job_id}/events", params={"after": "0"})
        kept = await http.get(f"/v1/jobs/{job_id}/events", params={"after": newest[2]})

    assert gone.status_code == 410 and "were trimmed" in gone.json()["detail"]
    assert kept.status_code == 200 and kept.text.count("event: ") == 2


async def test_client_reading_a_trimmed_stream_gets_stream_gone(
    capped: tuple[AsyncClient, Redis, str],
) -> None:
    client, _, job_id = capped

    with pytest.raises(StreamGoneError, match="trimmed"):
        async for _ in client.events(job_id):
            pass


async def test_redis_tail_detects_trimmed_events_by_their_ordinal(
    capped: tuple[AsyncClient, Redis, str],
) -> None:
    _, redis, job_id = capped

    with pytest.raises(StreamGoneError, match="trimmed"):
        async for _ in tail(redis, job_id, "0"):
            pass


async def test_redis_tail_from_a_retained_offset_reads_to_the_end(
    capped: tuple[AsyncClient, Redis, str],
) -> None:
    _, redis, job_id = capped
    entries = await redis.xrange(f"tokenspool:{{{job_id}}}:events", count=2)
    start = entries[1][0].decode()  # the second retained entry: nothing before it is needed

    events = [e async for e in tail(redis, job_id, start)]

    assert events[-1].type == "job.completed"
    assert len(events) == await redis.xlen(f"tokenspool:{{{job_id}}}:events") - 2
