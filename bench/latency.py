"""Job start latency end to end: pickup and TTFT overhead at a steady arrival rate.

Jobs arrive open-loop at ``RATE`` per second (evenly spaced), in two ways measured one after
the other: one request per job (``POST /v1/jobs`` with ``Accept: text/event-stream``, as the
Python clients submit; the figures the targets are checked on), and a ``POST`` answered 202 then
a ``GET`` of the job's events. Every stage is timed on the machine's one clock:
the client's ``time.time()`` around the POST and at each SSE read, the worker's ``started_at``
(job hash, stamped just before the START script), the Redis entry id of ``job.started``
(server time, 1 ms steps), and the fake provider's ``started_at`` for the request.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from . import sse
from .context import Context
from .driver import Driver, Submitted, entry_time
from .results import GroupResult, ms, times
from .stats import Summary, median

RATE = 20.0  # new jobs per second (the target load)
TTFT_S = 0.1
_ids = itertools.count()


async def _job(
    driver: Driver, prompt: str, at: float, one_request: bool
) -> tuple[Submitted, sse.StreamLog]:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    log = sse.StreamLog("", keep_ids=False)
    if one_request:
        return await driver.submit_and_follow(prompt, log, within=60), log
    sub = await driver.submit(prompt)
    log.job_id = sub.job_id
    await driver.follow(sub.job_id, log, within=60)
    return sub, log


async def steady_arrivals(
    ctx: Context, driver: Driver, result: GroupResult, one_request: bool
) -> None:
    """``one_request``: the figures go under ``e2e.``; otherwise (POST, then GET) under
    ``e2e.get.``."""
    seconds = ctx.size(15, 4)
    n = int(seconds * RATE)
    run = next(_ids)
    start = time.monotonic() + 0.2
    prompts = [f"lat-{run}-{k} [fake chunks=10 ttft_ms={int(TTFT_S * 1000)}]" for k in range(n)]
    pairs = await asyncio.gather(
        *(_job(driver, p, start + k / RATE, one_request) for k, p in enumerate(prompts))
    )
    subs = [s for s, _ in pairs]
    logs = [log for _, log in pairs]
    worker_started = await driver.hash_floats([s.job_id for s in subs], "started_at")
    provider_started = await driver.fake_started()

    post, pickup_sse, pickup_worker, sse_path, connect, setup, ttft, first_relay = (
        [] for _ in range(8)
    )
    replayed = 0
    for sub, log, w_started in zip(subs, logs, worker_started, strict=True):
        if log.started_at is None or not log.content_at or w_started is None:
            continue
        p_started = provider_started.get(sub.prompt)
        post.append(sub.returned_at - sub.sent_at)
        pickup_sse.append(log.started_at - sub.returned_at)
        pickup_worker.append(w_started - sub.returned_at)
        sse_path.append(log.started_at - entry_time(log.started_id))
        assert log.first_event_at is not None
        connect.append(log.first_event_at - sub.returned_at)
        replayed += log.first_event_at == log.started_at
        ttft.append(log.content_at[0] - sub.sent_at - TTFT_S)
        if p_started is not None:
            setup.append(p_started - w_started)
            first_relay.append(log.content_at[0] - p_started - TTFT_S)

    answered = "response head read" if one_request else "202 read"
    rows = [
        (f"POST /v1/jobs round trip (sent → {answered})", post, ""),
        (
            f"**pickup**: POST answered ({answered}) → client receives job.started",
            pickup_sse,
            "pickup",
        ),
        (
            "  queue pickup: POST answered → worker claims the job (started_at)",
            pickup_worker,
            "pickup_worker",
        ),
        ("  SSE path: job.started appended (entry id) → received", sse_path, "sse_path"),
        ("  SSE connect: POST answered → first event (job.queued) received", connect, ""),
        (
            "worker claim → provider receives the request (litellm call set-up)",
            setup,
            "provider_setup",
        ),
        (
            "**TTFT overhead**: first content.delta received - POST sent - scripted TTFT",
            ttft,
            "ttft",
        ),
        (
            "  first chunk relay: provider start + TTFT → first content.delta received",
            first_relay,
            "first_relay",
        ),
    ]
    how = "one request each" if one_request else "POST, then GET of the events"
    prefix = "e2e." if one_request else "e2e.get."
    table = result.table(
        f"Job start at {RATE:.0f} new jobs/s, {how} ({len(post)} of {n} jobs, 10 chunks each, "
        f"scripted TTFT {TTFT_S * 1000:.0f} ms, 1 worker)",
        ["stage", "p50", "p90", "p99", "max"],
    )
    for label, values, key in rows:
        s = Summary.of(values)
        table.add(label, ms(s.p50), ms(s.p90), ms(s.p99), ms(s.max))
        if key:
            ctx.put(f"{prefix}{key}_p50", s.p50)
            ctx.put(f"{prefix}{key}_p99", s.p99)
    table.notes.append(
        "Stages marked with two spaces are parts of the line above them. Entry ids carry "
        "Redis server time in whole milliseconds, so the SSE path is overstated by up to 1 ms "
        "(0.5 ms on average)."
    )
    if not one_request:
        table.notes.append(
            f"In {replayed} of {len(post)} jobs the SSE connection was opened after job.started "
            "had been appended (it arrived in the same read as job.queued), so its SSE path "
            "includes the connection set-up."
        )


def ttft_against_baselines(ctx: Context, result: GroupResult) -> None:
    vs = result.table(
        "TTFT overhead vs calling the provider directly (same scripted TTFT)",
        ["path", "p50", "p99", "p50 vs litellm direct", "p99 vs litellm direct"],
    )
    for label, prefix in (
        ("tokenspool, one request (POST with Accept: text/event-stream)", "e2e."),
        ("tokenspool, POST then GET", "e2e.get."),
    ):
        p50, p99 = ctx.get(f"{prefix}ttft_p50"), ctx.get(f"{prefix}ttft_p99")
        vs.add(
            label,
            ms(p50),
            ms(p99),
            times(ctx.ratio_to(p50, "baseline.litellm.ttft_p50")),
            times(ctx.ratio_to(p99, "baseline.litellm.ttft_p99")),
        )
    for name in ("litellm", "httpx"):
        p50, p99 = ctx.get(f"baseline.{name}.ttft_p50"), ctx.get(f"baseline.{name}.ttft_p99")
        vs.add(
            f"{name} direct (baselines)",
            ms(p50),
            ms(p99),
            times(ctx.ratio_to(p50, "baseline.litellm.ttft_p50")),
            times(ctx.ratio_to(p99, "baseline.litellm.ttft_p99")),
        )


async def burst_first_content(ctx: Context, driver: Driver, result: GroupResult) -> None:
    """Time to the first content of a 2,000-chunk stream with no delay between chunks."""
    reps = ctx.size(5, 2)
    run = next(_ids)
    firsts, spans = [], []
    for k in range(reps):
        sub = await driver.submit(f"burst-{run}-{k} [fake chunks=2000]")
        log = sse.StreamLog(sub.job_id, keep_ids=False)
        await driver.follow(sub.job_id, log, within=120)
        firsts.append(log.content_at[0] - sub.sent_at)
        spans.append(log.content_at[-1] - log.content_at[0])
    first = median(firsts)
    ctx.put("e2e.burst_first_content", first)
    table = result.table(
        f"First content of a 2,000-chunk burst (no delay between chunks; median of {reps})",
        ["path", "time to first content", "vs litellm direct", "first → last content"],
    )
    table.add(
        "tokenspool (POST sent → first content.delta over SSE)",
        ms(first),
        times(ctx.ratio_to(first, "baseline.litellm.burst_first_content")),
        ms(median(spans)),
    )
    for name in ("litellm", "httpx"):
        value = ctx.get(f"baseline.{name}.burst_first_content")
        table.add(
            f"{name} direct (call → first content chunk)",
            ms(value),
            times(ctx.ratio_to(value, "baseline.litellm.burst_first_content")),
            "",
        )


async def run(ctx: Context, result: GroupResult) -> None:
    stack = ctx.stack()
    if len(stack.workers) != 1:
        stack.set_workers(1)
    driver = Driver(stack)
    try:
        for k in range(3):  # warm-up: the worker's first litellm call is slow
            sub = await driver.submit(f"warm-{next(_ids)}-{k} [fake chunks=5]")
            await driver.follow(sub.job_id, sse.StreamLog(sub.job_id), within=60)
        await steady_arrivals(ctx, driver, result, one_request=True)
        await steady_arrivals(ctx, driver, result, one_request=False)
        ttft_against_baselines(ctx, result)
        await burst_first_content(ctx, driver, result)
    finally:
        await driver.aclose()
