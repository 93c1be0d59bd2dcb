"""Delivers cancel requests to the worker running the job.

The API's cancel script sets ``cancel_requested`` on the job hash and publishes the job id on
one channel. Each worker process holds a single subscription and wakes the matching job at
once; because pub/sub drops messages while disconnected, the process also re-reads the flags of
all its jobs every ``cancel_check_seconds``, in one pipelined round trip (not a timer and a
round trip per job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from .errors import REDIS_UNREACHABLE
from .tasks import every, stop_task

log = logging.getLogger(__name__)


class CancelWatcher:
    """One pub/sub subscription per process, fanned out to the jobs it runs."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        flags: Callable[[list[str]], Awaitable[list[bool]]],
        check_seconds: float,
    ) -> None:
        """``flags``: the ``cancel_requested`` flags of some jobs, read in one round trip."""
        self.redis = redis
        self.channel = channel
        self.flags = flags
        self.check_seconds = check_seconds
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def register(self, job_id: str) -> asyncio.Event:
        event = self._events.setdefault(job_id, asyncio.Event())
        return event

    def unregister(self, job_id: str) -> None:
        self._events.pop(job_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cancel-watcher")
        self._poll_task = asyncio.create_task(
            every(self.check_seconds, self.check_now, "cancel flag check"), name="cancel-poll"
        )

    async def stop(self) -> None:
        await stop_task(self._task)
        await stop_task(self._poll_task)

    async def check_now(self) -> None:
        """Read every registered job's flag; wake the ones that were cancelled."""
        job_ids = list(self._events)
        if not job_ids:
            return
        for job_id, cancelled in zip(job_ids, await self.flags(job_ids), strict=True):
            event = self._events.get(job_id)
            if cancelled and event is not None:
                event.set()

    async def _run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.ready.set()
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        continue
                    data = message.get("data")
                    job_id = data.decode() if isinstance(data, bytes) else str(data)
                    event = self._events.get(job_id)
                    if event is not None:
                        event.set()
            except REDIS_UNREACHABLE as exc:
                self.ready.clear()
                log.warning("cancel subscription lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(pubsub.aclose())
