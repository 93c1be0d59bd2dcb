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


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


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
    after: str
    position: tuple[int, int]
    future: asyncio.Future[list[Entry]]
    since: float = field(default_factory=time.monotonic)


class _Stream:
    """A stream that consumers wait on, with its XREAD arguments encoded once: the key, and
    the id it is read after (the smallest of its waiters' positions), re-encoded only when
    that changes. A read over hundreds of streams then costs a join, not hundreds of
    argument encodings."""

    __slots__ = ("id_arg", "job_key", "key", "key_arg", "name", "position", "read", "waiters")

    def __init__(self, name: bytes, job_key: str) -> None:
        self.name = name  # the stream's key, as XREAD replies name it
        self.key = name.decode()
        self.job_key = job_key
        self.key_arg = _bulk(name)
        self.waiters: set[_Waiter] = set()
        self.position: tuple[int, int] = (0, 0)
        self.id_arg = b""
        self.read: tuple[int, tuple[int, int]] | None = None  # (read number, position) in it

    def add(self, waiter: _Waiter) -> None:
        if not self.waiters or waiter.position < self.position:
            self.position, self.id_arg = waiter.position, _bulk(waiter.after.encode())
        self.waiters.add(waiter)

    def discard(self, waiter: _Waiter) -> None:
        self.waiters.discard(waiter)
        if self.waiters and waiter.position == self.position:
            first = min(self.waiters, key=lambda w: w.position)
            self.position, self.id_arg = first.position, _bulk(first.after.encode())


