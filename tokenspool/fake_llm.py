"""A scripted, OpenAI-compatible chat-completions server for the demo, the tests and benchmarks.

It speaks the real wire format (``text/event-stream`` of ``chat.completion.chunk`` objects ending
with ``data: [DONE]``), so the worker reaches it over HTTP through litellm like any provider.

What it sends is a pure function of the request (:func:`plan`), so tests know the exact output
to expect. Directives in the last user message steer it, e.g. ``[fake chunks=50 delay_ms=10]``:

- ``chunks=N``       content chunks (one word each; default 24)
- ``reasoning=N``    reasoning chunks before the content (default 6 when the upstream model
                     name contains ``reason``, else 0)
- ``delay_ms=D``     pause between chunks; ``ttft_ms=T`` pause before the first chunk
- ``status=S``       answer HTTP S (429, 500...) instead of streaming
- ``drop_after=K``   send K chunks, then cut the connection mid-stream
- ``stall_after=K``  send K chunks, then go silent until the client hangs up
- ``pad=B``          add B bytes of padding to every chunk (an extra field clients ignore),
                     to fill network buffers quickly in backpressure tests
- ``split=B``        write the body in pieces of B bytes (lines arrive cut mid-way)
- ``crlf=1``         end lines with ``\\r\\n`` rather than ``\\n``
- ``fail_times=K``   the faults above hit only the first K requests with the same prompt;
                     later ones stream normally

A request with ``tools`` answers with one call of the first tool, its arguments split mid-JSON.
A request with a ``json_schema`` response format answers with JSON built from the schema, in
pieces of a few characters (``badjson=1`` makes every integer a string, so validation fails).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = (
    "Durable streams outlive the connection that opened them. A worker appends every chunk "
    "to Redis, and each reader resumes from the last event it saw, so nothing is lost and "
    "nothing is repeated."
).split()
REASONING = "Let me think about this step by step before answering.".split()
TOOL_ARGUMENTS = {"city": "Paris", "unit": "celsius", "days": 3}
DIRECTIVE_RE = re.compile(r"\[fake([^\]]*)\]")
MAX_CHUNKS = 1_000_000


@dataclass(frozen=True)
class ToolCallPlan:
    id: str
    name: str
    arguments: str
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Everything the fake provider will send for one request."""

    model: str
    content: tuple[str, ...] = ()
    reasoning: tuple[str, ...] = ()
    tool_call: ToolCallPlan | None = None
    delay_s: float = 0.0
    ttft_s: float = 0.0
    status: int | None = None
    fail_times: int | None = None
    drop_after: int | None = None
    stall_after: int | None = None
    include_usage: bool = False
    prompt_tokens: int = 0
    directives: dict[str, int] = field(default_factory=dict)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_call else "stop"

    @property
    def completion_tokens(self) -> int:
        pieces = len(self.tool_call.pieces) if self.tool_call else 0
        return len(self.content) + len(self.reasoning) + pieces

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def parse_directives(text: str) -> dict[str, int]:
    match = DIRECTIVE_RE.search(text)
    if not match:
        return {}
    out: dict[str, int] = {}
    for token in match.group(1).split():
        key, _, value = token.partition("=")
        if value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def example_value(schema: dict[str, Any], bad: bool = False, depth: int = 0) -> Any:
    """A deterministic value matching (or, with ``bad``, violating) a simple JSON schema."""
    if depth > 8:
        return None
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties", {})
        return {k: example_value(v, bad, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [example_value(schema.get("items", {}), bad, depth + 1) for _ in range(2)]
    if kind == "integer":
        return "forty-two" if bad else 42
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "streamed text value"


def plan(body: dict[str, Any]) -> Plan:
    """What the fake provider sends in answer to ``body`` (a chat-completions request)."""
    model = str(body.get("model", "fake"))
    messages = body.get("messages") or []
    directives = parse_directives(_last_user_text(messages))
    n = max(0, min(directives.get("chunks", 24), MAX_CHUNKS))
    default_reasoning = 6 if "reason" in model else 0
    n_reasoning = max(0, min(directives.get("reasoning", default_reasoning), MAX_CHUNKS))
    tool_call = None
    tools = body.get("tools") or []
    if tools:
        name = tools[0].get("function", {}).get("name", "tool")
        arguments = json.dumps(TOOL_ARGUMENTS)
        pieces = tuple(arguments[i : i + 7] for i in range(0, len(arguments), 7))
        tool_call = ToolCallPlan(id="call_fake_0", name=name, arguments=arguments, pieces=pieces)
        n = max(0, min(directives.get("chunks", 0), MAX_CHUNKS))
    content = tuple(WORDS[i % len(WORDS)] + (" " if i < n - 1 else "") for i in range(n))
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema" and not tools:
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        answer = json.dumps(example_value(schema, bool(directives.get("badjson"))))
        content = tuple(answer[i : i + 6] for i in range(0, len(answer), 6))
    reasoning = tuple(
        REASONING[i % len(REASONING)] + (" " if i < n_reasoning - 1 else "")
        for i in range(n_reasoning)
    )
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in messages)
    stream_options = body.get("stream_options") or {}
    return Plan(
        model=model,
        content=content,
        reasoning=reasoning,
        tool_call=tool_call,
        delay_s=directives.get("delay_ms", 0) / 1000,
        ttft_s=directives.get("ttft_ms", 0) / 1000,
        status=directives.get("status"),
        fail_times=directives.get("fail_times"),
        drop_after=directives.get("drop_after"),
        stall_after=directives.get("stall_after"),
        include_usage=bool(stream_options.get("include_usage")),
        prompt_tokens=prompt_words,
        directives=directives,
    )


def chunks(p: Plan, completion_id: str) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a plan, in order (without the usage chunk)."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": p.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": text}) for text in p.reasoning]
    out += [chunk({"content": text}) for text in p.content]
    if p.tool_call:
        call = p.tool_call
        for i, piece in enumerate(call.pieces):
            entry: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
            if i == 0:
                entry = {
                    "index": 0,
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": piece},
                }
            out.append(chunk({"tool_calls": [entry]}))
    out.append(chunk({}, p.finish_reason))
    return out


def usage_chunk(p: Plan, completion_id: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": p.model,
        "choices": [],
        "usage": {
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.completion_tokens,
            "total_tokens": p.prompt_tokens + p.completion_tokens,
        },
    }


class _Stats:
    """What the fake provider saw; tests read it from ``GET /_fake/requests``."""

    def __init__(self) -> None:
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=10_000)
        self.failures: collections.Counter[str] = collections.Counter()
        self.active = 0


