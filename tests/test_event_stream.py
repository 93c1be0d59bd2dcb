"""The SSE response's send timeout: a client that stops reading is cut off, through a real
uvicorn on loopback (the timeout is kept by a watchdog, not a timer per send)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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
