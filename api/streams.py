"""What the streaming routes (SSE, OpenAI-format SSE, WebSocket) share."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import anyio
from redis.exceptions import ResponseError
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.event import ensure_bytes
from sse_starlette.sse import SendTimeoutError
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from tokenspool.connections import pipelined
from tokenspool.errors import JobNotFoundError
from tokenspool.events import TERMINAL_TYPES, as_text, entry_json
from tokenspool.hub import Hub
from tokenspool.keys import E_TYPE
from tokenspool.metrics import ApiMetrics
from tokenspool.store import JobStore
from tokenspool.tailer import id_tuple, raise_if_trimmed
from tokenspool.waits import Entry

log = logging.getLogger(__name__)

SERVER_SEND = "tokenspool.server_send"  # scope key: the server's own send (``api.app.App``)


def hub_of(connection: HTTPConnection) -> Hub:
    """The app's stream hub (started in the lifespan)."""
    hub: Hub = connection.app.state.hub
    return hub


class EventStream(EventSourceResponse):
    """sse-starlette's response, its per-send timeout kept by one watchdog per response.

    sse-starlette bounds every send with its own cancel scope and timer: a few microseconds
    per event, a tenth of the API's CPU per relayed chunk under load. A send to a client that
    reads returns at once (uvicorn only waits when the socket's buffer is full), so here a send
    just notes since when the connection has been busy, and a watchdog task beside the stream
    checks every quarter of ``send_timeout``: a send pending longer than that raises
    ``SendTimeoutError``, which ends the response as sse-starlette's own timeout does.

    The body (events and heartbeats) goes to the server's own send, kept in the scope by
    ``api.app.App``, rather than through every middleware's wrapper of ``send``: those look
    only at the response start, which still goes through them, and four wrappers cost about a
    tenth of the API's CPU per relayed event.

    A heartbeat goes out only once nothing was sent for ``ping`` seconds (sse-starlette sends
    one every ``ping`` seconds regardless): it is there to keep an idle connection open through
    proxies, and a stream that carries events is not idle.

    sse-starlette's coroutines (the stream, heartbeats, the client's disconnect, the server's
    shutdown) and the watchdog run as plain asyncio tasks, supervised as its task group does:
    the first of the four to end ends the others, and the first error is raised. Its anyio task
    group left about 150 objects per stream in reference cycles through the tracebacks of the
    tasks it cancelled. Those objects lived as long as the stream, so they sat in the old
    generation, and only a full collection freed them: with 2,000 streams ending, a pass of
    over half a second. Here each task's exception is taken and dropped, and nothing is left in
    a cycle.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        send_timeout: float,
        ping: float,
        headers: Mapping[str, str],
        ping_message_factory: Callable[[], ServerSentEvent] | None = None,
    ) -> None:
        super().__init__(
            content,
            ping=ping,
            ping_message_factory=ping_message_factory,
            headers=headers,
        )
        self._limit = send_timeout  # sse-starlette's own per-send timer stays off
        self._sending = 0  # sends in progress (a heartbeat can overlap an event)
        self._busy_since = 0.0  # when the sends in progress began
        self._last_sent = time.monotonic()  # when the last send ended (the response start)
        self._body_send: Send | None = None
        # uvicorn's flow control of the connection (``write_paused``), if the body goes to
        # uvicorn's own send: only then can a send be made without waiting (``send_now``)
        self._flow: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() == "HEAD":
            await super().__call__(scope, receive, send)  # no stream to run
            return
        self._body_send = scope.get(SERVER_SEND)
        self._flow = _uvicorn_flow(self._body_send)
        ending = [
            asyncio.create_task(self._stream_response(send)),
            asyncio.create_task(self._listen_for_exit_signal_with_grace()),
            asyncio.create_task(self._listen_for_disconnect(receive)),
        ]
        if self._ping_interval > 0:
            ending.append(asyncio.create_task(self._ping(send)))
        tasks = [*ending, asyncio.create_task(self._watch())]  # the watchdog only raises
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            while not any(t in done for t in ending) and not _failed(done):
                done, _ = await asyncio.wait(
                    [t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED
                )
        finally:
            for task in tasks:
                task.cancel()
            # every task ends promptly once cancelled; their outcomes are taken here (so
            # asyncio does not log them as never retrieved) and dropped with their tracebacks
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    if failure is None and not isinstance(outcome, asyncio.CancelledError):
                        failure = outcome
                    else:
                        _drop(outcome)
            del outcomes, tasks, ending
        if failure is not None:
            try:
                raise failure
            finally:
                failure = None
        if self.background is not None:
            await self.background()

    def can_send_now(self) -> bool:
        """Whether ``send_now`` would send at once: no other send is in progress, the stream
        has not ended, and uvicorn's socket is not paused for a client that is behind.

        Only for uvicorn's HTTP protocols, whose ``send`` waits only for a paused socket to
        drain (before it writes anything) and otherwise writes without waiting."""
        if self._flow is None or self._sending or not self.active:
            return False
        return getattr(self._flow, "write_paused", True) is False

    def send_now(self, body: bytes) -> bool:
        """Send ``body`` from the caller's task, without waiting: True once it was handed to
        the connection, False (nothing sent) when it must go through the stream's task
        (``can_send_now``). The server's send is stepped once; should it wait after all, it
        is closed there, before it wrote anything."""
        if not self.can_send_now():
            return False
        assert self._body_send is not None  # can_send_now checked it
        step = cast(
            Coroutine[Any, Any, None],
            self._body_send({"type": "http.response.body", "body": body, "more_body": True}),
        )
        try:
            step.send(None)
        except StopIteration:
            self._last_sent = time.monotonic()
            return True
        step.close()  # it waits for the socket to drain: the stream's task sends instead
        return False

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self._body_send is not None and message["type"] == "http.response.body":
            send = self._body_send
        if not self._sending:
            self._busy_since = time.monotonic()
        self._sending += 1
        try:
            await send(message)
        finally:
            self._sending -= 1
            self._last_sent = time.monotonic()

    async def _stream_response(self, send: Send) -> None:
        """sse-starlette's loop, for body iterators that yield bytes: without its per-event
        encoding check and debug log (a few microseconds per event). A failed send closes the
        iterator first, as sse-starlette's loop does."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            try:
                await self._send_with_timeout(
                    send, {"type": "http.response.body", "body": chunk, "more_body": True}
                )
            except BaseException:
                await self._close_body()
                raise
        async with self._send_lock:
            self.active = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _ping(self, send: Send) -> None:
        """sse-starlette's heartbeat, sent only after ``ping`` seconds without a send."""
        while self.active:
            quiet = 0.0 if self._sending else time.monotonic() - self._last_sent
            if quiet < self._ping_interval:
                await asyncio.sleep(self._ping_interval - quiet)
                continue
            ping = ensure_bytes(
                self.ping_message_factory()
                if self.ping_message_factory
                else ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep),
                self.sep,
            )
            async with self._send_lock:
                if self.active:  # a failed send ends the response, as in sse-starlette
                    await self._send_with_timeout(
                        send, {"type": "http.response.body", "body": ping, "more_body": True}
                    )

    async def _close_body(self) -> None:
        """Run the body iterator's cleanup (bounded, shielded from the cancellation that may be
        on its way), as sse-starlette does when a send fails."""
        aclose = getattr(self.body_iterator, "aclose", None)
        if aclose is None:
            return
        with anyio.move_on_after(self._cleanup_timeout, shield=True):
            try:
                await aclose()
            except Exception:
                log.exception("closing an event stream's body after a failed send")

    async def _watch(self) -> None:
        while True:
            await anyio.sleep(self._limit / 4)
            if self._sending and time.monotonic() - self._busy_since > self._limit:
                raise SendTimeoutError()


