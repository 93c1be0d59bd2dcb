"""Fault tolerance against real processes: killed, paused and stopped workers, flaky providers.

Every test checks the promise: each job ends with exactly one terminal event and one
consistent output (the winning attempt's), with no gap or repeat for its consumers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx

from tokenspool.accumulator import Accumulator
from tokenspool.client import AsyncClient
from tokenspool.embedded import Child
from tokenspool.events import Event
from tokenspool.stack import Stack

from .conftest import ARTIFACTS
from .helpers import Follower, expected, fake_requests, replace_worker, wait_until, worker_child

TERMINAL = ("job.completed", "job.failed", "job.cancelled")


def _exit_by_itself(child: Child, within: float = 15.0) -> int | None:
    """The child's exit code if it stops by itself in time; else kill it and return None."""
    assert child.proc is not None
    try:
        return child.proc.wait(within)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(5)
        return None


def assert_consistent(events: list[Event], text: str) -> Accumulator:
    """One terminal event, unique ids, and the fold equals the expected text."""
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    assert sum(e.type in TERMINAL for e in events) == 1 and events[-1].type in TERMINAL
    acc = Accumulator()
    for event in events:
        acc.add(event)
    assert acc.output().content == text
    return acc


async def test_killed_worker_job_completes_on_another_worker_after_retrying(
    fault_stack: Stack, fclient: AsyncClient
) -> None:
    prompt = "kill -9 [fake chunks=150 delay_ms=20]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)
    follower = Follower(fclient, job.id)
    started = await follower.until(lambda e: e.type == "job.started")
    await follower.until(lambda e: e.type == "content.delta")

    killed_at = time.monotonic()  # measured from just before the kill
    victim = replace_worker(fault_stack, started.worker, signal.SIGKILL)
    assert victim.proc is not None and victim.proc.wait(5) == -signal.SIGKILL
    restarted = await follower.until(lambda e: e.type == "job.started" and e.attempt == 2)
    failover = time.monotonic() - killed_at
    events = await follower.done()
    view = await fclient.get(job.id)

    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1 and retrying[0].next_attempt == 2
    assert "lease expired" in retrying[0].reason
    assert restarted.worker != started.worker
    assert_consistent(events, want.text)
    assert view.status == "completed" and view.attempt == 2 and view.output.content == want.text
    (ARTIFACTS / "failover-seconds.txt").write_text(f"{failover:.3f}\n")


async def test_paused_worker_cannot_write_after_its_lease_is_taken_over(
    fault_stack: Stack, fclient: AsyncClient
) -> None:
    prompt = "sigstop [fake chunks=400 delay_ms=20]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)
    follower = Follower(fclient, job.id)
    started = await follower.until(lambda e: e.type == "job.started")
    await follower.until(lambda e: e.type == "content.delta")
    paused = worker_child(fault_stack, started.worker)

    paused.signal(signal.SIGSTOP)
    try:
        await follower.until(lambda e: e.type == "job.started" and e.attempt == 2)
    finally:
        paused.signal(signal.SIGCONT)
    events = await follower.done()

    async def stale_stream_closed() -> bool:
        log = [r for r in await fake_requests(fault_stack.fake_url) if r["prompt"] == prompt]
        return bool(log) and log[0]["disconnected_at"] is not None

    await wait_until(stale_stream_closed, timeout=15)
    view = await fclient.get(job.id)
    after_retry = events[[e.type for e in events].index("job.retrying") + 1 :]
    assert all(e.attempt == 2 for e in after_retry)  # nothing of attempt 1 after the hand-over
    assert_consistent(events, want.text)
    assert view.status == "completed" and view.attempt == 2 and view.output.content == want.text


async def test_rate_limited_provider_is_retried_after_retry_after_and_completes(
    fclient: AsyncClient,
) -> None:
    prompt = "429 once [fake status=429 fail_times=1 chunks=6]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)

    events = [e async for e in fclient.events(job.id)]

    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1 and "RateLimitError before output" in retrying[0].reason
    started = [e for e in events if e.type == "job.started"]
    # the fake answers Retry-After: 1; the event ids carry the server's clock in ms
    gap_ms = int(started[1].event_id.split("-")[0]) - int(started[0].event_id.split("-")[0])
    assert gap_ms >= 900
    assert_consistent(events, want.text)


async def test_dropped_provider_stream_is_retried_from_the_start_and_completes(
    fclient: AsyncClient,
) -> None:
    prompt = "drop once [fake drop_after=5 fail_times=1 chunks=20]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)

    events = [e async for e in fclient.events(job.id)]
    view = await fclient.get(job.id)

    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1 and "after output began" in retrying[0].reason
    assert_consistent(events, want.text)
    assert view.attempt == 2 and view.output.content == want.text


async def test_stalled_provider_hits_the_idle_timeout_and_is_retried(fclient: AsyncClient) -> None:
    prompt = "stall once [fake stall_after=3 fail_times=1 chunks=10]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)

    events = [e async for e in fclient.events(job.id)]

    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1 and "Timeout" in retrying[0].reason
    assert_consistent(events, want.text)


