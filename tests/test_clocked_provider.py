"""The bench's clocked provider (``bench/clocked_provider.py``), over HTTP on loopback: it
serves the fake provider's chunks, on its schedule, keeps each chunk's send time, and answers
bad requests with a 4xx."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from bench.clocked_provider import serve
from tokenspool.embedded import free_port
from tokenspool.fake_llm import chunks, plan


@pytest.fixture
async def provider() -> AsyncIterator[str]:
    port = free_port()
    server = asyncio.create_task(serve(port))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient() as client:
        for _ in range(200):  # until it listens
            try:
                await client.get(url + "/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.01)
    yield url
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server


def _body(prompt: str, usage: bool = True) -> dict[str, object]:
    return {
        "model": "clocked-gpt",
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": usage},
    }


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> list[str]:
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        return [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]


def _comparable(chunk: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in chunk.items() if k not in ("id", "created")}


async def test_serves_the_fake_providers_chunks_and_logs_each_send_time(provider: str) -> None:
    body = _body("clocked-1 [fake chunks=5 delay_ms=20]")
    async with httpx.AsyncClient() as client:
        data = await _stream(client, provider, body)
        sends = (await client.get(provider + "/_bench/sends")).json()

    expected = chunks(plan(body), "x")
    assert data[-1] == "[DONE]"
    got = [json.loads(d) for d in data[:-1]]
    assert [_comparable(c) for c in got[: len(expected)]] == [_comparable(c) for c in expected]
    usage = got[len(expected)]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert len({c["id"] for c in got}) == 1  # one completion id per answer
    times = sends["clocked-1 [fake chunks=5 delay_ms=20]"]
    assert len(times) == len(expected)  # one send time per chunk; usage and [DONE] untimed
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) > 0.015  # sent on the 20 ms schedule, not all at once


async def test_answers_the_requests_of_one_connection_in_turn_each_with_its_own_id(
    provider: str,
) -> None:
    async with httpx.AsyncClient() as client:  # keeps the connection alive between requests
        first = await _stream(client, provider, _body("clocked-2 [fake chunks=2]", usage=False))
        second = await _stream(client, provider, _body("clocked-3 [fake chunks=3]", usage=False))
    assert len(first) == 2 + 2 + 1 and len(second) == 3 + 2 + 1  # role, text, finish, [DONE]
    assert json.loads(first[0])["id"] != json.loads(second[0])["id"]


async def test_bad_requests_get_a_4xx_naming_the_problem(provider: str) -> None:
    async with httpx.AsyncClient() as client:
        bad_json = await client.post(provider + "/v1/chat/completions", content=b"{not json")
        not_object = await client.post(provider + "/v1/chat/completions", content=b"[1, 2]")
        unknown = await client.get(provider + "/v1/models")
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    assert not_object.status_code == 400 and "not a JSON object" in not_object.json()["error"]
    assert unknown.status_code == 404 and unknown.json() == {"error": "no such route"}
