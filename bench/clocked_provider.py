"""The fake provider's answers, sent on an absolute schedule with each chunk's send time kept.

Relay latency needs the time each chunk left the provider. The stack's fake provider stamps
``x_sent_at`` on the wire, but litellm drops unknown fields before the worker sees them, and its
relative ``asyncio.sleep(delay)`` between chunks drifts: every sleep overshoots a little and
the overshoot accumulates, so ``started_at + i x delay`` is not when chunk i left. This twin
serves the same bytes (``tokenspool.fake_llm.plan`` and ``chunks``) but sleeps until
``start + ttft + i x delay`` and records ``time.time()`` just before handing chunk i to the
server. ``GET /_bench/sends`` returns those times by prompt; the bench puts a unique tag in
every prompt.

Run as ``python -m bench.clocked_provider --port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tokenspool.fake_llm import chunks, plan, usage_chunk

MAX_LOGGED = 20_000  # requests kept in the send log


def _prompt(body: dict[str, Any]) -> str:
    """The last user message's text: the key of the send log."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


class _Clocked(Response):
    """Chunk i at ``start + i x delay`` (the usage chunk and [DONE] follow the last at once),
    its send time kept just before it goes to the server.

    The frames are encoded up front and sent with one ASGI ``send`` each, without
    StreamingResponse's task group and disconnect listener: the provider shares two cores with
    the stack it measures, so it should cost little per chunk. A client that leaves makes the
    server drop the rest (uvicorn ignores sends after a disconnect)."""

    def __init__(
        self, frames: list[bytes], timed: int, start: float, delay: float, times: list[float]
    ) -> None:
        super().__init__(media_type="text/event-stream")
        self.frames, self.timed, self.times = frames, timed, times
        self.start, self.delay = start, delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, frame in enumerate(self.frames):
            if i < self.timed:  # the chunks; the usage chunk and [DONE] follow the last at once
                wait = self.start + i * self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                self.times.append(time.time())
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def create_app() -> Starlette:
    sends: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    async def completions(request: Request) -> Response:
        body = await request.json()
        p = plan(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        prompt = _prompt(body)
        times: list[float] = []
        sends[prompt] = times
        while len(sends) > MAX_LOGGED:
            sends.popitem(last=False)
        frames = [b"data: %s\n\n" % json.dumps(item).encode() for item in chunks(p, completion_id)]
        timed = len(frames)
        if p.include_usage:
            frames.append(b"data: %s\n\n" % json.dumps(usage_chunk(p, completion_id)).encode())
        frames.append(b"data: [DONE]\n\n")
        return _Clocked(frames, timed, time.monotonic() + p.ttft_s, p.delay_s, times)

    async def sent(request: Request) -> Response:
        return JSONResponse(sends)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/_bench/sends", sent),
            Route("/healthz", healthz),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
