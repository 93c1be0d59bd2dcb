"""The stream hub against the session's Valkey: reads woken by the writers' notifications and
shared by many consumers, each of which gets exactly the entries after its own position, as
``tail()`` would give it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import pytest
from redis.asyncio import Redis

from tokenspool.connections import connect_reader
from tokenspool.errors import HubClosedError, JobNotFoundError, StreamGoneError, StreamReadError
from tokenspool.events import ContentDelta, JobCompleted
from tokenspool.hub import Hub
from tokenspool.jobs import JobRequest
from tokenspool.keys import Keys
from tokenspool.scripts import NOTIFY_MAX_BYTES
from tokenspool.settings import Settings
from tokenspool.stack import Stack
from tokenspool.store import JobStore
from tokenspool.tailer import id_tuple
from tokenspool.waits import Entry

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
    """A job's hash and stream written the way the worker writes them (ordinals from 1, and
    the last id published on the job's channel, unless ``notify=False``)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.id = f"job_{uuid.uuid4().hex}"
        self.redis = redis
        self.keys = keys
        self.ids: list[str] = []

    async def append(self, count: int, *, terminal: bool = False, notify: bool = True) -> list[str]:
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
        if notify and added:
            await self.redis.publish(self.keys.written(self.id), added[-1])
        return added


async def collect(hub: Hub, job_id: str, after: str = "0") -> list[str]:
    """Every entry id a consumer after ``after`` gets, to the terminal one."""
    got: list[str] = []
    async with aclosing(hub.tail(job_id, after)) as batches:
        async for batch in batches:
            got += [entry_id.decode() for entry_id, _ in batch]
    return got


async def waiting_consumers(
    hub: Hub, starts: list[tuple[str, str]], *, subscribed: bool = True
) -> list[asyncio.Task[list[str]]]:
    """A consumer (``collect``) of each (job id, after), returned once the hub counts them all
    as waiting and, with ``subscribed``, their jobs' channels as subscribed."""
    consumers = [asyncio.create_task(collect(hub, job_id, after)) for job_id, after in starts]

    async def all_waiting() -> bool:
        return hub.waiting == len(starts) and (not subscribed or hub.subscribed == len(starts))

    await wait_until(all_waiting)
    return consumers


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


async def test_consumer_registering_while_others_wait_gets_its_entries_without_a_sweep(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)  # no sweep within the test's timeout
    idle, busy = Job(redis, hub_keys), Job(redis, hub_keys)
    idle_after = (await idle.append(1))[0]
    [waiting] = await waiting_consumers(hub, [(idle.id, idle_after)])
    await busy.append(2)

    async with aclosing(hub.tail(busy.id)) as batches:
        first: list[Entry] = await anext(batches)  # the catch-up read
        later = await busy.append(3)  # published: the notification wakes the read
        second: list[Entry] = await anext(batches)

    assert [entry_id.decode() for entry_id, _ in first] == busy.ids[:2]
    assert [entry_id.decode() for entry_id, _ in second] == later
    assert hub.sweeps == 0 and hub.notifications >= 1
    assert not waiting.done() and hub.waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_notifications_arriving_together_each_wake_their_stream_without_a_sweep(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)  # no sweep within the test's timeout
    jobs = [Job(redis, hub_keys) for _ in range(200)]
    for job in jobs:
        await job.append(1, notify=False)
    consumers = await waiting_consumers(hub, [(job.id, job.ids[0]) for job in jobs])
    # every job's terminal entry, then all 200 notifications in one write: the listener
    # takes most of them from its buffer after one read of the socket
    for job in jobs:
        await job.append(1, terminal=True, notify=False)
    async with redis.pipeline(transaction=False) as pipe:
        for job in jobs:
            pipe.publish(hub_keys.written(job.id), job.ids[-1])
        await pipe.execute()

    assert await asyncio.gather(*consumers) == [job.ids[1:] for job in jobs]
    assert hub.notifications == len(jobs) and hub.sweeps == 0