class Hub:
    """Multiplexes the event streams a process's consumers are waiting on over one XREAD.

    ``start()`` it once per process (the API's lifespan) and ``stop()`` it at the end;
    ``tail()`` is the per-consumer view. ``redis`` is the process's pooled client (for the
    unblocks and the expiry checks); ``reader`` a single-connection client of its own
    (``connections.connect_reader``), which the hub drives directly.
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
        self._streams: dict[bytes, _Stream] = {}  # by key: the streams someone waits on
        self._wake = asyncio.Event()
        self._read_seq = 0  # the number of the read in flight, if any
        self._in_flight = False
        self._unblock_for: int | None = None  # the read an unblock was asked for
        self._unblock_wanted = asyncio.Event()
        self._next_check = 0.0  # when waiters that have waited long are next checked
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def reader_id(self) -> int | None:
        """CLIENT ID of the reader's connection (None before its first read or after an
        error, until it reconnects)."""
        return self._reader_id

    @property
    def waiting(self) -> int:
        """How many consumers wait for entries now."""
        return sum(len(stream.waiters) for stream in self._streams.values())

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
        future: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(job_id, after, id_tuple(after), future)
        stream = self._add(waiter)
        try:
            # the hub answers every waiter within about a BLOCK, or fails it after the
            # reconnect timeout; this deadline only guards against a hub that stopped answering
            async with asyncio.timeout(2 * self.block_ms / 1000 + self.reconnect_timeout + 30):
                return await future
        finally:
            self._discard(stream, waiter)

    def _add(self, waiter: _Waiter) -> _Stream:
        name = self.keys.events(waiter.job_id).encode()
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(name, self.keys.job(waiter.job_id))
        stream.add(waiter)
        self._wake.set()
        if not self._in_flight or self._unblock_for is not None:
            return stream  # the next read is built with it, or an unblock is on its way
        read = stream.read
        if read is None or read[0] != self._read_seq or waiter.position < read[1]:
            self._unblock_for = self._read_seq  # the read in flight does not cover it
            self._unblock_wanted.set()
        return stream

    def _discard(self, stream: _Stream, waiter: _Waiter) -> None:
        stream.discard(waiter)
        if not stream.waiters and self._streams.get(stream.name) is stream:
            del self._streams[stream.name]
        if not waiter.future.done():
            waiter.future.cancel()

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            for waiter in stream.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        self._streams.clear()

    async def _run(self) -> None:
        failures = 0
        outage_started: float | None = None
        try:
            while True:
                if not self._streams:
                    self._wake.clear()
                    await self._wake.wait()  # nobody waits: no reads at all
                    continue
                try:
                    self._dispatch(await self._read())
                    if time.monotonic() >= self._next_check:
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
                            self.waiting,
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

    async def _read(self) -> list[Any]:
        """One XREAD over every stream someone waits on, each after its smallest position.

        The command is sent on the reader's connection as pre-encoded RESP (see ``_Stream``);
        the connection's own read_response disconnects it on any error or cancellation."""
        connection = (await self._reader.initialize()).connection
        assert connection is not None  # a single-connection client holds one
        if self._reader_id is None:
            await connection.send_command("CLIENT", "ID")
            self._reader_id = int(await connection.read_response())
        now = time.monotonic()
        if self._next_check <= now:
            self._next_check = now + self.block_ms / 2000
        # never BLOCK 0, which waits forever; wake for the next expiry check at the latest
        block = max(1, min(self.block_ms, int((self._next_check - now) * 1000)))
        self._read_seq += 1
        streams = list(self._streams.values())
        for stream in streams:
            stream.read = (self._read_seq, stream.position)
        command = b"".join(
            (
                b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n" % (6 + 2 * len(streams)),
                _bulk(b"%d" % self.count),
                b"$5\r\nBLOCK\r\n",
                _bulk(b"%d" % block),
                b"$7\r\nSTREAMS\r\n",
                *(stream.key_arg for stream in streams),
                *(stream.id_arg for stream in streams),
            )
        )
        self._in_flight, self._unblock_for = True, None
        self.reads += 1
        try:
            await connection.send_packed_command(command)
            reply: list[Any] | None = await connection.read_response()
        finally:
            self._in_flight = False
        return reply or []

    def _dispatch(self, reply: list[Any]) -> None:
        """Give each waiter of a stream the entries after its own position. A waiter behind
        the position the stream was read from (it came after the read was sent) gets nothing
        from this read: the entries in between are not in it."""
        for name, raw_entries in reply:
            stream = self._streams.get(name)
            if stream is None or stream.read is None or not raw_entries:
                continue
            entries: list[Entry] = [
                (entry_id, dict(zip(values[::2], values[1::2], strict=True)))
                for entry_id, values in raw_entries
            ]
            first = _position(entries[0][0])
            read_from = stream.read[1]
            for waiter in list(stream.waiters):
                if waiter.future.done() or waiter.position < read_from:
                    continue
                if first > waiter.position:
                    mine = entries
                else:
                    mine = [e for e in entries if _position(e[0]) > waiter.position]
                if mine:
                    waiter.future.set_result(mine)
                    self._discard(stream, waiter)

    async def _check_idle(self) -> None:
        """Answer the waiters that have waited half a BLOCK or more: ``JobNotFoundError`` if
        their keys expired meanwhile, otherwise an empty batch (they wait again). Runs every
        half BLOCK, so an idle consumer is answered within a BLOCK, at one pipeline for all."""
        now = time.monotonic()
        self._next_check = now + self.block_ms / 2000
        idle = [
            (stream, waiter)
            for stream in self._streams.values()
            for waiter in stream.waiters
            if now - waiter.since >= self.block_ms / 2000
        ]
        if not idle:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for stream, _ in idle:
                pipe.exists(stream.key, stream.job_key)
            found = await pipe.execute()
        for (stream, waiter), exists in zip(idle, found, strict=True):
            if waiter.future.done():
                continue
            if exists:
                waiter.future.set_result([])
            else:
                waiter.future.set_exception(JobNotFoundError(waiter.job_id))
            self._discard(stream, waiter)

    async def _unblocker(self) -> None:
        """Send the unblocks ``_add`` asks for, from the pooled client (the reader is busy)."""
        while True:
            await self._unblock_wanted.wait()
            self._unblock_wanted.clear()
            for _ in range(_UNBLOCK_TRIES):
                read, reader_id = self._unblock_for, self._reader_id
                if read != self._read_seq or not self._in_flight or reader_id is None:
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
