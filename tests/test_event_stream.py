"""The SSE response's send timeout: a client that stops reading is cut off, through a real
uvicorn on loopback (the timeout is kept by a watchdog, not a timer per send)."""

from __future__ import annotations

import asyncio
import gc
import socket
import types
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.app import App
from api.streams import EventStream

CHUNK = b"data: " + b"x" * 65_536 + b"\r\n\r\n"
TOTAL_CHUNKS = 1_000  # 64 MB: far more than the socket buffers between server and client


async def serve(app: Starlette) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # clients may connect at once: the kernel queues them until uvicorn accepts
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    return server, task, port


async def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout() -> None:
    sent = 0
    ended = asyncio.Event()

    async def endless(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            try:
                for _ in range(TOTAL_CHUNKS):
                    yield CHUNK
                    sent += 1
            finally:
                ended.set()

        return EventStream(body(), ping=0, send_timeout=0.5, headers={})

    server, task, port = await serve(Starlette(routes=[Route("/events", endless)]))
    # a StreamReader stops reading the socket once 2 x limit bytes wait in it: this client
    # reads the status line, then nothing more until the server gave up
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")

        async with asyncio.timeout(20):  # the server gives up on its own
            await ended.wait()
        assert sent < TOTAL_CHUNKS  # it stopped because the client did not read

        async with asyncio.timeout(20):  # and closed the connection
            while await reader.read(1 << 20):
                pass
    finally:
        writer.close()
        server.should_exit = True
        await task


async def test_a_client_that_reads_slowly_but_steadily_gets_the_whole_stream() -> None:
    ended = asyncio.Event()
    chunks = 200  # 13 MB

    async def finite(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            try:
                for _ in range(chunks):
                    yield CHUNK
            finally:
                ended.set()

        return EventStream(body(), ping=0, send_timeout=0.5, headers={})

    server, task, port = await serve(Starlette(routes=[Route("/events", finite)]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        received = 0
        async with asyncio.timeout(60):
            while True:
                data = await reader.read(256 * 1024)
                received += data.count(b"data: ")
                if received == chunks or not data:
                    break
                await asyncio.sleep(0.001)  # a reader slower than the server, never stalled
        assert received == chunks
    finally:
        writer.close()
        server.should_exit = True
        await task


async def _read_to_end(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(20):
            while await reader.read(65_536):
                pass
    finally:
        writer.close()


async def _leave_early(port: int, ended: asyncio.Event) -> None:
    ended.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /events?n=endless HTTP/1.1\r\nHost: test\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    async with asyncio.timeout(20):  # the server notices and closes the body
        await ended.wait()


def _kind(o: object) -> str:
    if isinstance(o, types.MethodType):
        return f"method of {type(o.__self__).__name__}"
    return type(o).__name__


@pytest.mark.parametrize("app_class", [Starlette, App])
async def test_a_finished_or_abandoned_stream_leaves_no_reference_cycles_behind(
    app_class: type[Starlette],
) -> None:
    """A stream's tasks end without leaving cyclic garbage: objects that lived as long as the
    stream sit in the old generation, where only a full collection (a pause as long as the
    process holds objects) would free a cycle among them. ``App`` is the API's application
    class (it keeps the server's send in the scope for the stream)."""
    ended = asyncio.Event()

    async def events(request: Request) -> Response:
        finite = request.query_params.get("n") is None

        async def body() -> AsyncIterator[bytes]:
            try:
                for _ in range(3 if finite else 10_000):
                    yield b"data: x\r\n\r\n"
                    if not finite:
                        await asyncio.sleep(0.01)
            finally:
                ended.set()

        return EventStream(body(), ping=0.05, send_timeout=5, headers={})

    server, task, port = await serve(app_class(routes=[Route("/events", events)]))
    try:
        await _read_to_end(port)  # the server's own one-off objects
        gc.collect()
        gc.disable()
        try:
            for _ in range(10):
                await _read_to_end(port)
                await _leave_early(port, ended)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            garbage = Counter(_kind(o) for o in gc.garbage)
        finally:
            gc.garbage.clear()
            gc.set_debug(0)
            gc.enable()
        # asyncio's own socket transports (the test's default loop) refer to themselves
        # through their callbacks; nothing of a stream may be in a cycle
        stream_kinds = {
            "method of RequestResponseCycle",  # the server's send
            "EventStream",
            "Task",
            "coroutine",
            "async_generator",
            "frame",
            "traceback",
            "CancelledError",
            "Future",
            "TaskState",
            "CancelScope",
        }
        assert not {k: n for k, n in garbage.items() if k in stream_kinds}
    finally:
        server.should_exit = True
        await task


async def test_sending_now_writes_at_once_until_the_client_falls_behind_then_declines() -> None:
    """``EventStream.send_now`` (the stream hub's pushes) writes without the stream's task
    while the socket takes data, and declines, writing nothing, once uvicorn would have to
    wait for the client: every frame it accepted arrives, once, before what the task sends
    after."""
    responses: list[EventStream] = []
    release = asyncio.Event()

    async def events(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            await release.wait()
            yield b"data: last\r\n\r\n"

        response = EventStream(body(), ping=0, send_timeout=30, headers={})
        responses.append(response)
        return response

    server, task, port = await serve(App(routes=[Route("/events", events)]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        [response] = responses
        accepted = 0
        # the client reads nothing more: the socket buffers fill, then uvicorn pauses writing
        while response.send_now(CHUNK):
            accepted += 1
            assert accepted < TOTAL_CHUNKS  # 64 MB: far more than the buffers hold
            if accepted % 16 == 0:
                await asyncio.sleep(0)  # let the loop move data into the kernel's buffers
        assert accepted > 0
        assert not response.send_now(CHUNK)  # still behind
        assert not response.can_send_now()  # what the OpenAI-format stream asks first

        release.set()  # the task sends its frame and ends the response
        received = b""
        async with asyncio.timeout(30):
            while data := await reader.read(1 << 20):
                received += data
        assert received.count(b"data: x") == accepted
        assert received.rindex(b"data: x") < received.index(b"data: last")
    finally:
        writer.close()
        server.should_exit = True
        await task


async def test_sending_now_declines_outside_uvicorns_send() -> None:
    """Without the server's own send in the scope (a plain Starlette app; ``api.app.App``
    keeps it) the stream cannot tell whether a send would wait: every frame goes through its
    task."""
    responses: list[EventStream] = []

    async def events(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"data: one\r\n\r\n"
            assert not responses[0].send_now(b"data: pushed\r\n\r\n")
            yield b"data: two\r\n\r\n"

        response = EventStream(body(), ping=0, send_timeout=5, headers={})
        responses.append(response)
        return response

    server, task, port = await serve(Starlette(routes=[Route("/events", events)]))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(20):
            received = await reader.read(-1)
        writer.close()
        assert b"data: one" in received and b"data: two" in received
        assert b"pushed" not in received
    finally:
        server.should_exit = True
        await task


async def test_heartbeats_go_out_only_after_the_stream_was_quiet_for_the_interval() -> None:
    """A heartbeat keeps an idle connection open through proxies: while events flow, through
    the stream's task or pushed with ``send_now``, more often than the interval, none is sent;
    once the stream goes quiet, one follows each interval."""
    interval = 0.5
    gap = 0.02  # between events: far shorter than the interval
    responses: list[EventStream] = []
    finish = asyncio.Event()

    async def events(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(int(3 * interval / gap)):  # three intervals through the task
                yield b"data: task\r\n\r\n"
                await asyncio.sleep(gap)
            for _ in range(int(3 * interval / gap)):  # three more pushed from outside it
                assert responses[0].send_now(b"data: pushed\r\n\r\n")
                await asyncio.sleep(gap)
            yield b"data: quiet\r\n\r\n"
            await finish.wait()  # then idle until the client saw two heartbeats

        response = EventStream(body(), ping=interval, send_timeout=5, headers={})
        responses.append(response)
        return response

    server, task, port = await serve(App(routes=[Route("/events", events)]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        received = b""
        async with asyncio.timeout(30):
            while received[received.find(b"data: quiet") :].count(b": ping") < 2:
                data = await reader.read(65_536)
                assert data, "the stream ended before two heartbeats"
                received += data
        finish.set()
        busy = received[: received.index(b"data: quiet")]
        assert busy.count(b"data: task") == busy.count(b"data: pushed") == int(3 * interval / gap)
        assert b": ping" not in busy
    finally:
        finish.set()
        writer.close()
        server.should_exit = True
        await task
