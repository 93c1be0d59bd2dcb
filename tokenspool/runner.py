"""Runs one attempt of a job: provider stream in, typed events out, one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass

from .accumulator import Accumulator
from .cancellation import CancelWatcher
from .chunks import ChunkMapper
from .errors import FencedError, ProviderError, TokenspoolError
from .events import ErrorInfo, JobCancelled, JobCompleted, JobFailed, UsageInfo, _Event
from .jobs import JobPayload, JobStatus
from .model_list import ModelList
from .provider import ProviderStream
from .publisher import Publisher
from .settings import Settings
from .store import JobStore

log = logging.getLogger(__name__)


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
    worker: str


class _Cancelled(Exception):
    pass


async def _wait_cancel(ctx: RunContext, job_id: str, event: asyncio.Event) -> None:
    """Returns when a cancel was requested: pub/sub wake-up, or the periodic flag check."""
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ctx.settings.cancel_check_seconds):
                await event.wait()
                return
        if await ctx.store.cancel_requested(job_id):
            return


def _estimate_usage(mapper: ChunkMapper) -> UsageInfo:
    # about four characters a token for English text; flagged as an estimate
    completion = (mapper.output_chars + 3) // 4
    return UsageInfo(completion_tokens=completion, total_tokens=completion, estimated=True)


async def run_job(ctx: RunContext, payload: JobPayload) -> str:
    """Run one attempt of ``payload``; returns the job's final status (or why it did not run)."""
    job_id = payload.job_id
    start = await ctx.store.start(job_id, ctx.worker)
    if start.status != "started":
        log.info("job %s not started: %s", job_id, start.status)
        return start.status
    attempt = start.attempt
    log.info("job %s attempt %d started on %s", job_id, attempt, ctx.worker)
    request = payload.request
    mapper = ChunkMapper(job_id, attempt)
    acc = Accumulator()
    acc.attempt = attempt
    cancel_event = ctx.cancels.register(job_id)
    stream: ProviderStream | None = None

    async with Publisher(ctx.store, job_id, attempt) as pub:

        async def emit(events: list[_Event]) -> None:
            for event in events:
                acc.add(event)
                await pub.publish(event)

        async def produce() -> None:
            nonlocal stream
            try:
                params = ctx.models.params(request.model)
            except TokenspoolError as exc:
                raise ProviderError(exc.__class__.__name__, str(exc)) from exc
            stream = ProviderStream(
                params, request.provider_kwargs(), ctx.settings.provider_idle_timeout_seconds
            )
            await stream.open()
            async for chunk in stream.chunks():
                await emit(mapper.feed(chunk))
            await emit(mapper.finish())

        producing = asyncio.create_task(produce(), name=f"produce:{job_id}")
        watching = asyncio.create_task(_wait_cancel(ctx, job_id, cancel_event))
        final: _Event
        status: JobStatus
        error: ErrorInfo | None = None
        try:
            done, _ = await asyncio.wait(
                {producing, watching},
                timeout=ctx.settings.job_timeout_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if producing in done and producing.exception() is None:
                status = JobStatus.completed
                final = JobCompleted(
                    job_id=job_id,
                    attempt=attempt,
                    finish_reason=mapper.finish_reason or "stop",
                    usage=mapper.usage,
                )
            elif producing in done:
                exc = producing.exception()
                if isinstance(exc, FencedError):
                    log.warning("job %s attempt %d fenced off: %s", job_id, attempt, exc)
                    return "fenced"
                if isinstance(exc, ProviderError):
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
                    usage=mapper.usage or _estimate_usage(mapper),
                )
            else:
                status = JobStatus.failed
                error = ErrorInfo(
                    type="Timeout",
                    message=f"job exceeded its deadline of {ctx.settings.job_timeout_seconds}s",
                )
                final = JobFailed(job_id=job_id, attempt=attempt, error=error)
        finally:
            ctx.cancels.unregister(job_id)
            for task in (producing, watching):
                task.cancel()
            for task in (producing, watching):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if stream is not None:
                await stream.aclose()

        if isinstance(final, JobCancelled):
            acc.add(final)
        usage = final.usage if isinstance(final, JobCompleted | JobCancelled) else mapper.usage
        fields = {
            "output": acc.output().model_copy(update={"finish_reason": mapper.finish_reason})
            .model_dump_json(),
            "usage": usage.model_dump_json() if usage else "",
            "error": error.model_dump_json() if error else "",
        }
        try:
            await pub.finish(final, status.value, fields)
        except FencedError as exc:
            log.warning("job %s attempt %d fenced off at finish: %s", job_id, attempt, exc)
            return "fenced"
    log.info("job %s attempt %d %s", job_id, attempt, status.value)
    return status.value
