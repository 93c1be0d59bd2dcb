"""One Redis writer per worker process: every attempt's pending events in few round trips.

Each attempt's :class:`~tokenspool.publisher.Publisher` keeps its events in order, numbers its
writes, retries them and gives up after the outage deadline; it has at most one write request
outstanding. The writer takes the next request of every publisher that has events pending and
sends them all as one pipelined round trip (no MULTI: one EVALSHA of the fenced WRITE script per
job, each job's keys in one hash slot). It has a few lanes, each a connection with at most one
round trip in flight: a request goes out at once on an idle lane; while every lane is busy, new
requests gather for the next lane to come free, with no timer. So the busier the worker, the
more writes share a round trip, and a write does not wait for the reply to another round trip
while a lane is free (a reply waits for the worker's loop, which is late when it is busy).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import scripts
from .connections import pack, read_replies
from .errors import TokenspoolError
from .store import JobStore
from .tasks import stop_task

log = logging.getLogger(__name__)

LANES = 2  # round trips in flight at once, each on its own connection
MAX_REQUESTS = 512  # script calls in one round trip (each carries at most MAX_BATCH events)
ROUND_TRIP_SECONDS = 10.0  # deadline of one round trip; the publishers then retry or give up


class WriterStoppedError(TokenspoolError):
    """The process's writer stopped (worker shutdown) before a write was answered."""


class Source(Protocol):
    """What the writer needs from a publisher."""

    def next_request(self) -> tuple[list[str], list[Any]] | None:
        """Keys and args of the WRITE script call to send now (a retry repeats the last)."""

    def answered(self, reply: Any) -> None:
        """The script's reply: the last entry id, or a ResponseError (FENCED, ...)."""

    def failed(self, exc: BaseException) -> None:
        """The round trip carrying this source's request failed (connection lost, ...)."""


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Writer:
    """Sends every ready publisher's next write request, pipelined, one round trip per lane."""

    def __init__(
        self,
        store: JobStore,
        redis: Redis | None = None,
        *,
        max_requests: int = MAX_REQUESTS,
        timeout: float = ROUND_TRIP_SECONDS,
        lanes: int = LANES,
        counter: _Counter | None = None,
    ) -> None:
        """``redis``: the client to send with (default: the store's); best one made with
        ``connect(..., caller_bounds_waits=True)``, since each round trip has a deadline here."""
        self.store = store
        self.redis = redis if redis is not None else store.redis
        self.max_requests = max_requests
        self.timeout = timeout
        if lanes < 1:
            raise ValueError(f"a writer needs at least one lane, not {lanes}")
        self.counter = counter  # counts round trips too (a metric)
        self._sha = store.write_sha
        # sources with a request to send, in arrival order; each at most once
        self._ready: dict[Source, None] = {}
        self._idle: list[asyncio.Future[None]] = []  # lanes waiting for a request
        self._tasks: list[asyncio.Task[None]] = []
        self._conns: list[Connection | None] = [None] * lanes  # by lane, taken on first use
        self._stopped = False
        self.round_trips = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(lane), name=f"redis-writer-{lane}")
            for lane in range(len(self._conns))
        ]

    async def stop(self) -> None:
        self._stopped = True
        for task in self._tasks:
            await stop_task(task)
        for lane, conn in enumerate(self._conns):
            if conn is not None:
                self._conns[lane] = None
                await self.redis.connection_pool.release(conn)
        stopped = WriterStoppedError("the worker's Redis writer stopped")
        ready, self._ready = list(self._ready), {}
        for source in ready:
            source.failed(stopped)

    def ready(self, source: Source) -> None:
        """``source`` has a request to send (sent with the next round trip)."""
        if self._stopped:
            source.failed(WriterStoppedError("the worker's Redis writer stopped"))
            return
        self._ready[source] = None
        while self._idle:  # wake one idle lane (it may find the request taken by then)
            waiter = self._idle.pop()
            if not waiter.done():
                waiter.set_result(None)
                break

    def discard(self, source: Source) -> None:
        self._ready.pop(source, None)

    async def _run(self, lane: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                waiter = loop.create_future()
                self._idle.append(waiter)
                try:
                    await waiter
                finally:
                    if not waiter.done():  # cancelled while idle
                        self._idle.remove(waiter)
                continue
            batch: list[Source] = []
            calls: list[tuple[list[str], list[Any]]] = []
            while self._ready and len(batch) < self.max_requests:
                source = next(iter(self._ready))
                del self._ready[source]
                try:
                    call = source.next_request()
                except Exception as exc:  # that source's bug must not stop every other one
                    source.failed(exc)
                    continue
                if call is not None:
                    batch.append(source)
                    calls.append(call)
            if batch:
                await self._send(lane, batch, calls)

    def _late(self, exc: TimeoutError) -> RedisTimeoutError:
        """Our deadline, as the Redis timeout the publishers retry on."""
        late = RedisTimeoutError(f"no answer from Redis within {self.timeout}s")
        late.__cause__ = exc
        return late

    async def _round_trip(self, lane: int, commands: list[tuple[Any, ...]]) -> list[Any]:
        # What redis-py's Pipeline(transaction=False).execute() does, on a connection held
        # for good: a pipeline checks a connection out of the pool for every execute, and the
        # check-out polls the socket under a zero timeout (one more loop pass, a timer and a
        # cancelled read per round trip; about 15 µs of CPU each here). redis-py drops the
        # connection on any error or cancellation mid-reply; the next send reconnects.
        conn = self._conns[lane]
        if conn is None:
            conn = self._conns[lane] = await self.redis.connection_pool.get_connection()
        await conn.send_packed_command(pack(commands))
        self.round_trips += 1
        if self.counter is not None:
            self.counter.inc()
        return await read_replies(conn, len(commands))

    async def _send(
        self, lane: int, batch: list[Source], calls: list[tuple[list[str], list[Any]]]
    ) -> None:
        commands = [("EVALSHA", self._sha, len(keys), *keys, *args) for keys, args in calls]
        try:
            async with asyncio.timeout(self.timeout):
                replies = await self._round_trip(lane, commands)
        except TimeoutError as exc:  # redis-py dropped the connection when it was cancelled
            for source in batch:
                source.failed(self._late(exc))
            return
        except asyncio.CancelledError:
            stopped = WriterStoppedError("the worker's Redis writer stopped mid-write")
            for source in batch:
                source.failed(stopped)
            raise
        except Exception as exc:  # every source decides: retry (connection lost) or fail
            for source in batch:
                source.failed(exc)
            return
        missing = []
        for source, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(source)
            else:
                source.answered(reply)
        if missing:
            # Redis lost its script cache (restart, SCRIPT FLUSH): nothing of these calls ran;
            # load the script and send the same requests again with the next round trip
            log.warning("WRITE script missing in Redis; loading it")
            try:
                async with asyncio.timeout(self.timeout):
                    self._sha = await self.redis.script_load(scripts.WRITE)
            except Exception as exc:  # as above: each source retries or fails on its own
                error = self._late(exc) if isinstance(exc, TimeoutError) else exc
                for source in missing:
                    source.failed(error)
                return
            for source in missing:
                self.ready(source)
