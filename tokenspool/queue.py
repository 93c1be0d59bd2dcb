"""Submitting jobs: write the record and its first event, then enqueue it for the workers."""

from __future__ import annotations

from arq.connections import ArqRedis

from .jobs import JobPayload, JobRequest, new_job_id
from .model_list import ModelList
from .store import JobStore

RUN_JOB = "run_job"  # the arq function name the workers register


async def submit(store: JobStore, pool: ArqRedis, models: ModelList, request: JobRequest) -> str:
    """Queue ``request``; returns the new job id. Raises UnknownModelError for a bad model."""
    models.check(request.model)
    job_id = new_job_id()
    # the stream exists (with job.queued) before any worker can see the job
    await store.create(job_id, request)
    payload = JobPayload(job_id=job_id, request=request)
    await pool.enqueue_job(
        RUN_JOB,
        payload.model_dump(mode="json", exclude_none=True),
        _job_id=job_id,
        _queue_name=store.settings.queue_name,
    )
    return job_id
