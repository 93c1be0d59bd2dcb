"""A worker's /metrics: attempts, outcomes, pickup and first-token histograms, errors."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tokenspool.client import AsyncClient
from tokenspool.embedded import free_port, wait_for_port
from tokenspool.stack import Stack, start_stack

from .conftest import stack_dir


@pytest.fixture(scope="module")
def metrics_stack() -> Iterator[tuple[Stack, int]]:
    port = free_port()
    s = start_stack(
        workers=1,
        extra_env={"TOKENSPOOL_WORKER_METRICS_PORT": str(port)},
        workdir=stack_dir("metrics-stack"),
    )
    try:
        s.wait_ready()
        wait_for_port(port, s.workers[0].proc, timeout=30)
        yield s, port
    finally:
        s.stop()


async def _samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_worker_metrics_count_attempts_outcomes_latencies_and_errors(
    metrics_stack: tuple[Stack, int],
) -> None:
    stack, port = metrics_stack
    before = await _samples(port)
    async with AsyncClient(stack.api_url) as client:
        ok = await client.submit("fake-gpt", "metrics ok [fake chunks=8]")
        bad = await client.submit("fake-gpt", "metrics bad [fake status=400]")
        await client.wait(ok.id)
        await client.wait(bad.id)
    after = await _samples(port)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("tokenspool_worker_attempts_total", model="fake-gpt") == 2
    assert delta("tokenspool_worker_jobs_finished_total", outcome="completed") == 1
    assert delta("tokenspool_worker_jobs_finished_total", outcome="failed") == 1
    assert delta("tokenspool_worker_provider_errors_total", type="BadRequestError") == 1
    assert delta("tokenspool_worker_pickup_seconds_count") == 2
    assert delta("tokenspool_worker_time_to_first_token_seconds_count") == 1
    assert delta("tokenspool_worker_events_written_total") >= 8
    assert (
        0
        < delta("tokenspool_worker_redis_writes_total")
        <= delta("tokenspool_worker_events_written_total")
    )
    assert delta("tokenspool_worker_redis_round_trips_total") > 0
    assert after[("tokenspool_worker_active_streams", ())] == 0
