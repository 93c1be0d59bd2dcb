"""GET /metrics: Prometheus counters and gauges of the running API, compared before and after."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from tokenspool import metrics as metrics_module
from tokenspool.client import AsyncClient
from tokenspool.metrics import ApiMetrics
from tokenspool.stack import Stack

from .helpers import sse_events, wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def prompt_body(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": "fake-gpt", "messages": [{"role": "user", "content": prompt}], **extra}


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def clients(http: httpx.AsyncClient, transport: str) -> float:
    return value(await scrape(http), "tokenspool_stream_clients", transport=transport)


async def no_clients(http: httpx.AsyncClient, transport: str) -> bool:
    return await clients(http, transport) == 0


async def test_submitted_and_streamed_job_counts_the_submission_and_each_relayed_event(
    http: httpx.AsyncClient,
) -> None:
    before = await scrape(http)

    response = await http.post("/v1/jobs", json=prompt_body("metrics [fake chunks=7]"))
    events = await sse_events(http, response.json()["id"])
    after = await scrape(http)

    assert (
        delta(before, after, "tokenspool_jobs_submitted_total", model="fake-gpt", api="jobs") == 1
    )
    assert delta(before, after, "tokenspool_events_relayed_total", transport="sse") == len(events)
    assert delta(before, after, "tokenspool_stream_resumes_total", transport="sse") == 0
    assert delta(before, after, "tokenspool_stream_duration_seconds_count", transport="sse") == 1
    assert delta(before, after, "tokenspool_consumer_lag_seconds_count", transport="sse") == len(
        events
    )


async def test_resumed_streams_are_counted_by_transport(
    http: httpx.AsyncClient, client: AsyncClient, stack: Stack
) -> None:
    job = await client.submit("fake-gpt", "metrics resume [fake chunks=5]")
    full = await sse_events(http, job.id)
    before = await scrape(http)

    rest = await sse_events(http, job.id, headers={"Last-Event-ID": full[2]["id"]})
    ws_url = stack.api_url.replace("http://", "ws://", 1) + f"/v1/jobs/{job.id}/ws"
    async with connect(f"{ws_url}?after={full[3]['id']}") as ws:
        ws_rest = [json.loads(m) async for m in ws]
    after = await scrape(http)

    resumes, relayed = "tokenspool_stream_resumes_total", "tokenspool_events_relayed_total"
    assert delta(before, after, resumes, transport="sse") == 1
    assert delta(before, after, resumes, transport="websocket") == 1
    assert delta(before, after, relayed, transport="sse") == len(rest)
    assert delta(before, after, relayed, transport="websocket") == len(ws_rest)
    # the job had ended before both connected: everything they got was replayed, and old
    replayed, lag = "tokenspool_events_replayed_total", "tokenspool_consumer_lag_seconds_count"
    assert delta(before, after, replayed, transport="sse") == len(rest)
    assert delta(before, after, replayed, transport="websocket") == len(ws_rest)
    assert delta(before, after, lag, transport="sse") == len(rest)


async def test_openai_completion_counts_its_submission_and_relayed_events(
    http: httpx.AsyncClient,
) -> None:
    before = await scrape(http)

    response = await http.post(
        "/v1/chat/completions", json=prompt_body("metrics openai [fake chunks=4]", stream=True)
    )
    after = await scrape(http)

    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]")
    assert (
        delta(
            before,
            after,
            "tokenspool_jobs_submitted_total",
            model="fake-gpt",
            api="chat_completions",
        )
        == 1
    )
    # job.queued, job.started, 4 content deltas, usage, job.completed
    assert delta(before, after, "tokenspool_events_relayed_total", transport="sse_openai") == 8


async def test_http_errors_are_counted_by_status(http: httpx.AsyncClient) -> None:
    before = await scrape(http)

    assert (await http.get("/v1/jobs/job_missing")).status_code == 404
    assert (await http.get("/v1/jobs/job_missing/events")).status_code == 404
    assert (await http.post("/v1/jobs", json={"model": "fake-gpt"})).status_code == 422
    after = await scrape(http)

    errors = "tokenspool_http_errors_total"
    assert delta(before, after, errors, status="404") == 2
    assert delta(before, after, errors, status="422") == 1
    assert delta(before, after, errors, status="200") == 0


async def test_connected_stream_clients_are_gauged_while_they_stay(
    http: httpx.AsyncClient, client: AsyncClient, stack: Stack
) -> None:
    job = await client.submit("fake-gpt", "metrics gauge [fake chunks=400 delay_ms=20]")
    for transport in ("sse", "websocket"):
        await wait_until(lambda t=transport: no_clients(http, t))

    async with http.stream("GET", f"/v1/jobs/{job.id}/events") as response:
        await anext(response.aiter_lines())
        assert await clients(http, "sse") == 1
    await wait_until(lambda: no_clients(http, "sse"))

    ws_url = stack.api_url.replace("http://", "ws://", 1) + f"/v1/jobs/{job.id}/ws"
    async with connect(ws_url) as ws:
        await ws.recv()
        assert await clients(http, "websocket") == 1
    await wait_until(lambda: no_clients(http, "websocket"))

    assert await client.cancel(job.id) in ("cancelling", "cancelled")


async def test_a_client_leaving_while_its_events_are_pushed_is_let_go_at_once(
    http: httpx.AsyncClient, client: AsyncClient
) -> None:
    job = await client.submit("fake-gpt", "metrics push leave [fake chunks=400 delay_ms=10]")
    await wait_until(lambda: no_clients(http, "sse"))
    before = await scrape(http)

    async with http.stream("GET", f"/v1/jobs/{job.id}/events") as response:
        lines = response.aiter_lines()
        received = 0
        while received < 30:  # past the catch-up: these come from the hub's notifications
            received += (await anext(lines)).startswith("data:")
        assert delta(before, await scrape(http), "tokenspool_hub_pushed_total") >= 1
    # the job still runs; its only client left, so its stream and subscription end
    await wait_until(lambda: no_clients(http, "sse"))
    after = await scrape(http)
    assert after[("tokenspool_hub_jobs", ())] == 0 and after[("tokenspool_hub_waiting", ())] == 0
    assert (await client.get(job.id)).status == "running"

    assert await client.cancel(job.id) in ("cancelling", "cancelled")


async def test_streamed_job_moves_the_hubs_read_notification_and_catch_up_counters(
    http: httpx.AsyncClient,
) -> None:
    before = await scrape(http)

    response = await http.post(
        "/v1/jobs", json=prompt_body("metrics hub [fake chunks=5 delay_ms=50]")
    )
    events = await sse_events(http, response.json()["id"])
    after = await scrape(http)

    assert events[-1]["event"] == "job.completed"
    assert delta(before, after, "tokenspool_hub_reads_total") >= 1
    assert delta(before, after, "tokenspool_hub_streams_read_total") >= 1
    # the stream is read while the job runs (5 chunks 50 ms apart), so the worker's writes
    # reach the hub as notifications
    assert delta(before, after, "tokenspool_hub_notifications_total") >= 1
    # the SSE client keeps up: handed-over events are written without waking its task
    assert delta(before, after, "tokenspool_hub_pushed_total") >= 1
    assert delta(before, after, "tokenspool_hub_catch_ups_total") >= 1
    assert ("tokenspool_hub_sweeps_total", ()) in after
    assert ("tokenspool_hub_waiting", ()) in after and ("tokenspool_hub_jobs", ()) in after


def test_relayed_events_are_counted_and_their_lag_bucketed_as_prometheus_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now_ms = 1_800_000_000_000
    monkeypatch.setattr(metrics_module.time, "time", lambda: now_ms / 1000)
    m = ApiMetrics()
    ages_ms = [0, 1, 3, 2_000, 10_000_000]  # 1 ms sits in the 0.001 bucket (le: "at most")
    ids = [f"{now_ms - age}-0".encode() for age in ages_ms]
    m.relayed_batch("sse", ids[:2], head=(0, 0))
    m.relayed_batch("sse", ids[2:], head=(now_ms - 2_000, 0))  # the last two predate it
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(m.render().decode())
        for sample in family.samples
    }

    def lag(le: str) -> float:
        return samples[
            ("tokenspool_consumer_lag_seconds_bucket", (("le", le), ("transport", "sse")))
        ]

    assert samples[("tokenspool_events_relayed_total", (("transport", "sse"),))] == 5
    assert samples[("tokenspool_events_replayed_total", (("transport", "sse"),))] == 2
    assert samples[("tokenspool_events_relayed_total", (("transport", "websocket"),))] == 0
    assert [lag(le) for le in ("0.001", "0.0025", "0.005", "5.0", "3600.0", "+Inf")] == [
        2,
        2,
        3,
        4,
        4,
        5,
    ]
    assert samples[("tokenspool_consumer_lag_seconds_count", (("transport", "sse"),))] == 5
    total = sum(ages_ms) / 1000
    assert (
        abs(samples[("tokenspool_consumer_lag_seconds_sum", (("transport", "sse"),))] - total)
        < 1e-6
    )
