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
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tokenspool.fake_llm import chunks, plan, usage_chunk

MAX_LOGGED = 20_000  # requests kept in the send log


def _prompt(body: dict[str, Any]) -> str:
    """The last user message's text: the key of the send log."""
    for message in reversed(body.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


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
        items = chunks(p, completion_id)
        start = time.monotonic() + p.ttft_s

        async def stream() -> Any:
            for i, item in enumerate(items):
                wait = start + i * p.delay_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                times.append(time.time())
                yield f"data: {json.dumps(item)}\n\n"
            if p.include_usage:
                yield f"data: {json.dumps(usage_chunk(p, completion_id))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

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
