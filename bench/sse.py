"""A lean SSE consumer of ``GET /v1/jobs/{id}/events`` that timestamps what it receives.

The benchmark client shares two cores with everything it measures, so it must cost little per
event: an asyncio protocol, a minimal HTTP/1.1 chunked decoder, and no JSON parsing (an event's
type and id come from the ``event:`` and ``id:`` lines). Every event of one socket read gets the
``time.time()`` taken when that read arrived; the clock is the one the provider, the worker and
Redis stamp with (same machine). It also reads the OpenAI-compatible stream (``POST
/v1/chat/completions`` with ``stream: true``), whose messages have no ``event:`` line: there a
message's kind comes from its compact JSON (``openai_type``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

TERMINAL = frozenset({"job.completed", "job.failed", "job.cancelled"})

Sink = Callable[[float, str, str], None]  # (receive time, event type, event id)


def openai_type(data: bytes) -> str:
    """The event an OpenAI-format message stands for, as far as the bench needs to know: a
    content chunk (``"delta":{"content":`` first: the role chunk starts with ``"role"``), the end
    (``[DONE]``) or an error; "" for the others (role, finish and usage chunks)."""
    if data == b"[DONE]":
        return "job.completed"
    if data.startswith(b'{"error"'):
        return "job.failed"
    return "content.delta" if b'"delta":{"content":' in data else ""


class SseError(Exception):
    """The events request failed (status other than 200, or the connection broke early)."""


@dataclass
class StreamLog:
    """What one consumer saw of one job."""

    job_id: str
    first_event_at: float | None = None
    started_at: float | None = None  # receive time of job.started
    started_id: str = ""
    content_at: list[float] = field(default_factory=list)  # receive times of content.delta
    content_ids: list[str] = field(default_factory=list)
    terminal: str = ""
    retries: int = 0  # job.retrying events: a new attempt restarted the output
    keep_ids: bool = True

    def __call__(self, at: float, type_: str, event_id: str) -> None:
        if self.first_event_at is None:
            self.first_event_at = at
        if type_ == "content.delta":
            self.content_at.append(at)
            if self.keep_ids:
                self.content_ids.append(event_id)
        elif type_ == "job.started" and self.started_at is None:
            self.started_at, self.started_id = at, event_id
        elif type_ == "job.retrying":
            # the next attempt calls the provider again from scratch: keep only its output
            self.retries += 1
            self.content_at.clear()
            self.content_ids.clear()
        elif type_ in TERMINAL:
            self.terminal = type_


class _Protocol(asyncio.Protocol):
    def __init__(
        self,
        request: bytes,
        sink: Sink,
        done: asyncio.Future[None],
        on_head: Callable[[str], None] | None = None,
        openai: bool = False,
    ) -> None:
        self.request = request
        self.sink = sink
        self.openai = openai  # an OpenAI-format stream: kinds from the data (openai_type)
        self.done = done
        self.on_head = on_head  # called with the response head once it is read (status 200)
        self.transport: asyncio.BaseTransport | None = None
        self.raw = bytearray()
        self.body = bytearray()
        self.head_done = False
        self.chunked = False
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.raw += data
        if not self.head_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.raw[:end]).decode("latin-1")
            del self.raw[: end + 4]
            status = head.split(" ", 2)[1]
            if status != "200":
                self._fail(SseError(f"events request answered {status}"))
                return
            self.chunked = "transfer-encoding: chunked" in head.lower()
            self.head_done = True
            if self.on_head is not None:
                self.on_head(head)
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.raw
            self.raw.clear()
        self._events(now)

    def _dechunk(self) -> None:
        raw = self.raw
        while True:
            eol = raw.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(raw[:eol]).split(b";")[0], 16)
            if size == 0:
                raw.clear()
                return
            if len(raw) < eol + 2 + size + 2:
                return
            self.body += raw[eol + 2 : eol + 2 + size]
            del raw[: eol + 2 + size + 2]

    def _events(self, now: float) -> None:
        body = self.body
        while not self.finished:
            end = body.find(b"\r\n\r\n")  # the SSE separator (docs/protocol.md §6)
            if end < 0:
                return
            type_ = event_id = ""
            for line in bytes(body[:end]).split(b"\r\n"):
                if line.startswith(b"event: "):
                    type_ = line[7:].decode()
                elif line.startswith(b"id: "):
                    event_id = line[4:].decode()
                elif self.openai and line.startswith(b"data: "):
                    type_ = openai_type(line[6:])
            del body[: end + 4]
            if not type_:
                continue  # a heartbeat comment
            self.sink(now, type_, event_id)
            if type_ in TERMINAL:
                self.finished = True
                if not self.done.done():
                    self.done.set_result(None)
                assert self.transport is not None
                self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(SseError(f"connection closed before the terminal event ({exc})"))


async def _exchange(
    host: str,
    port: int,
    request: bytes,
    sink: Sink,
    within: float,
    on_head: Callable[[str], None] | None = None,
    openai: bool = False,
) -> None:
    """Send ``request`` on a connection of its own and read its events into ``sink`` until the
    terminal one; raise SseError, or TimeoutError after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _Protocol(request, sink, done, on_head, openai), host, port
    )
    try:
        async with asyncio.timeout(within):
            await done
    finally:
        transport.close()


async def follow(host: str, port: int, job_id: str, sink: Sink, *, within: float = 120.0) -> None:
    """Read the job's events until its terminal one; raise SseError, or TimeoutError after
    ``within`` seconds."""
    request = (
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    await _exchange(host, port, request, sink, within)


async def submit_and_follow(
    host: str,
    port: int,
    body: bytes,
    sink: Sink,
    *,
    within: float = 120.0,
    answered: Callable[[], None] | None = None,
    openai: bool = False,
) -> str:
    """Queue a job and read its events until the terminal one, in one request (``POST
    /v1/jobs`` with ``Accept: text/event-stream``); return its id. ``answered`` is called once
    the response head has arrived (the job is queued). Raises as ``follow``. With ``openai``
    (and ``"stream": true`` in ``body``), the same through the OpenAI-compatible surface,
    ``POST /v1/chat/completions``."""
    job_id = ""

    def on_head(head: str) -> None:
        nonlocal job_id
        for line in head.split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-tokenspool-job-id":
                job_id = value.strip()
        if answered is not None:
            answered()

    path = b"/v1/chat/completions" if openai else b"/v1/jobs"
    request = (
        b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
        % (path, host.encode(), port, len(body), body)
    )
    await _exchange(host, port, request, sink, within, on_head, openai)
    return job_id


async def post_json(host: str, port: int, path: str, body: bytes, *, within: float = 30.0) -> bytes:
    """POST ``body`` (JSON) on a connection of its own and return the response body; raise
    SseError unless the status is 2xx. As lean as ``follow``: the relay benchmark submits
    hundreds of jobs while the streams it measures run on the same two cores, and httpx costs
    the client about a millisecond of CPU per request there."""
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (path.encode(), host.encode(), port, len(body), body)
            )
            raw = await reader.read(-1)  # the server closes after its answer
        finally:
            writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.1 ") else b"?"
    if not status.startswith(b"2"):
        raise SseError(f"POST {path} answered {status.decode(errors='replace')}: {rest[:200]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        raise SseError(f"POST {path}: a chunked answer, which this client does not read")
    return rest
