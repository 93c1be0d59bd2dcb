"""Submitting jobs: write the record and its first event, then enqueue it for the workers."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

from .connections import held, multi_exec, round_trip, transaction
from .errors import IdempotencyConflictError, JobStateError
from .jobs import JobPayload, JobRequest, new_job_id
from .model_list import ModelList
from .store import JobStore

RUN_JOB = "run_job"  # the arq function name the workers register
CLAIM_ATTEMPTS = 3  # transactions an idempotent submission tries before it answers 409

# arq's enqueue_job (which checks the keys under WATCH, then PSETEX and ZADD in MULTI/EXEC) as
# one script, plus the workers' wake-up. KEYS: arq's job key, result key, queue; ARGV: job id,
# score (ms), expiry (ms), serialized job, wake channel. Returns 1, or 0 if the id is taken.
ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
redis.call('PUBLISH', ARGV[5], ARGV[1])
return 1
"""


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
    if idempotency_key is not None:
        return await _submit_once(store, pool, request, idempotency_key)
    job_id = new_job_id()
    # one transaction: the job's record and job.queued, then arq's job, then the wake-up (idle
    # workers pick it up at once); no worker can see the job before its stream exists
    result = await multi_exec(store.redis, _job_commands(store, pool, job_id, request))
    _check_enqueued(job_id, result)
    return job_id, True


async def _submit_once(
    store: JobStore, pool: ArqRedis, request: JobRequest, idempotency_key: str
) -> tuple[str, bool]:
    """``submit`` under an idempotency key: the key is written in the same transaction as the
    job it names (optimistic, under WATCH), so a key never names a job still being written, or
    one whose writing failed. Two requests racing with one key: the loser's transaction aborts
    and it answers with the winner's job."""
    body = request.model_dump_json(exclude_none=True).encode()
    fingerprint = hashlib.sha256(body).hexdigest()
    key = store.keys.idempotency(idempotency_key)
    existing_id = ""
    for _ in range(CLAIM_ATTEMPTS):
        async with held(store.redis) as conn:
            try:
                _, raw = await round_trip(conn, [("WATCH", key), ("GET", key)])
                if raw is not None:
                    existing = json.loads(raw)
                    existing_id = str(existing["job_id"])
                    if existing["fingerprint"] != fingerprint:
                        raise IdempotencyConflictError(idempotency_key, existing_id)
                    (exists,) = await round_trip(conn, [("EXISTS", store.keys.job(existing_id))])
                    if exists:
                        await round_trip(conn, [("UNWATCH",)])
                        return existing_id, False
                    # the job it named has expired: the key is taken again, for a new job
                job_id = new_job_id()
                claim = json.dumps({"job_id": job_id, "fingerprint": fingerprint})
                result = await transaction(
                    conn,
                    [
                        ("SET", key, claim, "EX", store.settings.retention_seconds),
                        *_job_commands(store, pool, job_id, request),
                    ],
                )
            except BaseException:
                # no WATCH may outlive this request on a pooled connection
                await conn.disconnect(nowait=True)
                raise
        if result is None:
            continue  # another request with this key wrote it first: answer with its job
        _check_enqueued(job_id, result)
        return job_id, True
    # the key changed under every attempt: requests with it keep racing
    raise IdempotencyConflictError(
        idempotency_key,
        existing_id,
        f"Idempotency-Key {idempotency_key!r} changed under {CLAIM_ATTEMPTS} attempts to use it;"
        " send the request again",
    )


def _job_commands(
    store: JobStore, pool: ArqRedis, job_id: str, request: JobRequest
) -> list[tuple[Any, ...]]:
    """The job's record and ``job.queued``, then arq's job and the wake-up."""
    payload = JobPayload(job_id=job_id, request=request)
    return [*store.create_commands(job_id, request), enqueue_command(pool, store, job_id, payload)]


def _check_enqueued(job_id: str, replies: list[Any]) -> None:
    if replies[-1] != 1:  # the id is new, so arq's keys cannot exist yet
        raise JobStateError(job_id, "queued in arq", "enqueue")


def enqueue_command(
    pool: ArqRedis, store: JobStore, job_id: str, payload: JobPayload
) -> tuple[Any, ...]:
    """What arq's ``enqueue_job(RUN_JOB, payload, _job_id=job_id)`` stores, and the wake-up,
    as one script call: the job serialized by arq, under arq's keys, with arq's expiry.

    arq's enqueue_job takes three round trips of its own (WATCH, EXISTS, then MULTI/EXEC); as a
    script it joins the job's other writes in one transaction."""
    now = timestamp_ms()
    job = serialize_job(
        RUN_JOB,
        (payload.model_dump(mode="json", exclude_none=True),),
        {},
        None,
        now,
        serializer=pool.job_serializer,
    )
    return (
        "EVAL",
        ENQUEUE,
        3,
        job_key_prefix + job_id,
        result_key_prefix + job_id,
        store.settings.queue_name,
        job_id,
        str(now),  # the score: due at once
        str(pool.expires_extra_ms),  # arq's expiry of a job due at once
        job,
        store.keys.wake_channel,
    )
