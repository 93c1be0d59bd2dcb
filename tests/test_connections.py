"""The process's Redis pool against the real (embedded) Redis."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenspool.connections import Pool, held, pipelined, round_trip, transaction
from tokenspool.settings import Settings
from tokenspool.stack import Stack


class _SlowFirstCheck(Pool):
    """Its first connection check waits until released (a slow connect, or a busy loop)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = asyncio.Event()
        self.release_first = asyncio.Event()
        self._first = True

    async def ensure_connection(self, connection: Any) -> None:
        if self._first:
            self._first = False
            self.entered.set()
            await self.release_first.wait()
        await super().ensure_connection(connection)


async def test_a_slow_connection_check_does_not_hold_up_other_checkouts(
    settings: Settings,
) -> None:
    pool = _SlowFirstCheck.from_url(settings.redis_url, max_connections=4)
    try:
        slow = asyncio.create_task(pool.get_connection())
        await pool.entered.wait()
        other = await asyncio.wait_for(pool.get_connection(), timeout=10)  # not behind `slow`
        assert not slow.done()
        await other.send_command("PING")
        assert await other.read_response() == b"PONG"
        await pool.release(other)
        pool.release_first.set()
        await pool.release(await slow)
    finally:
        await pool.disconnect()


async def test_a_pipeline_gives_each_reply_in_order_errors_as_values_and_frees_its_connection(
    redis: Redis,
) -> None:
    key = f"test:pipelined:{uuid.uuid4().hex}"
    replies = await pipelined(
        redis,
        [("SET", key, "v"), ("INCR", key), ("GET", key), ("EVALSHA", "0" * 40, 0), ("DEL", key)],
    )
    assert replies[0] in (b"OK", "OK") and replies[4] == 1
    assert isinstance(replies[1], ResponseError)  # not an integer: an error, not a raise
    assert replies[2] in (b"v", "v")
    assert isinstance(replies[3], NoScriptError)
    pool = redis.connection_pool
    assert not pool._in_use_connections  # type: ignore[attr-defined]


async def test_a_transaction_whose_watched_key_changed_runs_nothing_and_answers_none(
    redis: Redis,
) -> None:
    watched, other = (f"test:tx:{uuid.uuid4().hex}" for _ in range(2))
    async with held(redis) as conn:
        await round_trip(conn, [("WATCH", watched)])
        await redis.set(watched, "changed by another client")
        aborted = await transaction(conn, [("SET", other, "1")])
        ran = await transaction(conn, [("SET", other, "2"), ("GET", other)])  # EXEC unwatched

    assert aborted is None
    assert ran is not None and ran[1] in (b"2", "2")
    await redis.delete(watched, other)


async def test_a_command_refused_in_a_transaction_is_raised_and_nothing_runs(
    redis: Redis,
) -> None:
    key = f"test:tx:{uuid.uuid4().hex}"
    async with held(redis) as conn:
        with pytest.raises(ResponseError, match="wrong number of arguments"):
            await transaction(conn, [("SET", key, "1"), ("SET", key)])
        with pytest.raises(ResponseError, match="not an integer"):
            await transaction(conn, [("SET", key, "x"), ("INCR", key)])  # fails as it runs

    assert await redis.get(key) in (b"x", "x")  # the first one ran; the refused one did not
    await redis.delete(key)


async def test_a_round_trip_past_its_deadline_raises_redis_timeout_and_drops_the_connection(
    fault_stack: Stack,
) -> None:
    redis = Redis.from_url(fault_stack.redis.url, socket_timeout=0.5)
    try:
        async with held(redis) as conn:
            await round_trip(conn, [("PING",)])
            fault_stack.redis.signal(signal.SIGSTOP)
            try:
                with pytest.raises(RedisTimeoutError, match=r"within 0\.5s"):
                    await round_trip(conn, [("PING",)])
                assert not conn.is_connected
            finally:
                fault_stack.redis.signal(signal.SIGCONT)
            assert await round_trip(conn, [("PING",)]) in ([b"PONG"], ["PONG"])  # reconnected
    finally:
        await redis.aclose()
