"""The process's Redis pool against the real (embedded) Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from tokenspool.connections import Pool, pipelined
from tokenspool.settings import Settings


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
