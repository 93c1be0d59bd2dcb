"""The stream hub against the session's Valkey: one XREAD shared by many consumers, each of
which gets exactly the entries after its own position, as ``tail()`` would give it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest
from redis.asyncio import Redis

from tokenspool.connections import connect_reader
from tokenspool.errors import JobNotFoundError, StreamGoneError
from tokenspool.events import ContentDelta, JobCompleted
from tokenspool.hub import Entry, Hub, HubClosedError
from tokenspool.keys import Keys
from tokenspool.settings import Settings
from tokenspool.stack import Stack

from .helpers import wait_until
from .proxy import DroppingProxy

HubFactory = Callable[..., Awaitable[Hub]]


@pytest.fixture
def hub_keys() -> Keys:
    """A key prefix of its own, so these jobs never meet the stack's."""
    return Keys(f"hubtest-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def hub_factory(
    redis: Redis, settings: Settings, hub_keys: Keys
) -> AsyncIterator[HubFactory]:
    """Makes started hubs (reading through ``redis_url`` if given); stops them all after."""
    made: list[tuple[Hub, Redis]] = []

    async def make(*, block_ms: int = 1000, count: int = 100, redis_url: str | None = None) -> Hub:
        reader_settings = settings.model_copy(
            update={"read_block_ms": block_ms, "redis_url": redis_url or settings.redis_url}
        )
        reader = connect_reader(reader_settings)
        hub = Hub(redis, reader, keys=hub_keys, count=count, block_ms=block_ms)
        await hub.start()
        made.append((hub, reader))
        return hub

    yield make
    for hub, reader in made:
        await hub.stop()
        await reader.aclose()


class Job:
    """A job's hash and stream written the way the worker writes them (ordinals from 1)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.id = f"job_{uuid.uuid4().hex}"
        self.redis = redis
        self.keys = keys
        self.ids: list[str] = []

    async def append(self, count: int, *, terminal: bool = False) -> list[str]:
        await self.redis.hset(self.keys.job(self.id), "status", "running")
        added = []
        for i in range(count):
            last = terminal and i == count - 1
            event = (
                JobCompleted(job_id=self.id, attempt=1)
                if last
                else ContentDelta(job_id=self.id, attempt=1, text=f"t{len(self.ids)}")
            )
            fields: dict[Any, Any] = {"n": len(self.ids) + 1, **event.to_fields()}
            entry_id = await self.redis.xadd(self.keys.events(self.id), fields)
            self.ids.append(entry_id.decode())
            added.append(entry_id.decode())
        return added


async def collect(hub: Hub, job_id: str, after: str = "0") -> list[str]:
    """Every entry id a consumer after ``after`` gets, to the terminal one."""
    got: list[str] = []
    async with aclosing(hub.tail(job_id, after)) as batches:
        async for batch in batches:
            got += [entry_id.decode() for entry_id, _ in batch]
    return got


async def test_consumers_of_one_job_at_different_offsets_each_get_exactly_the_entries_after_theirs(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(count=7)  # several batches each, read from different positions
    job = Job(redis, hub_keys)
    early = await job.append(10)
    offsets = ["0", early[3], early[9], "0", early[0]]

    consumers = [asyncio.create_task(collect(hub, job.id, after)) for after in offsets]
    await job.append(30)
    await job.append(1, terminal=True)
    results = await asyncio.gather(*consumers)

    for after, got in zip(offsets, results, strict=True):
        expected = job.ids if after == "0" else job.ids[job.ids.index(after) + 1 :]
        assert got == expected


async def test_consumer_registering_while_the_hub_blocks_on_other_keys_is_served_by_an_unblock(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)  # a read that only ends early if it is unblocked
    idle, busy = Job(redis, hub_keys), Job(redis, hub_keys)
    idle_after = (await idle.append(1))[0]
    waiting = asyncio.create_task(collect(hub, idle.id, idle_after))

    async def reader_blocked() -> bool:
        if hub.reader_id is None:
            return False
        [info] = await redis.client_list(client_id=[str(hub.reader_id)])
        return "b" in info["flags"]

    await wait_until(reader_blocked)
    await busy.append(2)

    async with aclosing(hub.tail(busy.id)) as batches:
        batch: list[Entry] = await anext(batches)

    assert [entry_id.decode() for entry_id, _ in batch] == busy.ids
    assert hub.unblocks == 1  # the blocked read was woken, not waited out
    assert not waiting.done() and hub.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_reader_connection_loss_mid_stream_resumes_without_loss_or_duplicates(
    redis: Redis,
    hub_keys: Keys,
    hub_factory: HubFactory,
    stack: Stack,
    proxy_factory: Callable[[int], Awaitable[DroppingProxy]],
) -> None:
    proxy = await proxy_factory(stack.redis.port)
    hub = await hub_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0", count=4)
    job = Job(redis, hub_keys)
    got: list[str] = []
    halfway = asyncio.Event()

    async def consume() -> None:
        async with aclosing(hub.tail(job.id)) as batches:
            async for batch in batches:
                got.extend(entry_id.decode() for entry_id, _ in batch)
                if len(got) == 10:
                    halfway.set()

    consumer = asyncio.create_task(consume())
    await job.append(10)
    await halfway.wait()
    dropped = proxy.drop_all()
    await job.append(10)
    await job.append(1, terminal=True)
    await consumer

    assert dropped >= 1 and proxy.connections >= 2
    assert got == job.ids


async def test_entries_trimmed_before_a_consumer_read_them_raise_stream_gone(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(count=3)
    job = Job(redis, hub_keys)
    await job.append(3)

    async with aclosing(hub.tail(job.id)) as batches:
        first = await anext(batches)  # the consumer is busy with these meanwhile:
        await job.append(10)
        await redis.xtrim(hub_keys.events(job.id), maxlen=2, approximate=False)

        with pytest.raises(StreamGoneError, match=r"events 4\.\.11 were trimmed"):
            await anext(batches)

    assert len(first) == 3


async def test_consumer_that_disconnects_is_removed_from_the_hub_at_once(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    consumer = asyncio.create_task(collect(hub, job.id, after))

    async def registered() -> bool:
        return hub.waiting == 1

    await wait_until(registered)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer

    assert hub.waiting == 0


async def test_keys_expiring_while_a_consumer_waits_raise_job_not_found(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=100)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    consumer = asyncio.create_task(collect(hub, job.id, after))

    async def registered() -> bool:
        return hub.waiting == 1

    await wait_until(registered)
    await redis.delete(hub_keys.events(job.id), hub_keys.job(job.id))

    with pytest.raises(JobNotFoundError):
        await consumer


async def test_stopping_the_hub_fails_its_waiting_consumers(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    consumer = asyncio.create_task(collect(hub, job.id, after))

    async def registered() -> bool:
        return hub.waiting == 1

    await wait_until(registered)
    await hub.stop()

    with pytest.raises(HubClosedError):
        await consumer