def _uvicorn_flow(send: Send | None) -> Any:
    """The flow control of the connection ``send`` writes to, if ``send`` is uvicorn's own
    (``EventStream.send_now``); else None."""
    server = getattr(send, "__self__", None)
    if type(server).__module__ in _UVICORN_PROTOCOLS and type(server).__name__ == (
        "RequestResponseCycle"
    ):
        return getattr(server, "flow", None)
    return None


_UVICORN_PROTOCOLS = frozenset(
    {"uvicorn.protocols.http.httptools_impl", "uvicorn.protocols.http.h11_impl"}
)


def _failed(done: set[asyncio.Task[None]]) -> bool:
    return any(not t.cancelled() and t.exception() is not None for t in done)


def _drop(exc: BaseException) -> None:
    """Cut an exception from its traceback and chained exceptions: the frames a traceback
    holds can refer back to the exception's task, which would make a cycle."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        nxt = exc.__cause__ or exc.__context__
        exc.__cause__ = exc.__context__ = None
        exc = nxt  # type: ignore[assignment]


def wants_event_stream(accept: str | None) -> bool:
    """True when an ``Accept`` header asks for ``text/event-stream`` by name (with a q-value
    above 0). Wildcards do not: a client that accepts anything gets the JSON answer."""
    for media_range in (accept or "").split(","):
        kind, *params = (part.strip() for part in media_range.split(";"))
        if kind.lower() != "text/event-stream":
            continue
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def sse_frames(job_id: str, batch: list[Entry], job: bytes | None = None) -> bytes:
    """A batch of entries as SSE events (``id``, ``event``, ``data`` = the event's JSON), byte
    for byte what sse-starlette's ``ServerSentEvent(id=, event=, data=model_dump_json())``
    writes with its default ``\\r\\n`` separator: ids and types hold no line breaks, nor does
    compact JSON. ``job``: ``json.dumps(job_id)`` encoded, for a caller that sends many."""
    job = job or json.dumps(job_id).encode()
    return b"".join(
        b"id: %s\r\nevent: %s\r\ndata: %s\r\n\r\n"
        % (entry_id, fields.get(b"t", b""), entry_json(job_id, entry_id, fields, job))
        for entry_id, fields in batch
    )


@dataclass(frozen=True)
class StreamHead:
    """The stream's newest entry when a client connects."""

    last: tuple[int, int]  # its id; (0, 0) for an empty stream
    terminal: bool  # whether it is the job's terminal event

    def ended_by(self, start: str) -> bool:
        """True if a reader resuming after ``start`` has nothing left to read (it would
        otherwise wait until the keys expire)."""
        return start != "0" and self.terminal and self.last <= id_tuple(start)


async def stream_head(store: JobStore, job_id: str) -> StreamHead:
    """Read the stream's newest entry once: what a client connecting now replays rather
    than waits for, and whether the job already ended."""
    (last,) = await pipelined(store.redis, [_last_entry(store.keys.events(job_id))])
    if isinstance(last, Exception):
        raise last
    return _head(last)


def _last_entry(events: str) -> tuple[Any, ...]:
    """The command whose raw reply `_head` reads: the stream's newest entry."""
    return ("XREVRANGE", events, "+", "-", "COUNT", 1)


def _head(last: list[Any]) -> StreamHead:
    """From the raw reply of XREVRANGE ... COUNT 1 (fields as a flat list)."""
    if not last:
        return StreamHead((0, 0), terminal=False)
    entry_id, fields = last[0]
    pairs = zip(fields[::2], fields[1::2], strict=True)
    kind = next((as_text(v) for f, v in pairs if as_text(f) == E_TYPE), None)
    return StreamHead(id_tuple(as_text(entry_id)), terminal=kind in TERMINAL_TYPES)


async def open_stream(store: JobStore, job_id: str, start: str) -> StreamHead:
    """What a streaming route checks before it streams, in one round trip: that the job
    exists (else ``JobNotFoundError``), that nothing after ``start`` was trimmed (else
    ``StreamGoneError``, as ``check_retained``), and the stream's head (``stream_head``).
    Packed and read raw (``connections.pipelined``): redis-py's pipeline cost about a fifth
    of the API's CPU for a stream that replays a finished job."""
    events = store.keys.events(job_id)
    found, info, last = await pipelined(
        store.redis,
        [
            ("EXISTS", store.keys.job(job_id), events),
            ("XINFO", "STREAM", events),
            _last_entry(events),
        ],
    )
    for reply in (found, last):
        if isinstance(reply, Exception):
            raise reply
    if not found:
        raise JobNotFoundError(job_id)
    if isinstance(info, ResponseError) and "no such key" in str(info).lower():
        info = []  # the job hash without its stream: nothing was trimmed
    elif isinstance(info, Exception):
        raise info
    raise_if_trimmed({as_text(k): v for k, v in zip(info[::2], info[1::2], strict=True)}, start)
    return _head(last)


@contextmanager
def tracked(metrics: ApiMetrics, transport: str, start: str) -> Iterator[None]:
    """Count a stream client while it is connected (gauge, duration, resumes)."""
    if start != "0":
        metrics.stream_resumes.labels(transport).inc()
    gauge = metrics.stream_clients.labels(transport)
    gauge.inc()
    began = time.monotonic()
    try:
        yield
    finally:
        gauge.dec()
        metrics.stream_seconds.labels(transport).observe(time.monotonic() - began)
