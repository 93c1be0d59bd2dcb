"""Writes one attempt's events to its job stream, in order, fenced, with bounded buffering.

Events wait in a bounded buffer. The process's :class:`~tokenspool.writer.Writer` takes them as
one fenced script call (up to ``MAX_BATCH`` events) whenever this publisher has no call
outstanding, pipelined with every other attempt's, so a busy stream costs far fewer round trips
than chunks and an idle one adds no delay. A call that fails for want of Redis is sent again,
with the same sequence number (applied once), until the outage deadline. When the buffer is
full, :meth:`Publisher.publish` waits: the provider is then no longer read, and backpressure
reaches it through TCP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import TokenspoolError
from .events import _Event, as_text
from .store import fence_error
from .writer import Writer

log = logging.getLogger(__name__)

MAX_BATCH = 256  # events per script call
YIELD_EVERY = 64  # events a producer may publish before it lets the loop run the others
RETRY_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0)


class PublishError(TokenspoolError):
    """Redis stayed unreachable past the outage deadline; the attempt is abandoned."""


@dataclass(eq=False)
class _Call:
    """One fenced script call: sent, and sent again unchanged until it is answered."""

    seq: int
    events: list[tuple[str, str]]
    deadline: float  # give up retrying after this (monotonic)
    status: str = ""
    fields: dict[str, str] | None = None
    answer: asyncio.Future[str] | None = None  # the terminal call's caller waits on it
    failures: int = 0
    keys: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)


class Publisher:
    """Ordered, batched, fenced writer of one attempt's events."""

    def __init__(
        self,
        writer: Writer,
        job_id: str,
        attempt: int,
        *,
        max_pending: int = 1024,
        outage_seconds: float = 30.0,
    ) -> None:
        self.writer = writer
        self.job_id = job_id
        self.attempt = attempt
        self.max_pending = max_pending
        self.outage_seconds = outage_seconds
        self._pending: deque[tuple[str, str]] = deque()
        self._call: _Call | None = None  # outstanding: sent, or waiting to be sent again
        self._retry: asyncio.TimerHandle | None = None
        self._progress = asyncio.Event()  # set whenever a call ends (or the publisher fails)
        self._seq = 0
        self._error: BaseException | None = None
        self._closed = False
        self._unyielded = 0
        self.written = 0
        self.round_trips = 0  # script calls sent (retries included)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # nothing more is sent; a call already in a round trip still gets its answer
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        self.writer.discard(self)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def _wait_progress(self) -> None:
        # bounded: every outstanding call ends, in an answer or in a failure, by the writer's
        # deadline for its round trip, and retries end at the outage deadline
        self._progress.clear()
        await self._progress.wait()

    async def publish(self, event: _Event) -> None:
        """Queue an event (waits while the buffer is full). Raises if the attempt was fenced."""
        self._check()
        while len(self._pending) >= self.max_pending:
            self._unyielded = 0
            await self._wait_progress()
            self._check()
        fields = event.to_fields()
        self._pending.append((fields["t"], fields["d"]))
        if self._call is None:
            self.writer.ready(self)
        # a provider that never makes the reader wait would otherwise starve the writer and
        # the lease renewals on this loop (docs/benchmarks.md); a paced stream waits for each
        # chunk anyway, so a yield per event would only cost it a loop pass per chunk
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await asyncio.sleep(0)

    async def flush(self) -> None:
        """Wait until every queued event is in Redis (or raise the writer's error)."""
        while (self._pending or self._call is not None) and self._error is None:
            await self._wait_progress()
        self._check()

    async def finish(self, event: _Event, status: str, fields: dict[str, str]) -> str:
        """Flush, then append the terminal event and end the job, atomically and fenced."""
        await self.flush()
        data = event.to_fields()
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._call = self._new_call([(data["t"], data["d"])], status, fields, answer)
        self.writer.ready(self)
        return await answer

    def _new_call(
        self,
        events: list[tuple[str, str]],
        status: str = "",
        fields: dict[str, str] | None = None,
        answer: asyncio.Future[str] | None = None,
    ) -> _Call:
        self._seq += 1
        call = _Call(
            self._seq, events, time.monotonic() + self.outage_seconds, status, fields, answer
        )
        call.keys, call.args = self.writer.store.write_call(
            self.job_id, self.attempt, events, call.seq, status, fields
        )
        return call

    # the writer's side (tokenspool.writer.Source)

    def next_request(self) -> tuple[list[str], list[Any]] | None:
        if self._error is not None or self._closed:
            return None
        if self._call is None:
            if not self._pending:
                return None
            take = min(len(self._pending), MAX_BATCH)
            self._call = self._new_call([self._pending.popleft() for _ in range(take)])
            self._progress.set()  # room in the buffer
        self.round_trips += 1
        return self._call.keys, self._call.args

    def answered(self, reply: Any) -> None:
        call, self._call = self._call, None
        assert call is not None, "an answer without a call"
        if isinstance(reply, ResponseError):
            self._fail(fence_error(self.job_id, reply) or reply)
            return
        self.written += len(call.events)
        if call.answer is not None and not call.answer.done():
            call.answer.set_result(as_text(reply))
        if self._pending and self._error is None:
            self.writer.ready(self)
        self._progress.set()

    def failed(self, exc: BaseException) -> None:
        if self._error is not None:
            return
        call = self._call
        if call is None or not isinstance(exc, RedisConnectionError | RedisTimeoutError):
            self._fail(exc)
            return
        if time.monotonic() >= call.deadline:
            error = PublishError(
                f"job {self.job_id}: Redis unreachable for {self.outage_seconds}s: {exc}"
            )
            error.__cause__ = exc
            self._fail(error)
            return
        delay = RETRY_DELAYS[min(call.failures, len(RETRY_DELAYS) - 1)]
        call.failures += 1
        log.warning("job %s: Redis write failed (%s); retrying", self.job_id, exc)
        self._retry = asyncio.get_running_loop().call_later(delay, self.writer.ready, self)

    def _fail(self, exc: BaseException) -> None:
        # the owner re-raises it on its next publish/flush/finish
        self._error = exc
        self._pending.clear()
        call, self._call = self._call, None
        if call is not None and call.answer is not None and not call.answer.done():
            call.answer.set_exception(exc)
        self._progress.set()
