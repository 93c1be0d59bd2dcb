"""Submitting jobs: write the record and its first event, then enqueue it for the workers."""

from __future__ import annotations

import hashlib
import json

from arq.connections import ArqRedis

from .errors import IdempotencyConflictError
from .jobs import JobPayload, JobRequest, new_job_id
from .model_list import ModelList
from .store import JobStore

RUN_JOB = "run_job"  # the arq function name the workers register


async def submit(
    store: JobStore,
    pool: ArqRedis,
    models: ModelList,
    request: JobRequest,
    idempotency_key: str | None = None,
) -> tuple[str, bool]:
    """Queue ``request``; returns (job id, created). Raises UnknownModelError for a bad model.

    With an ``idempotency_key``, the same key and body return the job already made
    (``created`` False); the same key with another body raises IdempotencyConflictError.
    """
    models.check(request.model)
    job_id = new_job_id()
    if idempotency_key is not None:
        body = request.model_dump_json(exclude_none=True).encode()
        fingerprint = hashlib.sha256(body).hexdigest()
        key = store.keys.idempotency(idempotency_key)
        claimed = await pool.set(
            key,
            json.dumps({"job_id": job_id, "fingerprint": fingerprint}),
            nx=True,
            ex=store.settings.retention_seconds,
        )
        if not claimed:
            raw = await pool.get(key)
            if raw is not None:
                existing = json.loads(raw)
                if existing["fingerprint"] != fingerprint:
                    raise IdempotencyConflictError(idempotency_key, existing["job_id"])
                return str(existing["job_id"]), False
    # the stream exists (with job.queued) before any worker can see the job
    await store.create(job_id, request)
    payload = JobPayload(job_id=job_id, request=request)
    await pool.enqueue_job(
        RUN_JOB,
        payload.model_dump(mode="json", exclude_none=True),
        _job_id=job_id,
        _queue_name=store.settings.queue_name,
    )
    await pool.publish(store.keys.wake_channel, job_id)  # idle workers pick it up at once
    return job_id, True
