"""Runs a job: attempts of provider stream in, typed events out, exactly one terminal event.

An attempt ends in one of: completed, failed, cancelled (all terminal, written fenced), a retry
(the same worker starts the next attempt after a backoff), or lost (another worker took the job
over; nothing more is written). See docs/protocol.md, "Attempts, leases and retries".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import cast

from . import fastpath
from .accumulator import Accumulator
from .cancellation import CancelWatcher
from .chunks import ChunkMapper
from .errors import FencedError, ProviderError, TokenspoolError
from .events import (
    ContentDelta,
    ErrorInfo,
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    ObjectDelta,
    UsageInfo,
    _Event,
)
from .fastpath import FastOpenAIStream
from .jobs import JobPayload, JobStatus
from .leases import LeaseKeeper
from .logs import current_job
from .model_list import ModelList
from .provider import ProviderStream, cost_usd
from .publisher import Publisher, PublishError
from .settings import Settings
from .store import JobStore
from .structured import OutputValidationError, StructuredTracker, json_schema_of
from .worker_metrics import WorkerMetrics
from .writer import Writer

log = logging.getLogger(__name__)

FINAL = frozenset({"completed", "failed", "cancelled", "missing"})
CLEANUP_SECONDS = 2.0  # how long an ended attempt waits for its tasks to unwind


def worker_name() -> str:
    """Names this process: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class RunContext:
    """What every attempt in a worker process shares."""

    settings: Settings
    store: JobStore
    models: ModelList
    cancels: CancelWatcher
    leases: LeaseKeeper
    writer: Writer
    worker: str
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    taking_over: set[str] = field(default_factory=set)


@dataclass
class _Retry:
    reason: str
    delay: float


def _estimate_usage(mapper: ChunkMapper) -> UsageInfo:
    # about four characters a token for English text; flagged as an estimate
    completion = (mapper.output_chars + 3) // 4
    return UsageInfo(completion_tokens=completion, total_tokens=completion, estimated=True)


def _priced(ctx: RunContext, model: str, usage: UsageInfo | None) -> UsageInfo | None:
    if usage is None:
        return None
    try:
        params = ctx.models.params(model)
    except TokenspoolError:
        return usage
    price = cost_usd(params, usage.prompt_tokens, usage.completion_tokens)
    return usage.model_copy(update={"cost_usd": price})


