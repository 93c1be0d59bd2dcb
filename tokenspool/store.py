"""Job records in Redis: submit, read, start, cancel. Every transition is one atomic script."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from . import keys as k
from . import scripts
from .accumulator import Accumulator
from .connections import multi_exec, pipelined
from .errors import FencedError, JobNotFoundError, JobStateError
from .events import ErrorInfo, JobQueued, UsageInfo, as_text, from_entry
from .jobs import JobRequest, JobStatus, JobView, Output
from .settings import Settings


def events_url(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/events"


@dataclass(frozen=True)
class StartResult:
    """Outcome of claiming a job for an attempt."""

    status: str  # "started", or the status that prevented the start
    attempt: int = 0
    created_at: float = 0.0


class JobStore:
    """The job hash and the event stream of every job, behind one small API."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.keys = k.Keys(settings.key_prefix)
        self._start = redis.register_script(scripts.START)
        self._write = redis.register_script(scripts.WRITE)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._lease = redis.register_script(scripts.LEASE)

    @property
    def active_ttl(self) -> int:
        """How long the keys of an unfinished job live (refreshed at each start)."""
        return int(self.settings.retention_seconds + 2 * self.settings.job_timeout_seconds)

    async def create(self, job_id: str, request: JobRequest) -> str:
        """Write the job hash and its ``job.queued`` event; returns that event's id."""
        result = await multi_exec(self.redis, self.create_commands(job_id, request))
        return as_text(result[1])

    def create_commands(self, job_id: str, request: JobRequest) -> list[tuple[Any, ...]]:
        """What ``create`` writes, as raw commands for one transaction (six; the second one's
        reply is the ``job.queued`` event's id)."""
        now = time.time()
        job_key, events_key = self.keys.job(job_id), self.keys.events(job_id)
        queued = JobQueued(job_id=job_id, attempt=0, model=request.model).to_fields()
        ttl = self.active_ttl
        return [
            (
                "HSET",
                job_key,
                k.F_STATUS,
                JobStatus.queued.value,
                k.F_MODEL,
                request.model,
                k.F_REQUEST,
                request.model_dump_json(exclude_none=True),
                k.F_ATTEMPT,
                0,
                k.F_CREATED,
                repr(now),
                k.F_ORDINAL,
                1,
            ),
            (
                "XADD",
                events_key,
                "MAXLEN",
                "~",
                self.settings.stream_maxlen,
                "*",
                k.E_ORDINAL,
                1,
                *(v for pair in queued.items() for v in pair),
            ),
            ("EXPIRE", job_key, ttl),
            ("EXPIRE", events_key, ttl),
            ("ZADD", self.keys.jobs_index, repr(now), job_id),
            ("ZREMRANGEBYRANK", self.keys.jobs_index, 0, -10_001),  # keep the newest 10,000
        ]

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_seconds * 1000)

    async def start(
        self, job_id: str, worker: str, reason: str = "worker lost", owner_attempt: int = 0
    ) -> StartResult:
        """Claim the job for a new attempt (``job.started``), unless it ended, was cancelled, or
        another live attempt holds its lease. ``owner_attempt`` lets the current attempt's own
        worker start the next one (a retry) without waiting for its lease to expire."""
        now = time.time()
        args = [
            worker,
            repr(now),
            str(self.settings.stream_maxlen),
            str(self.active_ttl),
            reason,
            str(self.lease_ms),
            str(owner_attempt) if owner_attempt else "",
        ]

        # One round trip: the job joins the running set (the reaper's index of lease deadlines)
        # with the START script, not after it. GT: a deadline only moves later, so a job another
        # attempt holds keeps its place; one that did not start (ended, missing) is taken out
        # again by the caller (``forget_running``), as before.
        deadline = repr(now * 1000 + self.lease_ms)
        job_key, events_key = self.keys.job(job_id), self.keys.events(job_id)
        _, res = await self._pipelined_scripts(
            [
                ("ZADD", self.keys.running, "GT", deadline, job_id),
                ("EVALSHA", self._start.sha, 2, job_key, events_key, *args),
            ],
            scripts.START,
        )
        if isinstance(res, Exception):
            raise res
        status = as_text(res[0])
        attempt = int(res[1]) if len(res) > 1 else 0
        created = float(as_text(res[2])) if len(res) > 2 else 0.0
        return StartResult(status=status, attempt=attempt, created_at=created)

    async def renew(self, leases: dict[str, int]) -> dict[str, bool]:
        """Renew the leases of ``{job_id: attempt}`` in one round trip; False = lost to another
        attempt. An attempt that ended the job meanwhile is not lost (its runner is finishing),
        and is not put back among the running jobs."""
        if not leases:
            return {}
        deadline = repr(time.time() * 1000 + self.lease_ms)
        lease = str(self.lease_ms)
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", self._lease.sha, 1, self.keys.job(job_id), str(attempt), lease)
            for job_id, attempt in leases.items()
        ]
        # XX: a job that ended and left the running set meanwhile stays out of it
        commands.append(
            ("ZADD", self.keys.running, "XX", *(v for j in leases for v in (deadline, j)))
        )
        results = await self._pipelined_scripts(commands, scripts.LEASE)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return {job_id: r != 0 for job_id, r in zip(leases, results, strict=False)}

    async def _pipelined_scripts(self, commands: list[tuple[Any, ...]], script: str) -> list[Any]:
        """The raw replies of ``commands`` sent as one non-transactional pipeline, their
        EVALSHAs of ``script`` sent as such (a Script object in a pipeline costs a SCRIPT EXISTS
        round trip per execute and a few µs per call). Packed and read without redis-py's
        pipeline (``connections.pipelined``): lease renewal sends one call per held lease every
        second. Errors are returned, not raised; if Redis lost its script cache, the script is
        loaded and the pipeline sent once more."""
        for _ in range(2):
            results = await pipelined(self.redis, commands)
            if not any(isinstance(r, NoScriptError) for r in results):
                break
            await self.redis.script_load(script)
        return results

    async def release(self, job_id: str, attempt: int) -> None:
        """Give up a running attempt's lease so another worker takes the job over at once."""
        await self._lease(keys=[self.keys.job(job_id)], args=[attempt, 0])
        await self.redis.zadd(self.keys.running, {job_id: 0})

    async def expired(self, limit: int) -> list[str]:
        """Running job ids whose lease deadline has passed (candidates for take-over)."""
        ids = await self.redis.zrangebyscore(
            self.keys.running, "-inf", time.time() * 1000, start=0, num=limit
        )
        return [as_text(i) for i in ids]

    async def forget_running(self, job_id: str) -> None:
        await self.redis.zrem(self.keys.running, job_id)

    @property
    def write_sha(self) -> str:
        """SHA1 of the fenced WRITE script (for EVALSHA in a pipeline)."""
        return str(self._write.sha)

    def write_call(
        self,
        job_id: str,
        attempt: int,
        events: list[tuple[str, str]],
        seq: int,
        final_status: str = "",
        final_fields: dict[str, str] | None = None,
    ) -> tuple[list[str], list[Any]]:
        """Keys and args of the fenced WRITE script for these (type, data-json) pairs."""
        args: list[Any] = [
            attempt,
            self.settings.stream_maxlen,
            len(events),
            final_status,
            repr(time.time()) if final_status else "",  # finished_at, for the final write
            self.settings.retention_seconds,
            seq,
        ]
        for type_, data in events:
            args += [type_, data]
        for field, value in (final_fields or {}).items():
            args += [field, value]
        return [self.keys.job(job_id), self.keys.events(job_id)], args

    async def write(
        self,
        job_id: str,
        attempt: int,
        events: list[tuple[str, str]],
        seq: int,
        final_status: str = "",
        final_fields: dict[str, str] | None = None,
    ) -> str:
        """Fenced append of (type, data-json) pairs; with ``final_status``, end the job.
        (The worker sends the same call pipelined through :class:`tokenspool.writer.Writer`.)"""
        keys, args = self.write_call(job_id, attempt, events, seq, final_status, final_fields)
        try:
            res = await self._write(keys=keys, args=args)
        except ResponseError as exc:
            fenced = fence_error(job_id, exc)
            if fenced is None:
                raise
            raise fenced from exc
        return as_text(res)

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> str:
        """Record a cancel request; returns ``cancelled`` or ``cancelling``."""
        res = await self._cancel(
            keys=[self.keys.job(job_id), self.keys.events(job_id)],
            args=[
                repr(time.time()),
                self.settings.retention_seconds,
                self.settings.stream_maxlen,
                reason,
                self.keys.cancel_channel,
                job_id,
            ],
        )
        status = as_text(res[0])
        if status == "missing":
            raise JobNotFoundError(job_id)
        if status not in ("cancelled", "cancelling"):
            raise JobStateError(job_id, status, "cancel")
        return status

    async def cancel_requested(self, job_id: str) -> bool:
        flag = await self.redis.hget(self.keys.job(job_id), k.F_CANCEL)  # type: ignore[misc]
        return as_text(flag or "") == "1"

    async def cancels_requested(self, job_ids: list[str]) -> list[bool]:
        """``cancel_requested`` of each job, in one round trip (every second for every job
        of the worker: packed and read without redis-py's pipeline, ``connections.pipelined``)."""
        if not job_ids:
            return []
        flags = await pipelined(
            self.redis, [("HGET", self.keys.job(job_id), k.F_CANCEL) for job_id in job_ids]
        )
        for flag in flags:
            if isinstance(flag, Exception):
                raise flag
        return [as_text(flag or "") == "1" for flag in flags]

    async def request(self, job_id: str) -> JobRequest:
        raw = await self.redis.hget(self.keys.job(job_id), k.F_REQUEST)  # type: ignore[misc]
        if raw is None:
            raise JobNotFoundError(job_id)
        return JobRequest.model_validate_json(raw)

    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(self.keys.job(job_id), self.keys.events(job_id)))

    async def view(self, job_id: str) -> JobView:
        """The job's status and output; for an unfinished job, folded from its stream so far."""
        raw = await self.redis.hgetall(self.keys.job(job_id))  # type: ignore[misc]
        if not raw:
            raise JobNotFoundError(job_id)
        h = {as_text(a): as_text(b) for a, b in raw.items()}
        status = JobStatus(h[k.F_STATUS])
        output: Output
        usage: UsageInfo | None = None
        if k.F_OUTPUT in h:
            output = Output.model_validate_json(h[k.F_OUTPUT])
            usage = UsageInfo.model_validate_json(h[k.F_USAGE]) if h.get(k.F_USAGE) else None
        else:
            acc = await self.fold(job_id)
            output, usage = acc.output(), acc.usage
        error = ErrorInfo.model_validate_json(h[k.F_ERROR]) if h.get(k.F_ERROR) else None
        return JobView(
            id=job_id,
            status=status,
            model=h.get(k.F_MODEL, ""),
            attempt=int(h.get(k.F_ATTEMPT, "0")),
            worker=h.get(k.F_WORKER),
            created_at=float(h.get(k.F_CREATED, "0")),
            started_at=float(h[k.F_STARTED]) if k.F_STARTED in h else None,
            finished_at=float(h[k.F_FINISHED]) if k.F_FINISHED in h else None,
            output=output,
            usage=usage,
            error=error,
            events_url=events_url(job_id),
        )

    async def fold(self, job_id: str) -> Accumulator:
        """Fold the stream so far into an accumulator, one bounded XRANGE page at a time."""
        acc = Accumulator()
        start = "-"
        page = self.settings.read_count
        while True:
            entries = await self.redis.xrange(self.keys.events(job_id), start, "+", count=page)
            for entry_id, fields in entries:
                acc.add(from_entry(job_id, entry_id, fields))
            if len(entries) < page:
                return acc
            start = "(" + as_text(entries[-1][0])

    async def recent(self, limit: int = 20) -> list[str]:
        ids = await self.redis.zrevrange(self.keys.jobs_index, 0, limit - 1)
        return [as_text(i) for i in ids]


def fence_error(job_id: str, exc: ResponseError) -> FencedError | None:
    """The FencedError for a WRITE script's error reply, or None when it is another error."""
    if str(exc).startswith("FENCED"):
        return FencedError(f"job {job_id}: {exc}")
    return None


def dumps(model: Any) -> str:
    return json.dumps(model, separators=(",", ":"))
