"""The process's Redis pool against the real (embedded) Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from tokenspool.connections import Pool
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
