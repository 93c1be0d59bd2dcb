"""Submitting and streaming in one request: POST /v1/jobs with Accept: text/event-stream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from api.streams import wants_event_stream
from tokenspool.client import AsyncClient
from tokenspool.errors import ClientError
from tokenspool.jobs import JOB_ID_HEADER
from tokenspool.stack import Stack
from tokenspool.sync_client import Client

from .helpers import expected, parse_sse, sse_events

SSE = {"Accept": "text/event-stream"}


def _body(prompt: str, model: str = "fake-gpt") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def _events(text: str) -> list[dict[str, Any]]:
    return [
        {"id": item.get("id"), "event": item.get("event"), "data": json.loads(item["data"])}
        for item in parse_sse(text)
    ]


async def test_post_asking_for_an_event_stream_streams_the_new_job_from_its_start(
    http: httpx.AsyncClient,
) -> None:
    prompt = "one request [fake chunks=12 delay_ms=5]"
    response = await http.post("/v1/jobs", json=_body(prompt), headers=SSE)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    job_id = response.headers[JOB_ID_HEADER]
    assert response.headers["location"] == f"/v1/jobs/{job_id}"
    streamed = _events(response.text)
    assert streamed[0]["event"] == "job.queued" and streamed[-1]["event"] == "job.completed"
    text = "".join(e["data"]["text"] for e in streamed if e["event"] == "content.delta")
    assert text == expected("fake-gpt", prompt).text
    # the same events, ids included, as any later reader of the job gets
    assert streamed == await sse_events(http, job_id)


async def test_a_dropped_submit_stream_resumes_with_get_and_last_event_id(
    http: httpx.AsyncClient,
) -> None:
    prompt = "drop the post [fake chunks=40 delay_ms=5]"
    seen: list[dict[str, Any]] = []
    async with http.stream("POST", "/v1/jobs", json=_body(prompt), headers=SSE) as response:
        assert response.status_code == 200
        job_id = response.headers[JOB_ID_HEADER]
        buffered = ""
        async for text in response.aiter_text():
            buffered += text
            frames, _, buffered = buffered.rpartition("\r\n\r\n")
            if frames:
                seen += _events(frames + "\r\n\r\n")
            if sum(e["event"] == "content.delta" for e in seen) >= 5:
                break  # the connection closes here, mid-stream

    rest = await sse_events(http, job_id, headers={"Last-Event-ID": seen[-1]["id"]})

    assert seen + rest == await sse_events(http, job_id)
    assert rest[-1]["event"] == "job.completed"


async def test_the_same_idempotency_key_streams_the_same_job_again(
    http: httpx.AsyncClient,
) -> None:
    headers = {**SSE, "Idempotency-Key": f"stream-{uuid.uuid4().hex}"}
    body = _body("twice [fake chunks=6]")
    first = await http.post("/v1/jobs", json=body, headers=headers)
    second = await http.post("/v1/jobs", json=body, headers=headers)

    assert first.status_code == second.status_code == 200
    assert first.headers[JOB_ID_HEADER] == second.headers[JOB_ID_HEADER]
    assert _events(second.text) == _events(first.text)


async def test_a_bad_submission_asking_for_an_event_stream_gets_a_json_4xx(
    http: httpx.AsyncClient,
) -> None:
    unknown = await http.post("/v1/jobs", json=_body("x", model="no-such-model"), headers=SSE)
    invalid = await http.post("/v1/jobs", json={"model": "fake-gpt"}, headers=SSE)

    assert unknown.status_code == 400 and "no-such-model" in unknown.json()["detail"]
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "messages"]


async def test_post_without_asking_for_an_event_stream_still_answers_202_json(
    http: httpx.AsyncClient,
) -> None:
    for accept in ("*/*", "application/json", "text/event-stream;q=0"):
        response = await http.post(
            "/v1/jobs", json=_body("json please [fake chunks=1]"), headers={"Accept": accept}
        )
        assert response.status_code == 202, accept
        assert response.json()["status"] == "queued"


@pytest.mark.parametrize(
    ("accept", "wanted"),
    [
        (None, False),
        ("*/*", False),
        ("text/*", False),
        ("application/json", False),
        ("text/event-stream", True),
        ("Text/Event-Stream", True),
        ("application/json, text/event-stream; q=0.5", True),
        ("text/event-stream;q=0", False),
        ("text/event-stream;q=oops", False),
    ],
)
def test_only_an_accept_naming_event_stream_asks_for_one(accept: str | None, wanted: bool) -> None:
    assert wants_event_stream(accept) is wanted


async def test_client_stream_submits_and_follows_in_one_request_across_drops(
    stack: Stack, proxy_factory: Any
) -> None:
    prompt = "client stream [fake chunks=120 delay_ms=5]"
    proxy = await proxy_factory(stack.api_port)
    async with AsyncClient(proxy.url, read_timeout=30) as client:
        seen = []
        drops = 0
        async for event in client.stream("fake-gpt", prompt):
            seen.append(event)
            if event.type == "content.delta" and len(seen) % 30 == 0:
                drops += proxy.drop_all()

    ids = [e.event_id for e in seen]
    assert drops >= 3 and client.reconnects >= 3
    assert len(ids) == len(set(ids))
    assert seen[0].type == "job.queued" and seen[-1].type == "job.completed"
    assert (
        "".join(e.text for e in seen if e.type == "content.delta")
        == expected("fake-gpt", prompt).text
    )
    async with AsyncClient(stack.api_url) as direct:
        assert [e.event_id async for e in direct.events(seen[0].job_id)] == ids


async def test_client_stream_raises_the_api_error_for_a_bad_submission(stack: Stack) -> None:
    async with AsyncClient(stack.api_url) as client:
        with pytest.raises(ClientError) as caught:
            async for _ in client.stream("no-such-model", "x"):
                pass
    assert caught.value.status_code == 400


def test_sync_client_stream_text_reads_the_whole_answer_in_one_request(stack: Stack) -> None:
    prompt = "sync stream [fake chunks=15]"
    with Client(stack.api_url) as client:
        text = "".join(client.stream_text("fake-gpt", prompt))
        events = list(client.stream("fake-gpt", prompt))

    assert text == expected("fake-gpt", prompt).text
    assert events[0].type == "job.queued" and events[-1].type == "job.completed"
