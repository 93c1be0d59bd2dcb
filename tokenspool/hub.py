"""One shared reader for every stream consumer of a process: a single XREAD over many jobs.

``tail()`` gives each consumer its own ``XREAD BLOCK`` on its own connection: a round trip per
chunk per consumer, and a pooled connection per open stream. The hub instead keeps the
consumers that are waiting for data, reads all their streams with one ``XREAD BLOCK COUNT
STREAMS k1 k2 ... id1 id2 ...`` on a dedicated connection, and hands each consumer the entries
after its own position. It is a pull model as ``tail()`` is: a consumer busy writing to its
client is not waiting, so nothing is read or held for it, and what it is given is at most one
``COUNT`` batch.

A consumer that starts waiting while a read is blocked must not wait for that read's BLOCK
to run out. When the read in flight does not cover its stream (or covers it from a later
position), the hub sends ``CLIENT UNBLOCK <reader id>`` from another connection, once per
read; and after each dispatch it yields to the event loop, so consumers it just served are
back in the read set before the next XREAD is built, which keeps unblocks rare under load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import KeyT, StreamIdT

from .errors import JobNotFoundError, StreamGoneError, TokenspoolError
from .events import TERMINAL_TYPES
from .keys import Keys
from .tailer import RECONNECT_DELAYS, id_tuple, parse_event_id
from .tasks import stop_task

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]  # an XREAD entry, not decoded: (id, fields)
_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_TERMINAL = frozenset(t.encode() for t in TERMINAL_TYPES)
_UNBLOCK_TRIES = 3  # CLIENT UNBLOCK can reach the server before the XREAD it is meant for


class HubClosedError(TokenspoolError):
    """The hub was stopped (or its reader failed) while a consumer waited on it."""


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stream hub: %s stopped", task.get_name(), exc_info=task.exception())


def _position(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return id_tuple(raw)


@dataclass(eq=False)
class _Waiter:
    """One consumer waiting for entries of one stream after ``after``."""

    job_id: str
    stream: str
    job_key: str
    after: str
    position: tuple[int, int]
    future: asyncio.Future[list[Entry]]
    since: float = field(default_factory=time.monotonic)


class Hub:
    """Multiplexes the event streams a process's consumers are waiting on over one XREAD.

    ``start()`` it once per process (the API's lifespan) and ``stop()`` it at the end;
    ``tail()`` is the per-consumer view. ``redis`` is the process's pooled client (for the
    unblocks); the reader gets a connection of its own from ``reader``.
    """

    def __init__(
        self,
        redis: Redis,
        reader: Redis,
        *,
        keys: Keys | None = None,
        count: int = 100,
        block_ms: int = 5_000,
        reconnect_timeout: float = 60.0,
    ) -> None:
        self.keys = keys or Keys()
        self.count = count
        self.block_ms = block_ms
        self.reconnect_timeout = reconnect_timeout
        self.reads = 0  # XREADs sent
        self.unblocks = 0  # CLIENT UNBLOCKs that woke a blocked read
        self._redis = redis
        self._reader = reader
        self._reader_id: int | None = None  # CLIENT ID of the reader's connection
        self._waiting: dict[str, set[_Waiter]] = {}
        self._wake = asyncio.Event()
        self._in_flight: dict[str, tuple[int, int]] | None = None  # stream -> read position
        self._read_seq = 0
        self._unblock_for: int | None = None  # the read an unblock was asked for
        self._unblock_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="tokenspool-hub-reader"),
            asyncio.create_task(self._unblocker(), name="tokenspool-hub-unblocker"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop reading; every consumer still waiting gets ``HubClosedError``."""
        self._closed = True
        for task in reversed(self._tasks):  # the unblocker first: it only serves the reader
            await stop_task(task)
        self._fail_all(HubClosedError("the stream hub stopped"))

    async def tail(self, job_id: str, after: str = "0") -> AsyncGenerator[list[Entry], None]:
        """Yield the entries of ``job_id`` after ``after`` in batches, until (and including)
        the terminal one. The caller checked that the job exists and that ``after`` is
        retained (``tailer.check_retained``), as it must answer those before streaming.

        Like ``tail()``: raises ``StreamGoneError`` when ordinals jump (entries were trimmed
        before they were read), ``JobNotFoundError`` when the keys expire while it waits, and
        the Redis error when Redis stays unreachable for ``reconnect_timeout``."""
        last = parse_event_id(after)
        expected_n: int | None = 1 if last == "0" else None
        while True:
            entries = await self._next(job_id, last)
            if not entries:
                continue  # the keys still exist after a whole BLOCK: wait again
            batch: list[Entry] = []
            for entry in entries:
                raw_n = entry[1].get(b"n")
                if raw_n is not None:
                    n = int(raw_n)
                    if expected_n is not None and n != expected_n:
                        raise StreamGoneError(
                            f"job {job_id}: events {expected_n}..{n - 1} were trimmed (stream "
                            f"cap) before this reader got them; it read up to {last}"
                        )
                    expected_n = n + 1
                batch.append(entry)
                if entry[1].get(b"t") in _TERMINAL:
                    yield batch
                    return
            last = entries[-1][0].decode()
            yield batch

    async def _next(self, job_id: str, after: str) -> list[Entry]:
        """Wait for the entries of ``job_id`` after ``after`` (empty: none for a whole BLOCK)."""
        if self._closed or not self._tasks or self._tasks[0].done():
            raise HubClosedError("the stream hub is not running")
        waiter = _Waiter(
            job_id,
            self.keys.events(job_id),
            self.keys.job(job_id),
            after,
            id_tuple(after),
            asyncio.get_running_loop().create_future(),
        )
        self._add(waiter)
        try:
            # the hub answers every waiter within about a BLOCK, or fails it after the
            # reconnect timeout; this deadline only guards against a hub that stopped answering
            async with asyncio.timeout(2 * self.block_ms / 1000 + self.reconnect_timeout + 30):
                return await waiter.future
        finally:
            self._discard(waiter)

    def _add(self, waiter: _Waiter) -> None:
        self._waiting.setdefault(waiter.stream, set()).add(waiter)
        self._wake.set()
        reading = self._in_flight
        if reading is None:
            return
        position = reading.get(waiter.stream)
        if (position is None or waiter.position < position) and self._unblock_for is None:
            self._unblock_for = self._read_seq  # one unblock per read
            self._unblock_wanted.set()

    def _discard(self, waiter: _Waiter) -> None:
        waiters = self._waiting.get(waiter.stream)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._waiting[waiter.stream]
        if not waiter.future.done():
            waiter.future.cancel()

    def _fail_all(self, exc: BaseException) -> None:
        for waiters in list(self._waiting.values()):
            for waiter in waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        self._waiting.clear()

    async def _run(self) -> None:
        failures = 0
        outage_started: float | None = None
        try:
            while True:
                if not self._waiting:
                    self._wake.clear()
                    await self._wake.wait()  # nobody waits: no reads at all
                    continue
                try:
                    self._dispatch(*await self._read())
                    await self._check_idle()
                except _REDIS_ERRORS as exc:
                    self._reader_id = None  # the reader reconnects: a new client id
                    now = time.monotonic()
                    outage_started = outage_started or now
                    if now - outage_started > self.reconnect_timeout:
                        log.error(
                            "stream hub: Redis unreachable for %.0fs, failing %d waiting "
                            "consumers: %s",
                            now - outage_started,
                            sum(len(w) for w in self._waiting.values()),
                            exc,
                        )
                        self._fail_all(exc)
                        outage_started, failures = None, 0
                        continue
                    delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                    failures += 1
                    log.warning("stream hub: read failed (%s); retrying in %ss", exc, delay)
                    await asyncio.sleep(delay)
                    continue
                failures, outage_started = 0, None
                # let the consumers just served write and come back before the next XREAD
                # is built, so they are in it instead of each needing an unblock
                await asyncio.sleep(0)
        finally:
            self._fail_all(HubClosedError("the stream hub's reader stopped"))

    async def _read(self) -> tuple[list[Any], dict[str, tuple[int, int]]]:
        """One XREAD over every stream someone waits on, each from its smallest position."""
        if self._reader_id is None:
            self._reader_id = int(await self._reader.client_id())
        streams: dict[KeyT, StreamIdT] = {}
        positions: dict[str, tuple[int, int]] = {}
        oldest = time.monotonic()
        for stream, waiters in self._waiting.items():
            first = min(waiters, key=lambda w: w.position)
            streams[stream], positions[stream] = first.after, first.position
            oldest = min(oldest, *(w.since for w in waiters))
        # block no longer than until the longest waiter has waited a whole BLOCK (then its
        # keys are checked); never 0, which would block forever
        due = oldest + self.block_ms / 1000 - time.monotonic()
        block = max(1, min(self.block_ms, int(due * 1000)))
        self._read_seq += 1
        self._in_flight, self._unblock_for = positions, None
        self.reads += 1
        try:
            reply: list[Any] = await self._reader.xread(streams, count=self.count, block=block)
        finally:
            self._in_flight = None
        return reply or [], positions

    def _dispatch(self, reply: list[Any], positions: dict[str, tuple[int, int]]) -> None:
        """Give each waiter of a stream the entries after its own position. A waiter behind
        the position the stream was read from (it came after the read was sent) gets nothing
        from this read: the entries in between are not in it."""
        for name, entries in reply:
            stream = name.decode() if isinstance(name, bytes) else str(name)
            waiters = self._waiting.get(stream)
            if not waiters or not entries:
                continue
            first = _position(entries[0][0])
            read_from = positions[stream]
            for waiter in list(waiters):
                if waiter.future.done() or waiter.position < read_from:
                    continue
                if first > waiter.position:
                    mine = entries
                else:
                    mine = [e for e in entries if _position(e[0]) > waiter.position]
                if mine:
                    waiter.future.set_result(mine)
                    waiters.discard(waiter)
            if not waiters:
                del self._waiting[stream]

    async def _check_idle(self) -> None:
        """Answer the waiters that have waited a whole BLOCK: ``JobNotFoundError`` if their
        keys expired meanwhile, otherwise an empty batch (they wait again). Waiters half-way
        there are checked too, so idle consumers cost one pipeline per half BLOCK, not one
        each."""
        now = time.monotonic()
        block = self.block_ms / 1000
        waiters = [w for ws in self._waiting.values() for w in ws]
        if not any(now - w.since >= block for w in waiters):
            return
        idle = [w for w in waiters if now - w.since >= block / 2 and not w.future.done()]
        async with self._redis.pipeline(transaction=False) as pipe:
            for waiter in idle:
                pipe.exists(waiter.stream, waiter.job_key)
            found = await pipe.execute()
        for waiter, exists in zip(idle, found, strict=True):
            if waiter.future.done():
                continue
            if exists:
                waiter.future.set_result([])
            else:
                waiter.future.set_exception(JobNotFoundError(waiter.job_id))
            self._discard(waiter)

    async def _unblocker(self) -> None:
        """Send the unblocks ``_add`` asks for, from the pooled client (the reader is busy)."""
        while True:
            await self._unblock_wanted.wait()
            self._unblock_wanted.clear()
            for _ in range(_UNBLOCK_TRIES):
                read, reader_id = self._unblock_for, self._reader_id
                if read != self._read_seq or self._in_flight is None or reader_id is None:
                    break  # that read has ended (the next one is built with the newcomer)
                try:
                    woke = await self._redis.client_unblock(reader_id)
                except _REDIS_ERRORS as exc:
                    log.warning("stream hub: CLIENT UNBLOCK failed: %s", exc)
                    break  # the read ends by its BLOCK timeout instead
                if woke:
                    self.unblocks += 1
                    break
                # 0: not blocked (yet): the XREAD may not have reached the server; try again
                # once the loop has run, unless the read has ended meanwhile
                await asyncio.sleep(0.001)