async def test_entry_whose_notification_was_lost_is_delivered_by_the_sweep(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=200)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    consumer = asyncio.create_task(collect(hub, job.id, after))

    async def caught_up() -> bool:  # subscribed, and its catch-up read is done
        return hub.waiting == 1 and hub.subscribed == 1 and hub.reads >= 1

    await wait_until(caught_up)
    sweeps = hub.sweeps
    await job.append(2, notify=False)
    await job.append(1, terminal=True, notify=False)

    assert await consumer == job.ids[1:]
    assert hub.sweeps > sweeps


async def test_reads_name_only_the_streams_with_new_entries(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)
    quiet = [Job(redis, hub_keys) for _ in range(20)]
    waiting = await waiting_consumers(hub, [(job.id, (await job.append(1))[0]) for job in quiet])
    busy = Job(redis, hub_keys)
    reads, streams_read = hub.reads, hub.streams_read
    got: list[str] = []
    async with aclosing(hub.tail(busy.id)) as batches:
        for _ in range(10):
            await busy.append(1)
            got += [entry_id.decode() for entry_id, _ in await anext(batches)]

    assert got == busy.ids
    assert hub.reads - reads >= 1
    assert hub.streams_read - streams_read == hub.reads - reads  # the busy stream alone
    assert hub.sweeps == 0
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_start_and_cancel_publish_their_last_id_and_write_its_entries_on_the_jobs_channel(
    redis: Redis, hub_keys: Keys, settings: Settings
) -> None:
    store = JobStore(redis, settings.model_copy(update={"key_prefix": hub_keys.prefix}))
    request = JobRequest.model_validate(
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    running, queued = f"job_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"
    await store.create(running, request)
    await store.create(queued, request)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(hub_keys.written(running), hub_keys.written(queued))

        async def published() -> tuple[str, str]:
            while True:
                message = await pubsub.get_message(timeout=10)
                assert message is not None, "no message within 10 s"
                if message["type"] == "message":
                    return message["channel"].decode(), message["data"].decode()

        async def last_id(job_id: str) -> str:
            [(entry_id, _)] = await redis.xrevrange(hub_keys.events(job_id), count=1)
            return str(entry_id.decode())

        async def last_entries(job_id: str, count: int) -> str:
            """The last ``count`` entries as WRITE publishes them: id, n, t, a, d each."""
            newest = await redis.xrevrange(hub_keys.events(job_id), count=count)
            return "\n".join(
                "\n".join(v.decode() for v in (entry_id, f[b"n"], f[b"t"], f[b"a"], f[b"d"]))
                for entry_id, f in reversed(newest)
            )

        for _ in range(2):  # the two subscribe confirmations
            assert (await pubsub.get_message(timeout=10) or {}).get("type") == "subscribe"
        started = await store.start(running, "w1")
        assert await published() == (hub_keys.written(running), await last_id(running))
        await store.write(running, started.attempt, [("content.delta", '{"text":"a"}')] * 2, 1)
        assert await published() == (hub_keys.written(running), await last_entries(running, 2))
        # entries beyond scripts.NOTIFY_MAX_BYTES: the last id only, as START publishes
        big = json.dumps({"index": 0, "text": "x" * NOTIFY_MAX_BYTES})
        written = await store.write(running, started.attempt, [("content.delta", big)], 2)
        assert await published() == (hub_keys.written(running), written)
        await store.write(running, started.attempt, [("job.completed", "{}")], 3, "completed", {})
        assert await published() == (hub_keys.written(running), await last_entries(running, 1))
        assert await store.cancel(queued) == "cancelled"
        assert await published() == (hub_keys.written(queued), await last_id(queued))
    finally:
        await pubsub.aclose()


async def test_reader_connection_loss_mid_stream_resumes_without_loss_or_duplicates(
    redis: Redis,
    hub_keys: Keys,
    hub_factory: HubFactory,
    stack: Stack,
    proxy_factory: Callable[[int], Awaitable[DroppingProxy]],
) -> None:
    proxy = await proxy_factory(stack.redis.port)
    # no sweep within the test: what is lost while the connections are down comes back by
    # the reads' retry and the resubscription's catch-up
    hub = await hub_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0", count=4, block_ms=60_000)
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

    assert dropped >= 2 and proxy.connections >= 4  # the reader's and the pub/sub's, twice
    assert got == job.ids
    assert hub.sweeps == 0


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
    [consumer] = await waiting_consumers(hub, [(job.id, after)], subscribed=False)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer

    assert hub.waiting == 0

    async def unsubscribed() -> bool:
        return hub.subscribed == 0

    await wait_until(unsubscribed)


async def test_keys_expiring_while_a_consumer_waits_raise_job_not_found(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=100)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    [consumer] = await waiting_consumers(hub, [(job.id, after)], subscribed=False)
    await redis.delete(hub_keys.events(job.id), hub_keys.job(job.id))

    with pytest.raises(JobNotFoundError):
        await consumer


async def test_stopping_the_hub_fails_its_waiting_consumers(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)
    job = Job(redis, hub_keys)
    after = (await job.append(1))[0]
    [consumer] = await waiting_consumers(hub, [(job.id, after)], subscribed=False)
    await hub.stop()

    with pytest.raises(HubClosedError):
        await consumer


async def test_a_stream_redis_refuses_to_read_fails_only_its_own_consumers(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory
) -> None:
    hub = await hub_factory(block_ms=60_000)
    good, bad = Job(redis, hub_keys), Job(redis, hub_keys)
    good_after = (await good.append(1))[0]
    bad_after = (await bad.append(1))[0]
    good_consumer, bad_consumer = await waiting_consumers(
        hub, [(good.id, good_after), (bad.id, bad_after)]
    )
    # the bad job's events key now holds a string: XREAD over both answers WRONGTYPE
    await redis.delete(hub_keys.events(bad.id))
    await redis.set(hub_keys.events(bad.id), "not a stream")
    await redis.publish(hub_keys.written(bad.id), "9999999999999-0")
    await good.append(2)
    await good.append(1, terminal=True)

    assert await asyncio.wait_for(good_consumer, timeout=30) == good.ids[1:]
    with pytest.raises(StreamReadError, match="WRONGTYPE"):
        await asyncio.wait_for(bad_consumer, timeout=30)


async def started_job(redis: Redis, hub_keys: Keys, settings: Settings) -> tuple[JobStore, str]:
    """A job started by worker ``w1`` through the real scripts, under the hub's key prefix."""
    store = JobStore(redis, settings.model_copy(update={"key_prefix": hub_keys.prefix}))
    job_id = f"job_{uuid.uuid4().hex}"
    request = JobRequest.model_validate(
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    await store.create(job_id, request)
    assert (await store.start(job_id, "w1")).attempt == 1
    return store, job_id


async def stream_ids(redis: Redis, hub_keys: Keys, job_id: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(hub_keys.events(job_id))]


async def settle(hub: Hub, redis: Redis, hub_keys: Keys, job_id: str, consumers: int) -> None:
    """Wait until the ``consumers`` of ``job_id`` all wait after its last entry, with the
    reads of their first waits and of the job's SUBSCRIBE sent (nothing left due)."""
    last = (await stream_ids(redis, hub_keys, job_id))[-1]

    async def settled() -> bool:
        return (
            hub.catch_ups == consumers + 1
            and not hub._due
            and hub.waiting == consumers
            and all(w.position == id_tuple(last) for s in hub._streams.values() for w in s.waiters)
        )

    await wait_until(settled)


async def write_while_consumers_keep_up(
    hub: Hub, redis: Redis, hub_keys: Keys, store: JobStore, job_id: str, consumers: int
) -> None:
    """Ten writes of three deltas each, every one after the ``consumers`` have all caught up
    with the one before, then the terminal event: 31 entries."""
    for seq in range(1, 11):
        delta = ContentDelta(job_id=job_id, attempt=1, text=f"t{seq}")
        await store.write(job_id, 1, [("content.delta", delta.model_dump_json())] * 3, seq)
        await settle(hub, redis, hub_keys, job_id, consumers)
    done = JobCompleted(job_id=job_id, attempt=1)
    await store.write(job_id, 1, [("job.completed", done.model_dump_json())], 11, "completed")


async def test_caught_up_consumers_get_written_entries_from_the_notification_without_a_read(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory, settings: Settings
) -> None:
    hub = await hub_factory(block_ms=60_000)  # no sweep within the test's timeout
    store, job_id = await started_job(redis, hub_keys, settings)
    consumers = await waiting_consumers(hub, [(job_id, "0"), (job_id, "0")], subscribed=False)
    await settle(hub, redis, hub_keys, job_id, 2)
    reads = hub.reads
    await write_while_consumers_keep_up(hub, redis, hub_keys, store, job_id, 2)
    expected = await stream_ids(redis, hub_keys, job_id)
    assert [await c for c in consumers] == [expected, expected]
    assert hub.reads == reads  # 31 entries, each consumer handed every one, no XREAD
    assert hub.handed_over == 2 * 31


async def test_entries_whose_notification_was_lost_reach_consumers_before_later_notified_ones(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory, settings: Settings
) -> None:
    hub = await hub_factory(block_ms=60_000)
    store, job_id = await started_job(redis, hub_keys, settings)
    [consumer] = await waiting_consumers(hub, [(job_id, "0")])
    await settle(hub, redis, hub_keys, job_id, 1)
    await store.write(job_id, 1, [("content.delta", '{"index":0,"text":"a"}')], 1)
    await settle(hub, redis, hub_keys, job_id, 1)
    assert hub.handed_over == 1
    # an entry appended as the scripts append, its notification lost
    n = await redis.hincrby(hub_keys.job(job_id), "n", 1)
    fields = {"n": n, "t": "content.delta", "a": "1", "d": '{"index":0,"text":"b"}'}
    await redis.xadd(hub_keys.events(job_id), fields)
    await store.write(job_id, 1, [("job.completed", "{}")], 2, "completed")

    assert await consumer == await stream_ids(redis, hub_keys, job_id)  # no gap, no error
    assert hub.handed_over == 1  # the later notification skipped an ordinal: read instead


async def test_a_consumer_that_pushes_relays_hand_overs_without_waking_and_gets_each_entry_once(
    redis: Redis, hub_keys: Keys, hub_factory: HubFactory, settings: Settings
) -> None:
    hub = await hub_factory(block_ms=60_000)
    store, job_id = await started_job(redis, hub_keys, settings)
    got: dict[str, list[tuple[str, str]]] = {"all": [], "every other": []}  # (entry id, how)

    def pusher(name: str) -> Callable[[list[Entry]], bool]:
        offers = 0

        def push(batch: list[Entry]) -> bool:
            nonlocal offers
            offers += 1
            if name == "every other" and offers % 2:
                return False  # declined: the consumer's task gets these
            got[name] += [(entry_id.decode(), "pushed") for entry_id, _ in batch]
            return True

        return push

    async def consume(name: str) -> None:
        async with aclosing(hub.tail(job_id, "0", push=pusher(name))) as batches:
            async for batch in batches:
                got[name] += [(entry_id.decode(), "yielded") for entry_id, _ in batch]

    consumers = [asyncio.create_task(consume(name)) for name in got]
    await settle(hub, redis, hub_keys, job_id, 2)
    caught_up = len(await stream_ids(redis, hub_keys, job_id))  # read, not notified
    await write_while_consumers_keep_up(hub, redis, hub_keys, store, job_id, 2)
    async with asyncio.timeout(10):
        await asyncio.gather(*consumers)

    expected = await stream_ids(redis, hub_keys, job_id)
    for name, entries in got.items():
        assert [entry_id for entry_id, _ in entries] == expected, name  # each once, in order
        assert entries[-1][1] == "yielded", name  # the terminal entry ends the generator
    # 10 writes of 3 entries each: all pushed, or every other one
    assert {how for _, how in got["all"][caught_up:-1]} == {"pushed"}
    hows = [how for _, how in got["every other"][caught_up:-1]]
    assert hows.count("pushed") == hows.count("yielded") == 15
    assert hub.pushed == 30 + 15