def backoff(settings: Settings, attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After wins when it is longer."""
    cap = min(settings.retry_max_seconds, settings.retry_base_seconds * 2 ** (attempt - 1))
    delay = random.uniform(0, cap)
    if retry_after is not None:
        delay = max(delay, min(retry_after, settings.retry_max_seconds))
    return delay


async def run_job(ctx: RunContext, payload: JobPayload, reason: str = "worker lost") -> str:
    """Run ``payload`` to its end (or until another worker owns it); returns the outcome."""
    job_id = payload.job_id
    current_job.set(job_id)  # run_job runs in its own task: the value stays with this job
    owner_attempt = 0
    while True:
        start = await ctx.store.start(job_id, ctx.worker, reason, owner_attempt)
        if start.status != "started":
            log.info("job %s not started: %s", job_id, start.status)
            if start.status in FINAL:
                await ctx.store.forget_running(job_id)
            return start.status
        attempt = start.attempt
        log.info("job %s attempt %d started on %s", job_id, attempt, ctx.worker)
        ctx.metrics.attempts.labels(payload.request.model).inc()
        if attempt == 1 and start.created_at:
            ctx.metrics.pickup.observe(max(0.0, time.time() - start.created_at))
        lost = ctx.leases.hold(job_id, attempt)
        finished = False
        try:
            ctx.metrics.active.inc()
            try:
                outcome = await _run_attempt(ctx, payload, attempt, lost, start.created_at)
            finally:
                ctx.metrics.active.dec()
            ctx.metrics.finished.labels("retry" if isinstance(outcome, _Retry) else outcome).inc()
            if isinstance(outcome, _Retry):
                log.info(
                    "job %s attempt %d will be retried in %.2fs: %s",
                    job_id,
                    attempt,
                    outcome.delay,
                    outcome.reason,
                )
                lost_wait = asyncio.create_task(lost.wait())
                try:
                    await asyncio.wait({lost_wait}, timeout=outcome.delay)
                finally:
                    lost_wait.cancel()
                finished = True  # either way this attempt is settled: lost, or retried by us
                if lost.is_set():
                    return "lost"
                owner_attempt, reason = attempt, outcome.reason
                continue
            finished = True
            if outcome in FINAL:
                await ctx.store.forget_running(job_id)
            return outcome
        except BaseException:
            finished = finished or lost.is_set()
            raise
        finally:
            ctx.leases.drop(job_id)
            if not finished:
                # shutdown or crash of this task: hand the job over at once
                with contextlib.suppress(Exception):
                    await asyncio.shield(ctx.store.release(job_id, attempt))
                log.info("job %s attempt %d handed over", job_id, attempt)


async def _run_attempt(
    ctx: RunContext, payload: JobPayload, attempt: int, lost: asyncio.Event, created_at: float
) -> str | _Retry:
    job_id = payload.job_id
    request = payload.request
    settings = ctx.settings
    mapper = ChunkMapper(job_id, attempt)
    acc = Accumulator()
    acc.attempt = attempt
    cancel_event = ctx.cancels.register(job_id)
    stream: ProviderStream | FastOpenAIStream | None = None
    schema = json_schema_of(request.response_format)
    tracker = StructuredTracker(schema) if schema is not None else None
    parsed: object = None

    async with Publisher(
        ctx.writer,
        job_id,
        attempt,
        max_pending=settings.max_pending_events,
        outage_seconds=settings.redis_outage_seconds,
    ) as pub:
        first_output = True

        async def emit(events: list[_Event]) -> None:
            nonlocal first_output
            if first_output and events:
                first_output = False
                if created_at:
                    ctx.metrics.ttft.observe(max(0.0, time.time() - created_at))
            for event in events:
                acc.add(cast(Event, event))
                await pub.publish(event)
                if tracker is not None and isinstance(event, ContentDelta):
                    changed, value = tracker.feed(event.text)
                    if changed:
                        partial = ObjectDelta(job_id=job_id, attempt=attempt, value=value)
                        acc.add(partial)
                        await pub.publish(partial)

        async def produce() -> None:
            nonlocal stream
            try:
                params = ctx.models.params(request.model)
            except TokenspoolError as exc:
                raise ProviderError(exc.__class__.__name__, str(exc)) from exc
            kind = (
                FastOpenAIStream
                if settings.fast_path and fastpath.applies(params)
                else ProviderStream
            )
            stream = kind(params, request.provider_kwargs(), settings.provider_idle_timeout_seconds)
            await stream.open()
            async for chunk in stream.chunks():
                await emit(mapper.feed(chunk))
            await emit(mapper.finish())
            await pub.flush()

        producing = asyncio.create_task(produce(), name=f"produce:{job_id}")
        # set by the process's cancel watcher (pub/sub, or its periodic check of the flags)
        watching = asyncio.create_task(cancel_event.wait())
        losing = asyncio.create_task(lost.wait())
        final: _Event
        status: JobStatus
        error: ErrorInfo | None = None
        try:
            done, _ = await asyncio.wait(
                {producing, watching, losing},
                timeout=settings.job_timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if losing in done:
                log.warning(
                    "job %s attempt %d: another worker took over; stopping", job_id, attempt
                )
                return "lost"
            if producing in done and producing.exception() is None:
                status = JobStatus.completed
                final = JobCompleted(
                    job_id=job_id,
                    attempt=attempt,
                    finish_reason=mapper.finish_reason or "stop",
                    usage=_priced(ctx, request.model, mapper.usage),
                )
                if tracker is not None:
                    try:
                        parsed = tracker.finish()
                    except OutputValidationError as invalid:
                        status = JobStatus.failed
                        error = ErrorInfo(type="OutputValidationError", message=str(invalid))
                        final = JobFailed(job_id=job_id, attempt=attempt, error=error)
            elif producing in done:
                exc = producing.exception()
                if isinstance(exc, FencedError):
                    log.warning("job %s attempt %d fenced off: %s", job_id, attempt, exc)
                    return "lost"
                if isinstance(exc, PublishError):
                    # Redis stayed away past the deadline: give up this attempt without a
                    # terminal event; its lease lapses and a worker that reaches Redis retries
                    log.error("job %s attempt %d abandoned: %s", job_id, attempt, exc)
                    return "abandoned"
                if isinstance(exc, ProviderError):
                    ctx.metrics.provider_errors.labels(exc.type).inc()
                    began = mapper.output_chars > 0
                    may_retry = exc.retryable and attempt < settings.max_attempts
                    if may_retry and (not began or settings.midstream_policy == "retry"):
                        when = "after output began" if began else "before output"
                        return _Retry(
                            reason=f"{exc.type} {when}: {exc.message}"[:500],
                            delay=backoff(settings, attempt, exc.retry_after),
                        )
                    error = ErrorInfo(type=exc.type, message=exc.message)
                else:
                    log.error("job %s failed unexpectedly", job_id, exc_info=exc)
                    error = ErrorInfo(type=type(exc).__name__, message=str(exc))
                status = JobStatus.failed
                final = JobFailed(job_id=job_id, attempt=attempt, error=error)
            elif watching in done:
                status = JobStatus.cancelled
                final = JobCancelled(
                    job_id=job_id,
                    attempt=attempt,
                    reason="cancelled by request",
                    usage=_priced(ctx, request.model, mapper.usage or _estimate_usage(mapper)),
                )
            else:
                status = JobStatus.failed
                error = ErrorInfo(
                    type="Timeout",
                    message=f"job exceeded its deadline of {settings.job_timeout_seconds}s",
                )
                final = JobFailed(job_id=job_id, attempt=attempt, error=error)
        finally:
            ctx.cancels.unregister(job_id)
            for task in (producing, watching, losing):
                task.cancel()
            if stream is not None:
                await stream.aclose()  # closes the upstream connection
            ctx.metrics.events_written.inc(pub.written)
            ctx.metrics.redis_writes.inc(pub.round_trips)
            # bounded: a provider library that ignores cancellation must not hold the worker
            await asyncio.wait({producing, watching, losing}, timeout=CLEANUP_SECONDS)

        if isinstance(final, JobCancelled):
            acc.add(final)
        usage = final.usage if isinstance(final, JobCompleted | JobCancelled) else mapper.usage
        output = acc.output().model_copy(
            update={"finish_reason": mapper.finish_reason, "parsed": parsed}
        )
        fields = {
            "output": output.model_dump_json(),
            "usage": usage.model_dump_json() if usage else "",
            "error": error.model_dump_json() if error else "",
        }
        try:
            await pub.finish(final, status.value, fields)
        except FencedError as exc:
            log.warning("job %s attempt %d fenced off at finish: %s", job_id, attempt, exc)
            return "lost"
        except PublishError as exc:
            log.error("job %s attempt %d abandoned at finish: %s", job_id, attempt, exc)
            return "abandoned"
    log.info("job %s attempt %d %s", job_id, attempt, status.value)
    return status.value