def create_app() -> Starlette:
    stats = _Stats()

    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return JSONResponse({"error": {"message": "invalid JSON body"}}, status_code=400)
        p = plan(body)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        record: dict[str, Any] = {
            "id": completion_id,
            "model": p.model,
            "directives": p.directives,
            "prompt": _last_user_text(body.get("messages") or [])[:200],
            "started_at": time.time(),
            "sent": 0,
            "finished": False,
            "disconnected_at": None,
            "status": 200,
        }
        stats.log.append(record)
        key = _last_user_text(body.get("messages") or [])
        stats.failures[key] += 1
        faulty = p.fail_times is None or stats.failures[key] <= p.fail_times
        record["faulty"] = faulty
        if p.status and faulty:
            record["status"] = p.status
            headers = {"Retry-After": "1"} if p.status == 429 else {}
            return JSONResponse(
                {"error": {"message": f"fake provider error {p.status}", "type": "fake"}},
                status_code=p.status,
                headers=headers,
            )
        pad = "x" * max(0, min(p.directives.get("pad", 0), 1_000_000))
        drop_after = p.drop_after if faulty else None
        stall_after = p.stall_after if faulty else None
        all_chunks = chunks(p, completion_id)
        if not body.get("stream"):
            return JSONResponse(_completion(p, completion_id))

        split = max(0, p.directives.get("split", 0))
        newline = "\r\n" if p.directives.get("crlf") else "\n"

        async def frames() -> Any:
            stats.active += 1
            try:
                if p.ttft_s:
                    await asyncio.sleep(p.ttft_s)
                for i, item in enumerate(all_chunks):
                    if drop_after is not None and i >= drop_after:
                        raise ConnectionAbortedError("fake provider dropped the stream")
                    if stall_after is not None and i >= stall_after:
                        await asyncio.sleep(3600)
                    if i and p.delay_s:
                        await asyncio.sleep(p.delay_s)
                    item["x_sent_at"] = time.time()
                    if pad:
                        item["x_pad"] = pad
                    yield f"data: {json.dumps(item)}{newline}{newline}"
                    record["sent"] = i + 1
                if p.include_usage:
                    yield f"data: {json.dumps(usage_chunk(p, completion_id))}{newline}{newline}"
                yield f"data: [DONE]{newline}{newline}"
                record["finished"] = True
            finally:
                stats.active -= 1
                if not record["finished"]:
                    record["disconnected_at"] = time.time()

        async def stream() -> Any:
            carry = ""  # pieces run across frames: a line's end and the next one's start
            async with contextlib.aclosing(frames()) as each:  # its finally runs at once
                async for frame in each:
                    if not split:
                        yield frame
                        continue
                    carry += frame
                    while len(carry) >= split:
                        piece, carry = carry[:split], carry[split:]
                        yield piece
                        await asyncio.sleep(0.001)  # each piece its own TCP segment
            if carry:
                yield carry

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def requests_log(request: Request) -> Response:
        return JSONResponse({"active": stats.active, "requests": list(stats.log)})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models),
            Route("/_fake/requests", requests_log),
            Route("/healthz", healthz),
        ]
    )


def _completion(p: Plan, completion_id: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": p.text or None}
    if p.reasoning:
        message["reasoning_content"] = p.reasoning_text
    if p.tool_call:
        message["tool_calls"] = [
            {
                "id": p.tool_call.id,
                "type": "function",
                "function": {"name": p.tool_call.name, "arguments": p.tool_call.arguments},
            }
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": p.model,
        "choices": [{"index": 0, "message": message, "finish_reason": p.finish_reason}],
        "usage": usage_chunk(p, completion_id)["usage"],
    }


app = create_app()
