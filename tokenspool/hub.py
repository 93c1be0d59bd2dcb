"""One shared reader for every stream consumer of a process, woken by the writers.

``tail()`` gives each consumer its own ``XREAD BLOCK`` on its own connection: a round trip per
chunk per consumer, and a pooled connection per open stream. The hub instead keeps the
consumers of a process and reads a job's stream only when it may hold something a waiting
consumer has not got. Every script that appends to a stream also PUBLISHes on the job's
channel (``Keys.written``): the worker's writes publish the entries they appended, the other
scripts the id of their last entry. The hub SUBSCRIBEs to the channels of the jobs it has
consumers for. A waiter that the notified entries follow with no gap (the first new one has
the ordinal after the waiter's last) is handed them at once, with no read: the common case of
a consumer keeping up. A consumer may also ``push``: take such a hand-over at once, from the
listener, writing it to its client without its task waking (``tail``). Otherwise the hub
reads only the notified streams, each from its smallest waiting position, with one
non-blocking ``XREAD COUNT STREAMS ...``. One read is in flight at a time: notifications that
arrive meanwhile are gathered into the next, so reads batch themselves under load. Redis then
works per entry written, not per open stream.
The pub/sub side (subscribing to match the consumers, reading the notifications) is
``subscriptions.Subscriptions``; what the hub keeps per job, and how it hands entries to the
waiting consumers, is ``waits.JobStream``.

It is a pull model as ``tail()`` is: a consumer busy writing to its client is not waiting, so
nothing is read or held for it, and what it is given is at most one ``COUNT`` batch.

For each stream the hub knows an ``end``: an id such that every entry after it is still to be
notified (or None: unknown, a read will tell). A waiter at or after ``end`` needs no read. A
lost notification costs latency, never data (the ordinals keep a hand-over from skipping it):

- a consumer's first wait is a catch-up read, after its job's SUBSCRIBE was sent; the
  subscription's confirmation makes ``end`` unknown again (entries may have been written
  between that read and the SUBSCRIBE), and so does the resubscription after the pub/sub
  connection reconnects;
- every ``block_ms`` a sweep reads every stream someone waits on, answers the waiters whose
  keys expired with ``JobNotFoundError`` and the others that waited half of it with an empty
  batch (their wait starts over, so no wait outlives its deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from .connections import pack
from .errors import (
    REDIS_UNREACHABLE,
    HubClosedError,
    JobNotFoundError,
)
from .keys import Keys
from .subscriptions import Subscriptions
from .tailer import RECONNECT_DELAYS, id_tuple, parse_event_id
from .tasks import stop_task
from .waits import (
    Cursor,
    Entry,
    JobStream,
    Position,
    Push,
    Waiter,
    notified_entries,
    notified_position,
    position_of,
    stream_id,
)

log = logging.getLogger(__name__)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("stream hub: %s stopped", task.get_name(), exc_info=task.exception())


class Hub:
    """Reads the event streams a process's consumers wait on when their writers say so.

    ``start()`` it once per process (the API's lifespan) and ``stop()`` it at the end;
    ``tail()`` is the per-consumer view. ``redis`` is the process's pooled client (for the
    expiry checks); ``reader`` a single-connection client of its own
    (``connections.connect_reader``) for the reads, whose pool also gives the pub/sub
    connection.
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
        self.streams_read = 0  # streams named in them
        self.notifications = 0  # pub/sub messages about new entries in a stream someone reads
        self.handed_over = 0  # entries given to waiters straight from a notification
        self.pushed = 0  # of those, entries the consumer took without waking its task
        self.catch_ups = 0  # ends forgotten by a new consumer or a (re)subscription
        self.sweeps = 0
        self._redis = redis
        self._reader = reader
        self._subscriptions = Subscriptions(
            reader, self._notified, self._subscribed, listen_timeout=block_ms / 1000
        )
        self._streams: dict[str, JobStream] = {}  # by job id: the jobs with consumers here
        self._by_channel: dict[bytes, JobStream] = {}
        self._due: dict[JobStream, None] = {}  # streams to read next (insertion-ordered set)
        self._wake = asyncio.Event()  # something is due
        self._next_sweep = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def waiting(self) -> int:
        """How many consumers wait for entries now."""
        return sum(len(stream.waiters) for stream in self._streams.values())

    @property
    def subscribed(self) -> int:
        """How many jobs' channels the hub listens on (the jobs with consumers here)."""
        return self._subscriptions.subscribed

    def stats(self) -> dict[str, int]:
        """The counters, for metrics."""
        return {
            "reads": self.reads,
            "streams_read": self.streams_read,
            "notifications": self.notifications,
            "handed_over": self.handed_over,
            "pushed": self.pushed,
            "catch_ups": self.catch_ups,
            "sweeps": self.sweeps,
            "waiting": self.waiting,
            "jobs": len(self._streams),
        }

    async def start(self) -> None:
        self._next_sweep = time.monotonic() + self.block_ms / 1000
        self._tasks = [
            asyncio.create_task(self._run(), name="tokenspool-hub-reader"),
            asyncio.create_task(self._subscriptions.listen(), name="tokenspool-hub-listener"),
            asyncio.create_task(self._subscriptions.apply(), name="tokenspool-hub-subscriber"),
        ]
        for task in self._tasks:
            task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop reading; every consumer still waiting gets ``HubClosedError``."""
        # every loop also ends on its own once _closed is set: on Python 3.11 redis-py's sends
        # run under asyncio.wait_for, which loses a cancellation that arrives as the send
        # completes (bpo-42130), and the task would go on waiting
        self._closed = True
        self._wake.set()
        self._subscriptions.closing()
        for task in reversed(self._tasks):
            await stop_task(task)
        self._fail_all(HubClosedError("the stream hub stopped"))
        await self._subscriptions.aclose()

    async def tail(
        self, job_id: str, after: str = "0", push: Push | None = None
    ) -> AsyncGenerator[list[Entry], None]:
        """Yield the entries of ``job_id`` after ``after`` in batches, until (and including)
        the terminal one. The caller checked that the job exists and that ``after`` is
        retained (``tailer.check_retained``), as it must answer those before streaming.

        ``push``: while this generator waits, entries handed over from a notification go to it
        first, from the hub's listener (``waits.Push``, ``Waiter.pushed``), so a consumer
        keeping up relays them without its task waking; those it takes are not yielded.

        Like ``tail()``: raises ``StreamGoneError`` when ordinals jump (entries were trimmed
        before they were read), ``JobNotFoundError`` when the keys expire while it waits, and
        the Redis error when Redis stays unreachable for ``reconnect_timeout``."""
        last = parse_event_id(after)
        cursor = Cursor(job_id, id_tuple(last), 1 if last == "0" else None)
        stream = self._open(job_id)
        try:
            first = True
            while True:
                entries = await self._next(stream, cursor, catch_up=first, push=push)
                first = False
                if not entries:
                    continue  # the keys still exist after a while: wait again
                batch, ended = cursor.take(entries)
                yield batch
                if ended:
                    return
        finally:
            self._close(stream)

    def _open(self, job_id: str) -> JobStream:
        """Count a consumer of ``job_id``; the first one asks for its channel."""
        if self._closed or not self._tasks or self._tasks[0].done():
            raise HubClosedError("the stream hub is not running")
        stream = self._streams.get(job_id)
        if stream is None:
            stream = self._streams[job_id] = JobStream(job_id, self.keys)
            self._by_channel[stream.channel] = stream
            self._subscriptions.want(stream.channel)
        stream.consumers += 1
        return stream

    def _close(self, stream: JobStream) -> None:
        stream.consumers -= 1
        if stream.consumers == 0 and self._streams.get(stream.job_id) is stream:
            del self._streams[stream.job_id]
            del self._by_channel[stream.channel]
            self._due.pop(stream, None)
            self._subscriptions.drop(stream.channel)

    async def _next(
        self, stream: JobStream, cursor: Cursor, *, catch_up: bool, push: Push | None
    ) -> list[Entry]:
        """Wait for the entries of ``stream`` after ``cursor`` (empty: none for a while);
        ``push`` takes hand-overs meanwhile (``tail``)."""
        if self._closed or self._tasks[0].done():
            raise HubClosedError("the stream hub is not running")
        future: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
        waiter = Waiter(cursor, future, push)
        stream.waiters.add(waiter)
        if catch_up:  # whatever is known of the end was learnt without this consumer
            self.catch_ups += 1
            stream.forget_end()
        if stream.needs_read(waiter.position):
            self._due[stream] = None
            self._wake.set()
        try:
            # no timer per wait: the sweep answers every waiter within a BLOCK, the reader fails
            # them after the reconnect timeout, and a reader that stops fails them all (every
            # wait of the reader is bounded, its connection's reads by the socket timeout)
            return await future
        finally:
            stream.waiters.discard(waiter)
            if not future.done():
                future.cancel()

    def _fail_all(self, exc: BaseException) -> None:
        for stream in self._streams.values():
            stream.fail(exc)
        self._due.clear()

    # -- the reader ---------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        outage_started: float | None = None
        try:
            while not self._closed:
                self._wake.clear()
                wait = self._next_sweep - time.monotonic()
                if not self._due and wait > 0:
                    try:
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    except TimeoutError:
                        pass  # time for the sweep
                try:
                    if time.monotonic() >= self._next_sweep:
                        await self._sweep()
                    if self._due:
                        await self._read()
                except REDIS_UNREACHABLE as exc:
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
                # let the consumers just served write and come back before the next read
                await asyncio.sleep(0)
        finally:
            self._fail_all(HubClosedError("the stream hub's reader stopped"))

    async def _read(self) -> None:
        """One non-blocking XREAD of the due streams, each after its smallest waiting position;
        each waiter gets the entries after its own position."""
        plan: list[tuple[JobStream, Position, int]] = []
        afters: list[str] = []
        for stream in self._due:
            if any(stream.needs_read(w.position) for w in stream.waiters):
                first = min(stream.waiters, key=lambda w: w.position)
                plan.append((stream, first.position, stream.epoch))
                afters.append(stream_id(first.position))
        self._due.clear()
        if not plan:
            return
        try:
            reply = await self._xread(plan, afters)
        except ResponseError as refused:
            if len(plan) == 1:
                plan[0][0].refused(refused)
                return
            # an error reply fails the whole read, though one key is to blame (a key of
            # another type, say): read each stream alone, so only that stream's clients fail
            for item, after in zip(plan, afters, strict=True):
                try:
                    alone = await self._xread([item], [after])
                except ResponseError as refused:
                    item[0].refused(refused)
                    continue
                self._dispatch_reply([item], alone)
            return
        self._dispatch_reply(plan, reply)

    async def _xread(
        self, plan: list[tuple[JobStream, Position, int]], afters: list[str]
    ) -> list[Any] | None:
        self.reads += 1
        self.streams_read += len(plan)
        try:
            # on the reader's connection directly, without Redis.xread's command path and
            # reply callbacks; the connection disconnects itself on any error or
            # cancellation, and reconnects on the next send
            connection = (await self._reader.initialize()).connection
            assert connection is not None  # a single-connection client holds one
            keys = [stream.key for stream, _, _ in plan]
            command = ("XREAD", "COUNT", self.count, "STREAMS", *keys, *afters)
            await connection.send_packed_command(pack([command]), check_health=False)
            reply: list[Any] | None = await connection.read_response()
        except ResponseError:
            raise  # an answer, not a broken connection: the caller decides per stream
        except BaseException:
            for stream, _, _ in plan:  # read them again, whatever happened meanwhile
                stream.forget_end()
                self._due[stream] = None
            raise
        return reply

    def _dispatch_reply(
        self, plan: list[tuple[JobStream, Position, int]], reply: list[Any] | None
    ) -> None:
        got = {
            name: [(entry_id, dict(zip(f[::2], f[1::2], strict=True))) for entry_id, f in raw]
            for name, raw in reply or ()
        }
        for stream, read_from, epoch in plan:
            self._dispatch(stream, read_from, epoch, got.get(stream.key, []))

    def _dispatch(
        self, stream: JobStream, read_from: Position, epoch: int, entries: list[Entry]
    ) -> None:
        full = len(entries) >= self.count
        if full:
            stream.end = None  # the stream may go on after this batch
        elif stream.epoch == epoch:
            # the read saw the stream's end: anything after it comes with a notification
            stream.advance(position_of(entries[-1][0]) if entries else read_from)
        stream.give(entries, read_from)
        # the others are caught up: a notification (handled meanwhile or to come) or a
        # forgotten end already made the stream due again if it is not; a full batch did not
        if full and stream.waiters:
            self._due[stream] = None

    async def _sweep(self) -> None:
        """Read every stream someone waits on (a notification may have been lost), and answer
        the waiters that have waited half a BLOCK or more: ``JobNotFoundError`` if their keys
        expired meanwhile, otherwise an empty batch (they wait again)."""
        now = time.monotonic()
        self._next_sweep = now + self.block_ms / 1000
        self.sweeps += 1
        idle = [
            (stream, waiter)
            for stream in self._streams.values()
            for waiter in stream.waiters
            if now - waiter.since >= self.block_ms / 2000
        ]
        if idle:
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
                    waiter.future.set_exception(JobNotFoundError(stream.job_id))
                stream.waiters.discard(waiter)
        for stream in self._streams.values():
            stream.forget_end()
            if stream.waiters:
                self._due[stream] = None

    # -- notifications (called by the subscriptions' listener) ---------------------------------

    def _notified(self, channel: bytes, data: bytes) -> None:
        """A script appended to the stream of ``channel``'s job; ``data`` is its last id, or
        the entries it appended (``scripts.WRITE``)."""
        stream = self._by_channel.get(channel)
        if stream is None:
            return  # a job whose consumers left (its UNSUBSCRIBE is on its way)
        self.notifications += 1
        entries = notified_entries(data) if b"\n" in data else None
        top = notified_position(entries[-1][0] if entries else data)
        if top is None:
            log.warning("stream hub: job %s: bad notification %r", stream.job_id, data[:200])
            stream.forget_end()
        else:
            if entries and stream.waiters:
                first = top if len(entries) == 1 else position_of(entries[0][0])
                handed, pushed = stream.hand_over(entries, first, top)
                self.handed_over += handed
                self.pushed += pushed
            stream.advance(top)
        for waiter in stream.waiters:
            if top is None or waiter.position < top:
                self._due[stream] = None
                self._wake.set()
                return

    def _subscribed(self, channel: bytes) -> None:
        """Entries written before the subscription took effect were not notified."""
        stream = self._by_channel.get(channel)
        if stream is None:
            return
        self.catch_ups += 1
        stream.forget_end()
        if stream.waiters:
            self._due[stream] = None
            self._wake.set()
