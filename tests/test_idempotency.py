"""Idempotency-Key under concurrency: requests racing with one key share one job, at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tokenspool import queue
from tokenspool.jobs import JOB_ID_HEADER, JobRequest
from tokenspool.keys import Keys
from tokenspool.model_list import ModelList
from tokenspool.settings import Settings
from tokenspool.store import JobStore

from .helpers import parse_sse, sse_events

RACERS = 16


def _body(prompt: str) -> dict[str, Any]:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": prompt}]}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"race-{uuid.uuid4().hex}"}


async def test_streaming_posts_racing_with_one_key_all_stream_the_one_job(
    http: httpx.AsyncClient,
) -> None:
    headers = {**_key(), "Accept": "text/event-stream"}
    body = _body("racing streams [fake chunks=8]")

    answers = await asyncio.gather(
        *(http.post("/v1/jobs", json=body, headers=headers) for _ in range(RACERS))
    )

    # none answers 404 while another is still writing the job
    assert [a.status_code for a in answers] == [200] * RACERS, [a.text for a in answers]
    job_ids = {a.headers[JOB_ID_HEADER] for a in answers}
    assert len(job_ids) == 1
    replay = [(e["id"], e["event"]) for e in await sse_events(http, job_ids.pop())]
    assert [e[1] for e in replay].count("job.queued") == 1
    for answer in answers:
        assert [(e.get("id"), e.get("event")) for e in parse_sse(answer.text)] == replay


async def test_json_posts_racing_with_one_key_make_one_job(http: httpx.AsyncClient) -> None:
    headers = _key()
    body = _body("racing json [fake chunks=2]")

    answers = await asyncio.gather(
        *(http.post("/v1/jobs", json=body, headers=headers) for _ in range(RACERS))
    )

    assert sorted(a.status_code for a in answers) == [200] * (RACERS - 1) + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    # a repeat answers with the job's real status, never a guess
    statuses = {a.json()["status"] for a in answers}
    assert statuses <= {"queued", "running", "completed"}, statuses


async def test_a_key_whose_job_has_expired_makes_a_new_job(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    headers = _key()
    body = _body("expired job [fake chunks=1]")
    first = await http.post("/v1/jobs", json=body, headers=headers)
    old_id = first.json()["id"]
    await sse_events(http, old_id)  # it ran to the end
    keys = Keys()
    await redis.delete(keys.job(old_id), keys.events(old_id))  # as their expiry would

    again = await http.post("/v1/jobs", json=body, headers=headers)
    repeat = await http.post("/v1/jobs", json=body, headers=headers)

    assert first.status_code == 202 and again.status_code == 202
    new_id = again.json()["id"]
    assert new_id != old_id
    assert repeat.status_code == 200 and repeat.json()["id"] == new_id
    assert (await sse_events(http, new_id))[-1]["event"] == "job.completed"


async def test_a_submission_whose_write_fails_leaves_its_key_free_for_the_retry(
    store: JobStore, redis: ArqRedis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = ModelList.load(settings.models_file)
    request = JobRequest.model_validate(_body("write fails once [fake chunks=1]"))
    key = _key()["Idempotency-Key"]
    real_transaction = queue.transaction
    failures: list[str] = []

    async def transaction_failing_once(conn: Any, commands: list[Any]) -> Any:
        if not failures:  # the connection drops before the job's transaction is sent
            failures.append("dropped")
            raise RedisConnectionError("connection lost before EXEC")
        return await real_transaction(conn, commands)

    monkeypatch.setattr(queue, "transaction", transaction_failing_once)
    with pytest.raises(RedisConnectionError):
        await queue.submit(store, redis, models, request, key)
    job_id, created = await queue.submit(store, redis, models, request, key)

    assert failures == ["dropped"]
    # the retry made the job: the key never named one that was not written
    assert created
    assert await redis.exists(store.keys.job(job_id), store.keys.events(job_id)) == 2
