"""Resume: every consumer that drops gets exactly the rest of the stream, over SSE and Redis."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from redis.asyncio import Redis

from tokenspool import tail
from tokenspool.client import AsyncClient
from tokenspool.connections import close, connect
from tokenspool.stack import Stack

from .helpers import drop_and_resume_consumer, expected, parse_sse, sse_events


async def test_sse_resumes_after_last_event_id_with_nothing_lost_or_repeated(
    client: AsyncClient, http: httpx.AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "resume [fake chunks=20]")
    await client.wait(job.id)
    full = await sse_events(http, job.id)

    for cut in (1, 7, len(full) - 2):
        rest = await sse_events(http, job.id, headers={"Last-Event-ID": full[cut]["id"]})
        assert rest == full[cut + 1 :]


async def test_sse_after_param_resumes_and_last_event_id_header_wins(
    client: AsyncClient, http: httpx.AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "after [fake chunks=10]")
    await client.wait(job.id)
    full = await sse_events(http, job.id)

    by_param = await sse_events(http, job.id, params={"after": full[3]["id"]})
    both = await sse_events(
        http, job.id, params={"after": full[3]["id"]}, headers={"Last-Event-ID": full[5]["id"]}
    )
    from_zero = await sse_events(http, job.id, params={"after": "0"})

    assert by_param == full[4:]
    assert both == full[6:]
    assert from_zero == full


async def test_sse_wire_format_has_id_event_and_json_data(
    client: AsyncClient, http: httpx.AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "wire [fake chunks=3]")
    await client.wait(job.id)

    response = await http.get(f"/v1/jobs/{job.id}/events")

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    items = parse_sse(response.text)
    assert [i["event"] for i in items][-1] == "job.completed"
    for item in items:
        data = json.loads(item["data"])
        assert data["type"] == item["event"] and data["event_id"] == item["id"]
        assert data["job_id"] == job.id and "attempt" in data


async def test_sse_sends_heartbeat_comments_while_the_job_is_idle(
    client: AsyncClient, http: httpx.AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "slow start [fake chunks=2 ttft_ms=1500]")
    lines: list[str] = []
    async with http.stream("GET", f"/v1/jobs/{job.id}/events") as response:
        async for line in response.aiter_lines():
            lines.append(line)
            if line.startswith("event: content.delta"):
                break

    first_content = lines.index("event: content.delta")
    assert any(line.startswith(":") for line in lines[:first_content])  # stack pings every 0.3 s


@pytest.mark.parametrize("bad", ["abc", "$", "1-2-3", "12-x"])
async def test_malformed_event_id_is_400_naming_the_value(
    client: AsyncClient, http: httpx.AsyncClient, bad: str
) -> None:
    job = await client.submit("fake-gpt", "bad id [fake chunks=1]")

    by_param = await http.get(f"/v1/jobs/{job.id}/events", params={"after": bad})
    by_header = await http.get(f"/v1/jobs/{job.id}/events", headers={"Last-Event-ID": bad})

    for response in (by_param, by_header):
        assert response.status_code == 400
        assert bad in response.json()["detail"]


async def test_client_reconnects_through_dropped_connections_without_gaps_or_repeats(
    stack: Stack, proxy_factory
) -> None:
    prompt = "drop me [fake chunks=120 delay_ms=5]"
    want = expected("fake-gpt", prompt)
    proxy = await proxy_factory(stack.api_port)
    async with AsyncClient(proxy.url, read_timeout=30) as client:
        job = await client.submit("fake-gpt", prompt)
        seen = []
        drops = 0
        async for event in client.events(job.id):
            seen.append(event)
            if event.type == "content.delta" and len(seen) % 25 == 0:
                drops += proxy.drop_all()

    ids = [e.event_id for e in seen]
    assert drops >= 3 and client.reconnects >= 3
    assert len(ids) == len(set(ids)) and ids == sorted(
        ids, key=lambda i: tuple(map(int, i.split("-")))
    )
    assert "".join(e.text for e in seen if e.type == "content.delta") == want.text
    assert seen[0].type == "job.queued" and seen[-1].type == "job.completed"


async def test_tail_from_redis_resumes_after_connection_is_cut(
    stack: Stack, settings, client: AsyncClient, proxy_factory
) -> None:
    prompt = "tail me [fake chunks=80 delay_ms=5]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)
    proxy = await proxy_factory(stack.redis.port)
    redis: Redis = connect(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{proxy.port}/0"})
    )
    try:
        seen = []
        drops = 0
        async for event in tail(redis, job.id, "0", count=10, block_ms=500):
            seen.append(event)
            if len(seen) in (10, 30, 50):
                drops += proxy.drop_all()
    finally:
        await close(redis)

    ids = [e.event_id for e in seen]
    assert drops >= 3
    assert len(ids) == len(set(ids))
    assert "".join(e.text for e in seen if e.type == "content.delta") == want.text
    assert seen[-1].type == "job.completed"


async def test_tail_from_the_middle_yields_exactly_the_rest(
    client: AsyncClient, redis: Redis
) -> None:
    job = await client.submit("fake-gpt", "middle [fake chunks=15]")
    await client.wait(job.id)
    full = [e async for e in tail(redis, job.id)]

    rest = [e async for e in tail(redis, job.id, after=full[6].event_id)]

    assert rest == full[7:]


async def test_many_consumers_dropping_at_random_points_each_get_the_exact_output(
    stack: Stack, client: AsyncClient, http: httpx.AsyncClient
) -> None:
    import random

    prompt = "many [fake chunks=60 delay_ms=3]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)
    rng = random.Random(7)

    results = await asyncio.gather(
        *(drop_and_resume_consumer(http, job.id, rng, 30) for _ in range(20))
    )

    assert all(r == want.text for r in results)
