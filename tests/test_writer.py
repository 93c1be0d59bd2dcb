"""The process's Redis writer and the publishers on it, against the real (embedded) Redis.

Every publisher keeps its own order, fence and retries; the writer sends what all of them have
pending as one pipelined round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from tokenspool import scripts
from tokenspool.connections import close, connect, pack
from tokenspool.embedded import free_port
from tokenspool.errors import FencedError
from tokenspool.events import ContentDelta, JobCompleted, as_text
from tokenspool.jobs import JobRequest, new_job_id
from tokenspool.publisher import Publisher, PublishError
from tokenspool.settings import Settings
from tokenspool.store import JobStore
from tokenspool.writer import Writer

from .helpers import wait_until
from .proxy import DroppingProxy

MakeWriter = Callable[..., Awaitable[Writer]]


@pytest.fixture
async def make_writer() -> AsyncIterator[MakeWriter]:
    """Starts writers on a store (``Writer``'s arguments); stops them all afterwards."""
    made: list[Writer] = []

    async def make(store: JobStore, redis: Redis | None = None, **options: Any) -> Writer:
        writer = Writer(store, redis, **options)
        writer.start()
        made.append(writer)
        return writer

    yield make
    for writer in made:
        await writer.stop()


async def running_job(store: JobStore) -> str:
    job_id = new_job_id()
    request = JobRequest.model_validate(
        {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    await store.create(job_id, request)
    started = await store.start(job_id, "test-worker")
    assert started.status == "started" and started.attempt == 1
    return job_id


def delta(job_id: str, text: str) -> ContentDelta:
    return ContentDelta(job_id=job_id, attempt=1, text=text)


async def sent_again(pub: Publisher) -> None:
    """Wait until the publisher's first call and at least one retry of its next went out."""

    async def retried() -> bool:
        return pub.round_trips >= 3

    await wait_until(retried, timeout=10)


def redis_port_of(settings: Settings) -> int:
    return int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])


async def texts(redis: Redis, store: JobStore, job_id: str) -> list[str]:
    entries = await redis.xrange(store.keys.events(job_id))
    return [as_text(fields[b"d"]) for _, fields in entries if fields[b"t"] == b"content.delta"]


async def test_pending_writes_of_many_jobs_go_out_in_one_round_trip(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    await store.redis.script_load(scripts.WRITE)  # else the first round trip loads it
    jobs = [await running_job(store) for _ in range(10)]
    async with contextlib.AsyncExitStack() as stack:
        publishers = [
            await stack.enter_async_context(Publisher(writer, job_id, 1)) for job_id in jobs
        ]

        # every publish below runs before the writer's task does: one round trip takes them all
        await asyncio.gather(*(p.publish(delta(p.job_id, "a")) for p in publishers))
        for p in publishers:
            await p.flush()

    assert writer.round_trips == 1
    for job_id in jobs:
        assert await texts(redis, store, job_id) == ['{"text":"a"}']


async def test_events_published_while_a_round_trip_is_in_flight_follow_in_order(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    job_id = await running_job(store)
    pub = Publisher(writer, job_id, 1)

    for i in range(600):  # more than one script call's worth, published one at a time
        await pub.publish(delta(job_id, str(i)))
    await pub.flush()

    assert await texts(redis, store, job_id) == [f'{{"text":"{i}"}}' for i in range(600)]
    assert pub.written == 600


async def test_fenced_job_fails_alone_and_the_others_in_the_round_trip_are_written(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    kept, fenced = await running_job(store), await running_job(store)
    await redis.hset(store.keys.job(fenced), "attempt", 2)  # another attempt took it over
    pub_kept, pub_fenced = Publisher(writer, kept, 1), Publisher(writer, fenced, 1)

    await pub_kept.publish(delta(kept, "mine"))
    await pub_fenced.publish(delta(fenced, "lost"))
    await pub_kept.flush()
    with pytest.raises(FencedError):
        await pub_fenced.flush()

    assert await texts(redis, store, kept) == ['{"text":"mine"}']
    assert await texts(redis, store, fenced) == []
    with pytest.raises(FencedError):
        await pub_fenced.publish(delta(fenced, "again"))


async def test_write_script_is_loaded_again_after_redis_forgets_it(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    job_id = await running_job(store)
    pub = Publisher(writer, job_id, 1)
    await pub.publish(delta(job_id, "before"))
    await pub.flush()

    await redis.script_flush()
    await pub.publish(delta(job_id, "after"))
    await pub.flush()

    assert await texts(redis, store, job_id) == ['{"text":"before"}', '{"text":"after"}']


async def test_finish_appends_the_terminal_event_and_ends_the_job_after_every_pending_event(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    job_id = await running_job(store)
    pub = Publisher(writer, job_id, 1)
    for i in range(5):
        await pub.publish(delta(job_id, str(i)))

    await pub.finish(
        JobCompleted(job_id=job_id, attempt=1, finish_reason="stop"),
        "completed",
        {"output": "{}", "usage": "", "error": ""},
    )

    entries = await redis.xrange(store.keys.events(job_id))
    types = [as_text(fields[b"t"]) for _, fields in entries]
    assert types[-6:] == ["content.delta"] * 5 + ["job.completed"]
    assert as_text(await redis.hget(store.keys.job(job_id), "status")) == "completed"


@pytest.fixture
async def proxied(
    settings: Settings, proxy_factory: Callable[[int], Awaitable[DroppingProxy]]
) -> AsyncIterator[tuple[JobStore, DroppingProxy]]:
    """A store whose Redis connections pass through a proxy the test can cut."""
    proxy = await proxy_factory(redis_port_of(settings))
    via = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
    client = connect(via)
    try:
        yield JobStore(client, via), proxy
    finally:
        await close(client)


async def test_write_cut_off_from_redis_is_sent_again_in_order(
    store: JobStore,
    redis: Redis,
    proxied: tuple[JobStore, DroppingProxy],
    make_writer: MakeWriter,
) -> None:
    via, proxy = proxied
    writer = await make_writer(via)
    job_id = await running_job(store)
    pub = Publisher(writer, job_id, 1)
    await pub.publish(delta(job_id, "0"))
    await pub.flush()
    redis_port = proxy.target_port

    proxy.target_port = free_port()  # new connections now end at once: Redis is "down"
    proxy.drop_all()
    for i in range(1, 4):
        await pub.publish(delta(job_id, str(i)))

    await sent_again(pub)
    proxy.target_port = redis_port
    await pub.flush()

    assert await texts(redis, store, job_id) == [f'{{"text":"{i}"}}' for i in range(4)]
    assert pub.written == 4


async def test_publisher_cut_off_past_the_outage_deadline_fails_with_publish_error(
    store: JobStore,
    proxied: tuple[JobStore, DroppingProxy],
    make_writer: MakeWriter,
) -> None:
    via, proxy = proxied
    writer = await make_writer(via)
    job_id = await running_job(store)
    pub = Publisher(writer, job_id, 1, outage_seconds=0.3)
    proxy.target_port = free_port()
    proxy.drop_all()

    await pub.publish(delta(job_id, "never"))
    with pytest.raises(PublishError):
        await pub.flush()


async def test_producer_that_never_waits_still_lets_the_writer_run(
    store: JobStore, redis: Redis, make_writer: MakeWriter
) -> None:
    writer = await make_writer(store)
    job_id = await running_job(store)
    # a buffer that never fills: only the publisher's own yields let other tasks run
    pub = Publisher(writer, job_id, 1, max_pending=100_000)
    sent_while_publishing = []

    for i in range(2_000):
        await pub.publish(delta(job_id, str(i)))
        sent_while_publishing.append(writer.round_trips)
    await pub.flush()

    assert sent_while_publishing[-1] > 0
    assert len(await texts(redis, store, job_id)) == 2_000


def test_writer_packs_commands_exactly_as_redis_py_does() -> None:
    commands = [
        ("EVALSHA", "a" * 40, 2, "tokenspool:job:{j}", "tokenspool:events:{j}", 1, 100_000),
        ("EVALSHA", "b" * 40, 2, "k1", "k2", 0, "", "1700000000.25", '{"text":"héllo 🤔\\n"}'),
    ]

    assert pack(commands) == b"".join(Connection().pack_commands(commands))


async def test_round_trip_past_its_deadline_is_sent_again(
    store: JobStore,
    redis: Redis,
    proxied: tuple[JobStore, DroppingProxy],
    make_writer: MakeWriter,
) -> None:
    via, proxy = proxied

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass  # a Redis that reads everything and never answers
        writer.close()

    black_hole = await asyncio.start_server(swallow, "127.0.0.1", 0)
    writer = await make_writer(via, timeout=0.2)
    try:
        job_id = await running_job(store)
        async with Publisher(writer, job_id, 1) as pub:
            await pub.publish(delta(job_id, "0"))
            await pub.flush()
            redis_port = proxy.target_port
            proxy.target_port = black_hole.sockets[0].getsockname()[1]
            proxy.drop_all()
            await pub.publish(delta(job_id, "1"))

            await sent_again(pub)
            proxy.target_port = redis_port
            await pub.flush()

        assert await texts(redis, store, job_id) == ['{"text":"0"}', '{"text":"1"}']
    finally:
        black_hole.close()
        await black_hole.wait_closed()


class MutingProxy(DroppingProxy):
    """Forwards to Redis; while ``mute`` is set, replies are dropped (the requests still go)."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port)
        self.mute = False

    async def forward(self, data: bytes, request: bool, connection: dict[str, bool]) -> bool:
        return request or not self.mute


async def test_write_applied_but_unanswered_is_sent_again_with_its_seq_and_applied_once(
    settings: Settings, store: JobStore, redis: Redis
) -> None:
    proxy = MutingProxy(redis_port_of(settings))
    port = (await proxy.start()).port
    via_settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    via = connect(via_settings, caller_bounds_waits=True)
    writer = Writer(JobStore(via, via_settings), via, timeout=0.3)
    writer.start()
    try:
        job_id = await running_job(store)
        async with Publisher(writer, job_id, 1) as pub:
            await pub.publish(delta(job_id, "0"))
            await pub.flush()
            proxy.mute = True  # the next write reaches Redis; its answer is lost
            await pub.publish(delta(job_id, "1"))

            await sent_again(pub)
            proxy.mute = False
            await pub.flush()
            await pub.publish(delta(job_id, "2"))
            await pub.flush()

        assert await texts(redis, store, job_id) == [f'{{"text":"{i}"}}' for i in range(3)]
    finally:
        await writer.stop()
        await close(via)
        await proxy.stop()


class HoldingProxy(DroppingProxy):
    """Forwards to Redis; once a connection sends a request that contains ``marker``, its
    replies wait until ``release()``."""

    def __init__(self, target_port: int, marker: bytes) -> None:
        super().__init__(target_port)
        self.marker = marker
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def forward(self, data: bytes, request: bool, connection: dict[str, bool]) -> bool:
        if request:
            connection["held"] = connection.get("held", False) or self.marker in data
        elif connection.get("held"):
            await self._released.wait()
        return True


async def test_a_write_goes_out_on_a_free_lane_while_another_round_trip_awaits_its_reply(
    settings: Settings, store: JobStore, redis: Redis
) -> None:
    await redis.script_load(scripts.WRITE)
    proxy = HoldingProxy(redis_port_of(settings), marker=b"held")
    port = (await proxy.start()).port
    via_settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"})
    via = connect(via_settings, caller_bounds_waits=True)
    writer = Writer(JobStore(via, via_settings), via, timeout=60, lanes=2)
    writer.start()
    try:
        slow_job, fast_job = await running_job(store), await running_job(store)
        async with Publisher(writer, slow_job, 1) as slow, Publisher(writer, fast_job, 1) as fast:
            await slow.publish(delta(slow_job, "held"))

            async def sent() -> bool:
                return writer.round_trips == 1

            await wait_until(sent, timeout=10)  # slow's round trip is out; its reply is held
            await fast.publish(delta(fast_job, "free"))
            await asyncio.wait_for(fast.flush(), 30)  # one lane would wait for the held reply

            assert (slow.written, fast.written) == (0, 1)
            assert writer.round_trips == 2
            proxy.release()
            await slow.flush()

        assert await texts(redis, store, slow_job) == ['{"text":"held"}']
        assert await texts(redis, store, fast_job) == ['{"text":"free"}']
        assert slow.written == 1
    finally:
        await writer.stop()
        await close(via)
        await proxy.stop()


def test_writer_refuses_to_run_without_a_lane(store: JobStore) -> None:
    with pytest.raises(ValueError, match="at least one lane"):
        Writer(store, lanes=0)
