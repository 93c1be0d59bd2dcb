"""FastAPI application: routes only; every decision is made in ``tokenspool``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sse_starlette import EventSourceResponse, ServerSentEvent

from tokenspool import queue
from tokenspool.connections import close, connect
from tokenspool.errors import (
    IdempotencyConflictError,
    InvalidEventIdError,
    JobNotFoundError,
    JobStateError,
    StreamGoneError,
    UnknownModelError,
)
from tokenspool.jobs import JobAccepted, JobRequest, JobStatus, JobView
from tokenspool.model_list import ModelList
from tokenspool.settings import Settings
from tokenspool.store import JobStore, events_url
from tokenspool.tailer import check_retained, parse_event_id, tail

from .limits import BodySizeLimit


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _invalid(field: str, message: str) -> JSONResponse:
    return _error(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    models = ModelList.load(settings.models_file)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = connect(settings)
        app.state.pool = pool
        app.state.store = JobStore(pool, settings)
        try:
            yield
        finally:
            await close(pool)

    app = FastAPI(
        title="tokenspool",
        version="0.1.0",
        description="Durable, resumable LLM output streams over a job queue.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(JobNotFoundError)
    async def _not_found(request: Request, exc: JobNotFoundError) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(UnknownModelError)
    async def _unknown_model(request: Request, exc: UnknownModelError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(InvalidEventIdError)
    async def _bad_id(request: Request, exc: InvalidEventIdError) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(JobStateError)
    async def _conflict(request: Request, exc: JobStateError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "status": exc.status}, status_code=409)

    @app.exception_handler(IdempotencyConflictError)
    async def _idem_conflict(request: Request, exc: IdempotencyConflictError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "job_id": exc.job_id}, status_code=409)

    @app.exception_handler(StreamGoneError)
    async def _gone(request: Request, exc: StreamGoneError) -> JSONResponse:
        return _error(410, str(exc))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, f"Redis unavailable: {exc}")

    def store(request: Request) -> JobStore:
        s: JobStore = request.app.state.store
        return s

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        responses={200: {"description": "an earlier job with the same Idempotency-Key and body"}},
    )
    async def create_job(
        body: JobRequest,
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
        ] = None,
    ) -> Any:
        """Queue a chat completion; answers at once with the job id and its events URL."""
        if len(body.messages) > settings.max_messages:
            return _invalid("messages", f"at most {settings.max_messages} messages")
        if body.max_tokens is not None and body.max_tokens > settings.max_tokens_ceiling:
            return _invalid("max_tokens", f"at most {settings.max_tokens_ceiling}")
        s = store(request)
        job_id, created = await queue.submit(
            s, request.app.state.pool, models, body, idempotency_key
        )
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        status = JobStatus.queued
        if not created:
            response.status_code = 200
            try:
                status = (await s.view(job_id)).status
            except JobNotFoundError:
                status = JobStatus.queued  # the first request is still writing it
        return JobAccepted(id=job_id, status=status, events_url=events_url(job_id))

    @app.get("/v1/jobs", response_model=list[JobView])
    async def list_jobs(
        request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 20
    ) -> list[JobView]:
        """The most recent jobs, newest first."""
        s = store(request)
        views = []
        for job_id in await s.recent(limit):
            try:
                views.append(await s.view(job_id))
            except JobNotFoundError:
                continue  # expired since it was listed
        return views

    @app.get("/v1/jobs/{job_id}", response_model=JobView)
    async def get_job(job_id: str, request: Request) -> JobView:
        """Status, timestamps, attempt and the accumulated output of a job."""
        return await store(request).view(job_id)

    @app.post("/v1/jobs/{job_id}/cancel", status_code=202)
    async def cancel_job(job_id: str, request: Request) -> dict[str, str]:
        """Cancel a job: a queued one at once, a running one by its worker (job.cancelled)."""
        status = await store(request).cancel(job_id)
        return {"id": job_id, "status": status}

    @app.get(
        "/v1/jobs/{job_id}/events",
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str,
        request: Request,
        after: Annotated[str | None, Query(description="resume after this event id")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> EventSourceResponse:
        """The job's events as SSE; resume with ``Last-Event-ID`` or ``?after=``."""
        start = parse_event_id(last_event_id if last_event_id else after)
        s = store(request)
        if not await s.exists(job_id):
            raise JobNotFoundError(job_id)
        await check_retained(s.redis, s.keys.events(job_id), start)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            async for event in tail(
                s.redis,
                job_id,
                start,
                keys=s.keys,
                count=settings.read_count,
                block_ms=settings.read_block_ms,
            ):
                yield ServerSentEvent(
                    id=event.event_id,
                    event=event.type,
                    data=event.model_dump_json(),
                )

        return EventSourceResponse(
            stream(),
            ping=settings.heartbeat_seconds,
            send_timeout=settings.send_timeout_seconds,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """The configured model names, in OpenAI's list format."""
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "tokenspool"}
                for name in models.names
            ],
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.pool.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            return _error(503, f"Redis unreachable: {exc}")
        return JSONResponse({"status": "ready"})

    return app
