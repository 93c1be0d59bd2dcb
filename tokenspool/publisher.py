"""Writes one attempt's events to its job stream, in order, fenced, with bounded buffering.

Events wait in a bounded queue; one writer task sends whatever is pending as a single fenced
script call, so a busy stream costs far fewer round trips than chunks and an idle one adds no
delay. When the queue is full, :meth:`Publisher.publish` waits: the provider is then no longer
read, and backpressure reaches it through TCP.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import FencedError, TokenspoolError
from .events import _Event
from .store import JobStore
from .tasks import stop_task

log = logging.getLogger(__name__)

MAX_BATCH = 256  # events per script call
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)


class PublishError(TokenspoolError):
    """Redis stayed unreachable past the outage deadline; the attempt is abandoned."""


class Publisher:
    """Ordered, batched, fenced writer of one attempt's events."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        attempt: int,
        *,
        max_pending: int = 1024,
        outage_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.outage_seconds = outage_seconds
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=max_pending)
        self._seq = 0
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.round_trips = 0

    async def __aenter__(self) -> Publisher:
        self._task = asyncio.create_task(self._run(), name=f"publisher:{self.job_id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self._task)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def publish(self, event: _Event) -> None:
        """Queue an event (waits while the buffer is full). Raises if the attempt was fenced."""
        self._check()
        fields = event.to_fields()
        await self._queue.put((fields["t"], fields["d"]))
        # a provider that never makes the reader wait would otherwise starve the writer and
        # the lease renewals on this loop (docs/benchmarks.md)
        await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until every queued event is in Redis (or raise the writer's error)."""
        assert self._task is not None, "use Publisher as an async context manager"
        join = asyncio.create_task(self._queue.join())
        try:
            await asyncio.wait({join, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            join.cancel()
        self._check()

    async def finish(self, event: _Event, status: str, fields: dict[str, str]) -> str:
        """Flush, then append the terminal event and end the job, atomically and fenced."""
        await self.flush()
        data = event.to_fields()
        return await self._send([(data["t"], data["d"])], status, fields)

    async def _send(
        self, batch: list[tuple[str, str]], status: str = "", fields: dict[str, str] | None = None
    ) -> str:
        self._seq += 1
        deadline = time.monotonic() + self.outage_seconds
        for attempt_no in range(1_000_000):
            try:
                self.round_trips += 1
                last = await self.store.write(
                    self.job_id, self.attempt, batch, self._seq, status, fields
                )
                self.written += len(batch)
                return last
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise PublishError(
                        f"job {self.job_id}: Redis unreachable for {self.outage_seconds}s: {exc}"
                    ) from exc
                delay = RETRY_DELAYS[min(attempt_no, len(RETRY_DELAYS) - 1)]
                log.warning("job %s: Redis write failed (%s); retrying", self.job_id, exc)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _run(self) -> None:
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                try:
                    await self._send(batch)
                finally:
                    for _ in batch:
                        self._queue.task_done()
        except (FencedError, PublishError) as exc:
            self._error = exc
            self._drain()
        except Exception as exc:  # the owner re-raises it on its next publish/flush
            self._error = exc
            self._drain()

    def _drain(self) -> None:
        # wake any producer blocked on a full queue; it will see self._error
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
