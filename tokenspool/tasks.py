"""The background tasks tokenspool owns (writers, renewers, subscribers): periodic supervising
loops, and stopping them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)


async def every(seconds: float, action: Callable[[], Awaitable[object]], what: str) -> None:
    """Run ``action`` every ``seconds`` until cancelled. A supervising loop: a Redis error is
    logged as a warning, any other failure with its traceback, and the loop goes on."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await action()
        except (RedisError, OSError) as exc:
            log.warning("%s failed: %s", what, exc)
        except Exception:
            log.exception("%s failed", what)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a task this code owns and wait until it has unwound."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
