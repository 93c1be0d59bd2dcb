"""End to end through real processes: API → arq worker → litellm → fake provider → Redis → SSE."""

from __future__ import annotations

import asyncio
import json

import httpx

from tokenspool.client import AsyncClient
from tokenspool.events import ContentDelta, JobCompleted, JobStarted
from tokenspool.stack import Stack

from .helpers import expected, fake_requests, wait_until

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


async def test_submit_answers_202_with_job_id_and_events_url(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/jobs", json={"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["events_url"] == f"/v1/jobs/{body['id']}/events"
    assert response.headers["location"] == f"/v1/jobs/{body['id']}"


async def test_job_streams_every_provider_chunk_in_order_and_ends_once(client: AsyncClient) -> None:
    prompt = "stream me [fake chunks=30 reasoning=4]"
    want = expected("fake-reasoner", prompt)
    job = await client.submit("fake-reasoner", prompt)

    events = [e async for e in client.events(job.id)]

    types = [e.type for e in events]
    assert types[0] == "job.queued" and types[1] == "job.started"
    assert types.count("reasoning.delta") == 4 and types.count("content.delta") == 30
    assert types[-2:] == ["usage", "job.completed"]
    assert sum(t in ("job.completed", "job.failed", "job.cancelled") for t in types) == 1
    assert "".join(e.text for e in events if e.type == "reasoning.delta") == want.reasoning_text
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == want.text
    ids = [e.event_id for e in events]
    assert len(set(ids)) == len(ids) and all(e.job_id == job.id for e in events)
    assert isinstance(events[1], JobStarted) and ":" in events[1].worker


async def test_get_job_reports_accumulated_output_usage_and_timestamps(client: AsyncClient) -> None:
    prompt = "status please [fake chunks=12]"
    want = expected("fake-gpt", prompt)
    job = await client.submit("fake-gpt", prompt)

    view = await client.wait(job.id)

    assert view.status == "completed" and view.attempt == 1
    assert view.output.content == want.text and view.output.finish_reason == "stop"
    assert view.usage is not None and view.usage.completion_tokens == want.completion_tokens
    assert view.usage.total_tokens == want.prompt_tokens + want.completion_tokens
    assert view.created_at <= (view.started_at or 0) <= (view.finished_at or 0)


async def test_tool_call_arguments_split_mid_json_are_reassembled(client: AsyncClient) -> None:
    prompt = "weather in Paris?"
    want = expected("fake-gpt", prompt, tools=TOOLS)
    job = await client.submit("fake-gpt", prompt, tools=TOOLS, tool_choice="auto")

    events = [e async for e in client.events(job.id)]
    view = await client.get(job.id)

    deltas = [e for e in events if e.type == "tool_call.delta"]
    done = [e for e in events if e.type == "tool_call.done"]
    assert want.tool_call is not None
    assert len(deltas) == len(want.tool_call.pieces) > 2
    assert deltas[0].id == "call_fake_0" and deltas[0].name == "get_weather"
    assert len(done) == 1 and json.loads(done[0].arguments) == json.loads(want.tool_call.arguments)
    assert view.output.finish_reason == "tool_calls"
    assert view.output.tool_calls[0].arguments == want.tool_call.arguments


async def test_provider_error_becomes_job_failed_with_provider_class(client: AsyncClient) -> None:
    job = await client.submit("fake-gpt", "break [fake status=500]")

    events = [e async for e in client.events(job.id)]
    view = await client.get(job.id)

    assert events[-1].type == "job.failed"
    assert view.status == "failed" and view.error is not None
    assert view.error.type == "InternalServerError"
    assert "fake provider error 500" in view.error.message


async def test_unknown_model_is_400_naming_the_configured_models(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/jobs", json={"model": "gpt-nope", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 400
    assert "gpt-nope" in response.json()["detail"]
    assert "fake-gpt" in response.json()["detail"]


async def test_malformed_body_is_422_naming_the_field(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/jobs", json={"model": "fake-gpt", "messages": "hello"})
    assert response.status_code == 422
    assert any(err["loc"][-1] == "messages" for err in response.json()["detail"])

    response = await http.post(
        "/v1/jobs",
        json={
            "model": "fake-gpt",
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 9,
        },
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "temperature"]


async def test_oversized_body_is_413_and_too_many_tokens_is_422(http: httpx.AsyncClient) -> None:
    big = {"model": "fake-gpt", "messages": [{"role": "user", "content": "x" * 2_000_000}]}
    assert (await http.post("/v1/jobs", json=big)).status_code == 413
    response = await http.post(
        "/v1/jobs",
        json={
            "model": "fake-gpt",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 10_000_000,
        },
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "max_tokens"]


async def test_unknown_job_is_404_on_every_route(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", "/v1/jobs/job_missing"),
        ("GET", "/v1/jobs/job_missing/events"),
        ("POST", "/v1/jobs/job_missing/cancel"),
    ]:
        response = await http.request(method, path)
        assert response.status_code == 404, (method, path)
        assert "job_missing" in response.json()["detail"]


async def test_jobs_spread_across_worker_processes(client: AsyncClient, stack: Stack) -> None:
    jobs = [
        await client.submit("fake-gpt", f"spread {i} [fake chunks=20 delay_ms=20]")
        for i in range(10)
    ]

    workers = set()
    for job in jobs:
        async for event in client.events(job.id):
            if isinstance(event, JobStarted):
                workers.add(event.worker.split(":")[1])
            if isinstance(event, JobCompleted):
                break

    assert workers == {str(w.pid) for w in stack.workers}


async def test_worker_processes_run_on_uvloop(stack: Stack) -> None:
    async def all_ready() -> bool:
        logs = [w.log_path.read_text(errors="replace") for w in stack.workers if w.log_path]
        return len(logs) == len(stack.workers) and all(" ready on " in t for t in logs)

    await wait_until(all_ready, timeout=60)

    for worker in stack.workers:
        assert worker.log_path is not None
        assert " ready on uvloop: " in worker.log_path.read_text(errors="replace")


async def test_cancel_running_job_closes_provider_stream_and_ends_cancelled(
    client: AsyncClient, stack: Stack
) -> None:
    prompt = "long answer [fake chunks=400 delay_ms=20]"
    job = await client.submit("fake-gpt", prompt)
    events = client.events(job.id)
    seen = []
    async for event in events:
        seen.append(event)
        if sum(e.type == "content.delta" for e in seen) == 5:
            break
    await events.aclose()

    assert await client.cancel(job.id) in ("cancelling", "cancelled")
    rest = [e async for e in client.events(job.id, after=seen[-1].event_id or "0")]
    view = await client.get(job.id)

    assert rest[-1].type == "job.cancelled"
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens > 0
    assert view.status == "cancelled"
    assert 5 <= len(view.output.content.split()) < 400
    log = [r for r in await fake_requests(stack.fake_url) if r["directives"].get("chunks") == 400]
    assert log and log[-1]["disconnected_at"] is not None and not log[-1]["finished"]


async def test_cancelling_a_finished_job_answers_409_with_its_status(
    client: AsyncClient, http: httpx.AsyncClient
):
    job = await client.submit("fake-gpt", "short [fake chunks=2]")
    await client.wait(job.id)

    response = await http.post(f"/v1/jobs/{job.id}/cancel")

    assert response.status_code == 409
    assert response.json()["status"] == "completed"


async def test_queued_job_is_cancelled_without_running(
    store, client: AsyncClient, stack: Stack, redis
) -> None:
    from tokenspool.jobs import JobPayload, JobRequest, new_job_id
    from tokenspool.queue import RUN_JOB

    prompt = "never run me [fake chunks=3]"
    request = JobRequest(model="fake-gpt", messages=[{"role": "user", "content": prompt}])
    job_id = new_job_id()
    await store.create(job_id, request)  # queued, not yet visible to any worker

    assert await client.cancel(job_id) == "cancelled"
    await redis.enqueue_job(
        RUN_JOB,
        JobPayload(job_id=job_id, request=request).model_dump(mode="json"),
        _job_id=job_id,
        _queue_name=store.settings.queue_name,
    )
    # wait for a worker to dequeue (and skip) it
    await wait_until(lambda: _arq_done(redis, job_id), timeout=15)

    events = [e async for e in client.events(job_id)]
    assert [e.type for e in events] == ["job.queued", "job.cancelled"]
    assert not [r for r in await fake_requests(stack.fake_url) if r["prompt"] == prompt]


async def _arq_done(redis, job_id: str) -> bool:
    in_queue = await redis.zscore("tokenspool:queue", job_id)
    in_progress = await redis.exists(f"arq:in-progress:{job_id}")
    return in_queue is None and not in_progress


async def test_finished_job_keys_expire_after_the_retention_period(
    client: AsyncClient, redis, keys, settings
) -> None:
    job = await client.submit("fake-gpt", "retain [fake chunks=2]")
    await client.wait(job.id)

    for key in (keys.job(job.id), keys.events(job.id)):
        ttl = await redis.ttl(key)
        assert 0 < ttl <= settings.retention_seconds


async def test_several_consumers_read_one_stream_at_their_own_pace(client: AsyncClient) -> None:
    prompt = "share me [fake chunks=50 delay_ms=5]"
    job = await client.submit("fake-gpt", prompt)

    async def consume(delay: float) -> list[str]:
        out = []
        async for event in client.events(job.id):
            out.append(event.event_id or "")
            await asyncio.sleep(delay)
        return out

    fast, slow, slower = await asyncio.gather(consume(0), consume(0.005), consume(0.01))

    assert fast == slow == slower and len(fast) == 50 + 4
