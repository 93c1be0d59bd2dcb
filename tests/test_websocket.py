"""GET /v1/jobs/{id}/ws with the websockets client against the running API."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tokenspool.client import AsyncClient
from tokenspool.stack import Stack

from .helpers import expected, sse_events


def ws_url(stack: Stack, job_id: str, after: str | None = None) -> str:
    url = stack.api_url.replace("http://", "ws://", 1) + f"/v1/jobs/{job_id}/ws"
    return url if after is None else f"{url}?after={after}"


async def read_all(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes (a clean close ends the iteration)."""
    return [json.loads(message) async for message in ws]


async def test_websocket_stream_equals_the_sse_stream_and_closes_with_1000(
    stack: Stack, client: AsyncClient, http: httpx.AsyncClient
) -> None:
    prompt = "ws live [fake chunks=30 delay_ms=5 reasoning=3]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)

    async with connect(ws_url(stack, job.id)) as ws:
        messages = await read_all(ws)
    sse = await sse_events(http, job.id)

    assert messages == [item["data"] for item in sse]
    assert "".join(m["text"] for m in messages if m["type"] == "content.delta") == want.text
    assert messages[-1]["type"] == "job.completed"
    assert ws.close_code == 1000


async def test_websocket_resumes_after_an_id_with_exactly_the_rest(
    stack: Stack, client: AsyncClient, http: httpx.AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "ws resume [fake chunks=20]")
    await client.wait(job.id)
    full = [item["data"] for item in await sse_events(http, job.id)]
    cut = len(full) // 2

    async with connect(ws_url(stack, job.id, after=full[cut]["event_id"])) as ws:
        rest = await read_all(ws)

    assert rest == full[cut + 1 :]
    assert ws.close_code == 1000


async def test_websocket_resumed_after_the_terminal_event_closes_at_once(
    stack: Stack, client: AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "ws ended [fake chunks=2]")
    events = [e async for e in client.events(job.id)]

    async with connect(ws_url(stack, job.id, after=events[-1].event_id)) as ws:
        rest = await read_all(ws)

    assert rest == [] and ws.close_code == 1000


@pytest.mark.parametrize(
    ("job_id", "after", "code", "named"),
    [
        ("job_missing", None, 4404, "job_missing"),
        ("job_missing", "not-an-id", 4400, "not-an-id"),
    ],
)
async def test_websocket_refusals_close_with_a_code_and_reason(
    stack: Stack, job_id: str, after: str | None, code: int, named: str
) -> None:
    async with connect(ws_url(stack, job_id, after=after)) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()

    assert info.value.rcvd is not None
    assert info.value.rcvd.code == code and named in info.value.rcvd.reason
