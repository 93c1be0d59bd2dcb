"""Builds the arq worker from Settings. All job logic lives in ``tokenspool.runner``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvloop
from arq import Worker
from arq.worker import func

from tokenspool import fastpath
from tokenspool.cancellation import CancelWatcher
from tokenspool.connections import close, connect, job_deserializer, job_serializer
from tokenspool.errors import JobNotFoundError
from tokenspool.gcpolicy import freeze_startup_objects, full_collections
from tokenspool.jobs import JobPayload
from tokenspool.keys import Keys
from tokenspool.leases import LeaseKeeper, Reaper
from tokenspool.logs import setup_logging
from tokenspool.model_list import ModelList
from tokenspool.provider import load_litellm
from tokenspool.queue import RUN_JOB
from tokenspool.runner import RunContext, run_job, worker_name
from tokenspool.settings import Settings
from tokenspool.store import JobStore
from tokenspool.tasks import stop_task
from tokenspool.worker_metrics import WorkerMetrics
from tokenspool.writer import Writer

from .wakeable import WakeableWorker

log = logging.getLogger("tokenspool.worker")


async def _run_job(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    run_ctx: RunContext = ctx["tokenspool"]
    return await run_job(run_ctx, JobPayload.model_validate(payload))


def build_worker(settings: Settings) -> Worker:
    models = ModelList.load(settings.models_file)
    pool = connect(settings)
    # the process's one event writer: a round trip at a time, each under its own deadline
    writer_redis = connect(settings, max_connections=4, caller_bounds_waits=True)

    takeovers: set[asyncio.Task[str]] = set()

    async def startup(ctx: dict[str, Any]) -> None:
        await asyncio.to_thread(load_litellm)  # ~2 s import, once, before taking jobs
        # litellm and the OpenAI SDK leave ~400k long-lived objects; they are frozen, and full
        # GC passes run on a timer (tokenspool/gcpolicy.py)
        freeze_startup_objects()
        collector = asyncio.create_task(full_collections(settings.gc_full_seconds))
        store = JobStore(pool, settings)
        cancels = CancelWatcher(
            pool, store.keys.cancel_channel, store.cancels_requested, settings.cancel_check_seconds
        )
        cancels.start()
        leases = LeaseKeeper(store)
        leases.start()
        metrics = WorkerMetrics()
        writer = Writer(store, writer_redis, counter=metrics.redis_round_trips)
        writer.start()
        run_ctx = RunContext(
            settings=settings,
            store=store,
            models=models,
            cancels=cancels,
            leases=leases,
            writer=writer,
            worker=worker_name(),
            metrics=metrics,
        )

        async def take_over(job_id: str) -> None:
            if job_id in run_ctx.taking_over:
                return
            try:
                request = await store.request(job_id)
            except JobNotFoundError:
                await store.forget_running(job_id)
                return
            run_ctx.taking_over.add(job_id)
            run_ctx.metrics.takeovers.inc()
            payload = JobPayload(job_id=job_id, request=request)
            task = asyncio.create_task(run_job(run_ctx, payload, "lease expired: worker lost"))
            takeovers.add(task)

            def done(t: asyncio.Task[str]) -> None:
                takeovers.discard(t)
                run_ctx.taking_over.discard(job_id)

            task.add_done_callback(done)

        if settings.worker_metrics_port is not None:
            run_ctx.metrics.serve(settings.worker_metrics_port)
        reaper = Reaper(store, lambda: settings.max_jobs - leases.count, take_over, leases)
        reaper.start()
        ctx["tokenspool"] = run_ctx
        ctx["tokenspool_reaper"] = reaper
        ctx["tokenspool_gc"] = collector
        log.info(
            "worker %s ready on %s: models %s",
            worker_name(),
            type(asyncio.get_running_loop()).__module__,
            ", ".join(models.names),
        )

    async def shutdown(ctx: dict[str, Any]) -> None:
        run_ctx: RunContext | None = ctx.get("tokenspool")
        if run_ctx is None:
            return
        await ctx["tokenspool_reaper"].stop()
        if takeovers:
            # same grace as arq's own jobs, then cancel: run_job hands them over
            _, pending = await asyncio.wait(takeovers, timeout=settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await run_ctx.writer.stop()
        await close(writer_redis)
        await run_ctx.leases.stop()
        await run_ctx.cancels.stop()
        await fastpath.aclose()
        await stop_task(ctx["tokenspool_gc"])

    return WakeableWorker(
        functions=[func(_run_job, name=RUN_JOB)],
        wake_channel=Keys(settings.key_prefix).wake_channel,
        redis_pool=pool,
        queue_name=settings.queue_name,
        max_jobs=settings.max_jobs,
        # our own deadline (job_timeout_seconds) ends the attempt first, with job.failed
        job_timeout=settings.job_timeout_seconds + 30,
        poll_delay=settings.poll_delay_seconds,
        keep_result=0,
        on_startup=startup,
        on_shutdown=shutdown,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        handle_signals=True,
        # SIGTERM: stop taking jobs, let running ones finish for the grace period, then cancel
        # them; a cancelled run_job releases its lease so another worker continues the job
        job_completion_wait=int(settings.shutdown_grace_seconds),
        retry_jobs=True,
    )


def run_worker(settings: Settings | None = None) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    settings = settings or Settings()
    setup_logging(settings)
    # arq's Worker runs on the loop that asyncio.get_event_loop() returns when it is built;
    # uvloop costs less per I/O callback than the stock loop, and a worker with hundreds of
    # paced streams wakes up once per chunk (docs/benchmarks.md)
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_worker(settings).run()
