"""Builds the arq worker from Settings. All job logic lives in ``tokenspool.runner``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from arq import Worker
from arq.worker import func

from tokenspool.cancellation import CancelWatcher
from tokenspool.connections import connect, job_deserializer, job_serializer
from tokenspool.jobs import JobPayload
from tokenspool.logs import setup_logging
from tokenspool.model_list import ModelList
from tokenspool.provider import load_litellm
from tokenspool.queue import RUN_JOB
from tokenspool.runner import RunContext, run_job, worker_name
from tokenspool.settings import Settings
from tokenspool.store import JobStore

log = logging.getLogger("tokenspool.worker")


async def _run_job(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
    run_ctx: RunContext = ctx["tokenspool"]
    return await run_job(run_ctx, JobPayload.model_validate(payload))


def build_worker(settings: Settings) -> Worker:
    models = ModelList.load(settings.models_file)
    pool = connect(settings)

    async def startup(ctx: dict[str, Any]) -> None:
        await asyncio.to_thread(load_litellm)  # ~2 s import, once, before taking jobs
        store = JobStore(pool, settings)
        cancels = CancelWatcher(pool, store.keys.cancel_channel)
        cancels.start()
        ctx["tokenspool"] = RunContext(
            settings=settings, store=store, models=models, cancels=cancels, worker=worker_name()
        )
        log.info("worker %s ready: models %s", worker_name(), ", ".join(models.names))

    async def shutdown(ctx: dict[str, Any]) -> None:
        run_ctx: RunContext | None = ctx.get("tokenspool")
        if run_ctx is not None:
            await run_ctx.cancels.stop()

    return Worker(
        functions=[func(_run_job, name=RUN_JOB)],
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
    )


def run_worker(settings: Settings | None = None) -> None:
    """Run a worker until SIGINT/SIGTERM."""
    settings = settings or Settings()
    setup_logging(settings)
    build_worker(settings).run()
