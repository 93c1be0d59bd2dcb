"""The fake provider's answers, sent on an absolute schedule with each chunk's send time kept.

Relay latency needs the time each chunk left the provider. The stack's fake provider stamps
``x_sent_at`` on the wire, but litellm drops unknown fields before the worker sees them, and its
relative ``asyncio.sleep(delay)`` between chunks drifts: every sleep overshoots a little and
the overshoot accumulates, so ``started_at + i x delay`` is not when chunk i left. This twin
serves the same bytes (``tokenspool.fake_llm.plan`` and ``chunks``) but sends chunk i at
``start + ttft + i x delay`` and records ``time.time()`` just before handing it to the socket.
``GET /_bench/sends`` returns those times by prompt; the bench puts a unique tag in every
prompt.

It shares the machine's two cores with the stack it measures, as a remote provider would not,
so it is built to cost as little per chunk as it can: an asyncio protocol on uvloop with
httptools parsing the requests (HTTP/1.1, keep-alive), each chunk written straight to the
socket by a timer callback (no task, no ASGI send chain), and a request's frames encoded once
per distinct answer. On uvicorn and Starlette it took about 0.27 cores at 10,000 chunks/s,
about as much as Redis and the client together.

Run as ``python -m bench.clocked_provider --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
import uvloop

from tokenspool.fake_llm import Plan, chunks, plan, usage_chunk

MAX_LOGGED = 20_000  # requests kept in the send log
MAX_BODY = 1 << 20  # bytes of a request body
MAX_ANSWERS = 64  # distinct answers kept encoded
_ID = b"chatcmpl-" + b"0" * 24  # the completion id the cached frames carry, replaced per answer


def _prompt(body: dict[str, Any]) -> str:
    """The last user message's text: the key of the send log."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def _chunked(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        content_type,
        len(body),
        body,
    )


@dataclass
class _Answer:
    """One streamed answer: chunk i (of ``timed``) at ``start + i x delay``; the frames after
    them (usage chunk, ``[DONE]``, the end of the chunked body) follow the last at once."""

    frames: list[bytes]  # each already framed as an HTTP chunk
    timed: int
    start: float  # loop time
    delay: float
    times: list[float]
    next: int = 0


class Frames:
    """The encoded frames of each distinct answer, kept for the next request that asks for the
    same one: 500 jobs starting together would otherwise encode 500 x 160 JSON chunks."""

    def __init__(self) -> None:
        self._cache: collections.OrderedDict[tuple[Any, ...], tuple[list[bytes], int]] = (
            collections.OrderedDict()
        )

    def get(self, p: Plan) -> tuple[list[bytes], int]:
        """(frames with the placeholder completion id, how many are timed chunks)."""
        key = (
            int(time.time()),  # the chunks' "created"
            p.model,
            p.content,
            p.reasoning,
            p.tool_call,
            p.include_usage,
            p.prompt_tokens,
            tuple(sorted(p.directives.items())),
        )
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._encode(p)
            while len(self._cache) > MAX_ANSWERS:
                self._cache.popitem(last=False)
        return found

    @staticmethod
    def _encode(p: Plan) -> tuple[list[bytes], int]:
        completion_id = _ID.decode()
        frames = [b"data: %s\n\n" % json.dumps(item).encode() for item in chunks(p, completion_id)]
        timed = len(frames)
        if p.include_usage:
            frames.append(b"data: %s\n\n" % json.dumps(usage_chunk(p, completion_id)).encode())
        frames.append(b"data: [DONE]\n\n")
        return [_chunked(frame) for frame in frames] + [b"0\r\n\r\n"], timed


class Provider:
    """What every connection shares: the send log and the encoded answers."""

    def __init__(self) -> None:
        self.sends: collections.OrderedDict[str, list[float]] = collections.OrderedDict()
        self.frames = Frames()

    def answer(self, body: dict[str, Any], loop: asyncio.AbstractEventLoop) -> _Answer:
        p = plan(body)
        frames, timed = self.frames.get(p)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}".encode()
        times: list[float] = []
        prompt = _prompt(body)
        self.sends[prompt] = times
        while len(self.sends) > MAX_LOGGED:
            self.sends.popitem(last=False)
        return _Answer(
            [frame.replace(_ID, completion_id) for frame in frames],
            timed,
            loop.time() + p.ttft_s,
            p.delay_s,
            times,
        )


_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class _Connection(asyncio.Protocol):
    """One client connection: its requests answered in order, one streamed answer at a time."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = bytearray()
        self.queue: collections.deque[Callable[[], None]] = collections.deque()  # requests
        self.streaming: _Answer | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.body.clear()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise httptools.HttpParserError("request body too large")

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        path = self.url.partition(b"?")[0]
        body = bytes(self.body)
        keep_alive = self.parser.should_keep_alive()
        self.queue.append(lambda: self._handle(method, path, body, keep_alive))
        if self.streaming is None and len(self.queue) == 1:
            self._next_request()

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._write(_response("400 Bad Request", json.dumps({"error": str(exc)}).encode()))
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()

    # -- answering

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.close()

    def _next_request(self) -> None:
        while self.queue and self.streaming is None and not self.closed:
            self.queue.popleft()()

    def _handle(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        if path == b"/v1/chat/completions" and method == b"POST":
            try:
                request = json.loads(body)
                if not isinstance(request, dict):
                    raise ValueError("the body is not a JSON object")
            except ValueError as exc:
                self._write(_response("400 Bad Request", json.dumps({"error": str(exc)}).encode()))
            else:
                self.streaming = self.provider.answer(request, self.loop)
                self._write(_HEAD)
                self._tick(keep_alive)
                return
        elif path == b"/_bench/sends" and method == b"GET":
            self._write(_response("200 OK", json.dumps(self.provider.sends).encode()))
        elif path == b"/healthz" and method == b"GET":
            self._write(_response("200 OK", b'{"ok": true}'))
        else:
            self._write(_response("404 Not Found", b'{"error": "no such route"}'))
        if not keep_alive:
            self._close()

    def _tick(self, keep_alive: bool, timed: bool = False) -> None:
        """Send every frame that is due, then wait for the next one's time. ``timed``: called
        by the timer of the next frame, which is then sent without looking at the clock: uvloop's
        timers count whole milliseconds and may fire up to one early (the send time is
        recorded either way), and waiting again for the rest would spin."""
        answer = self.streaming
        assert answer is not None
        self.timer = None
        while answer.next < len(answer.frames):
            i = answer.next
            if i < answer.timed:
                due = answer.start + i * answer.delay
                if not timed and due > self.loop.time():
                    self.timer = self.loop.call_at(due, self._tick, keep_alive, True)
                    return
                timed = False
                if self.closed:
                    return
                answer.times.append(time.time())
            answer.next += 1
            self._write(answer.frames[i])
        self.streaming = None
        if not keep_alive:
            self._close()
        else:
            self._next_request()


async def serve(port: int) -> None:
    provider = Provider()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(provider), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