async def test_provider_failing_every_attempt_ends_failed_with_the_last_error(
    fclient: AsyncClient,
) -> None:
    job = await fclient.submit("fake-gpt", "always 503 [fake status=503]")

    events = [e async for e in fclient.events(job.id)]
    view = await fclient.get(job.id)

    assert [e.type for e in events].count("job.retrying") == 3  # max_attempts 4
    assert view.status == "failed" and view.attempt == 4
    assert view.error is not None and "503" in view.error.message


async def test_client_errors_from_the_provider_are_not_retried(fclient: AsyncClient) -> None:
    job = await fclient.submit("fake-gpt", "bad request [fake status=400]")

    events = [e async for e in fclient.events(job.id)]

    assert "job.retrying" not in [e.type for e in events]
    assert events[-1].type == "job.failed" and events[-1].error.type == "BadRequestError"


async def test_sigterm_hands_a_long_job_to_another_worker_after_the_grace_period(
    fault_stack: Stack, fclient: AsyncClient
) -> None:
    long_prompt = "long [fake chunks=200 delay_ms=20]"
    job = await fclient.submit("fake-gpt", long_prompt)
    follower = Follower(fclient, job.id)
    started = await follower.until(lambda e: e.type == "job.started")
    await follower.until(lambda e: e.type == "content.delta")

    leaving = replace_worker(fault_stack, started.worker, signal.SIGTERM)
    try:
        events = await follower.done(within=40)
    finally:
        exit_code = _exit_by_itself(leaving)

    assert exit_code is not None  # the worker did stop
    retrying = [e for e in events if e.type == "job.retrying"]
    assert len(retrying) == 1
    later = [e for e in events if e.type == "job.started" and e.attempt == 2]
    assert later and later[0].worker != started.worker
    assert_consistent(events, expected("fake-gpt", long_prompt).text)


async def test_sigterm_lets_a_short_job_finish_within_the_grace_period(
    fault_stack: Stack, fclient: AsyncClient
) -> None:
    prompt = "short [fake chunks=10 delay_ms=30]"  # 0.3 s, inside the 2 s grace
    job = await fclient.submit("fake-gpt", prompt)
    follower = Follower(fclient, job.id)
    started = await follower.until(lambda e: e.type == "job.started")

    leaving = replace_worker(fault_stack, started.worker, signal.SIGTERM)
    try:
        events = await follower.done(within=30)
    finally:
        exit_code = _exit_by_itself(leaving)

    assert exit_code is not None
    assert [e.type for e in events].count("job.started") == 1  # finished where it started
    assert "job.retrying" not in [e.type for e in events]
    assert_consistent(events, expected("fake-gpt", prompt).text)


async def test_idempotency_key_returns_the_same_job_and_refuses_a_different_body(
    fault_stack: Stack,
) -> None:
    body = {"model": "fake-gpt", "messages": [{"role": "user", "content": "once [fake chunks=2]"}]}
    key = {"Idempotency-Key": f"order-{os.getpid()}-{time.time_ns()}"}
    async with httpx.AsyncClient(base_url=fault_stack.api_url) as http:
        first = await http.post("/v1/jobs", json=body, headers=key)
        again = await http.post("/v1/jobs", json=body, headers=key)
        other = await http.post("/v1/jobs", json={**body, "temperature": 0.5}, headers=key)

    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and first.json()["id"] in other.json()["detail"]


async def test_worker_stops_reading_the_provider_while_redis_is_unreachable(
    fault_stack: Stack, fclient: AsyncClient
) -> None:
    # 64 MB: more than every buffer on the way (kernel socket buffers on loopback grow to
    # several MB each, plus the worker's bounded queue of 1,024 events)
    prompt = "backpressure [fake chunks=16000 pad=4000]"
    want = expected("fake-gpt", prompt)
    job = await fclient.submit("fake-gpt", prompt)
    follower = Follower(fclient, job.id)
    await follower.until(lambda e: e.type == "content.delta")

    async def sent() -> int:
        log = [r for r in await fake_requests(fault_stack.fake_url) if r["prompt"] == prompt]
        return int(log[-1]["sent"])

    fault_stack.redis.signal(signal.SIGSTOP)
    try:
        readings = [await sent()]

        async def plateaued() -> bool:  # the provider is blocked: nothing more leaves it
            readings.append(await sent())
            return len(readings) > 3 and readings[-1] == readings[-4]

        await wait_until(plateaued, timeout=10, interval=0.1)
    finally:
        fault_stack.redis.signal(signal.SIGCONT)
    events = await follower.done(within=60)

    assert readings[-1] < 16_000  # stalled mid-stream, not finished into a buffer
    assert events[-1].type == "job.completed", [e for e in events if e.type.startswith("job.")]
    acc = assert_consistent(events, want.text)
    assert acc.output().content == want.text
