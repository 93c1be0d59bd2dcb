"""FastAPI application: routes only; every decision is made in ``tokenspool``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.types import Receive, Scope, Send

from tokenspool import queue
from tokenspool.connections import close, connect, connect_reader
from tokenspool.errors import (
    REDIS_UNREACHABLE,
    IdempotencyConflictError,
    InvalidEventIdError,
    JobNotFoundError,
    JobStateError,
    StreamGoneError,
    UnknownModelError,
)
from tokenspool.gcpolicy import freeze_startup_objects, full_collections
from tokenspool.hub import Hub
from tokenspool.jobs import JOB_ID_HEADER, JobAccepted, JobRequest, JobStatus, JobView
from tokenspool.metrics import CONTENT_TYPE, ApiMetrics
from tokenspool.model_list import ModelList
from tokenspool.settings import Settings
from tokenspool.store import JobStore, events_url
from tokenspool.tailer import parse_event_id
from tokenspool.tasks import stop_task
from tokenspool.waits import Entry

from .instrumentation import ErrorCounter
from .limits import BodySizeLimit, request_limit_problem
from .openai_routes import OpenAIRoutes
from .streams import (
    SERVER_SEND,
    EventStream,
    hub_of,
    open_stream,
    sse_frames,
    tracked,
    wants_event_stream,
)
from .ui_routes import ui_router
from .websocket_routes import websocket_router


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _invalid(field: str, message: str) -> JSONResponse:
    return _error(422, [{"loc": ["body", field], "msg": message, "type": "value_error"}])


class App(FastAPI):
    """FastAPI, keeping the server's own ``send`` in the scope: an event stream sends its body
    straight to it (``api.streams.EventStream``). So no middleware may change a response
    body; the ones here only look at the response start."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[SERVER_SEND] = send
        try:
            await super().__call__(scope, receive, send)
        finally:
            # the send is bound to the server's request object, which holds the scope: a
            # cycle that would outlive the request
            del scope[SERVER_SEND]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    models = ModelList.load(settings.models_file)
    metrics = ApiMetrics()
    openai = OpenAIRoutes(settings, models, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = connect(settings)
        app.state.pool = pool
        app.state.store = JobStore(pool, settings)
        reader = connect_reader(settings)
        hub = Hub(
            pool,
            reader,
            keys=app.state.store.keys,
            count=settings.read_count,
            block_ms=settings.read_block_ms,
        )
        app.state.hub = hub
        metrics.track_hub(hub.stats)
        await hub.start()
        # the app's imports are frozen out of the collector, full passes run on a timer
        # (tokenspool/gcpolicy.py): with thousands of open streams a full pass pauses them all
        freeze_startup_objects()
        collector = asyncio.create_task(full_collections(settings.gc_full_seconds))
        try:
            yield
        finally:
            await stop_task(collector)
            try:
                await hub.stop()
            finally:
                await reader.aclose()
                await close(pool)

    app = App(
        title="tokenspool",
        version="0.1.0",
        description="Durable, resumable LLM output streams over a job queue.",
        lifespan=lifespan,
    )
    app.include_router(ui_router)
    app.state.metrics = metrics
    # none may change a response body: event streams bypass them after the start (App)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ErrorCounter, metrics=metrics)  # outermost: it sees the 413s too
    app.include_router(openai.router)
    app.include_router(websocket_router(settings, metrics))

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
        responses={
            200: {
                "description": "an earlier job with the same Idempotency-Key and body; or, with "
                "`Accept: text/event-stream`, the job's events from its start",
                "content": {"text/event-stream": {}},
            }
        },
    )
    async def create_job(
        body: JobRequest,
        request: Request,
        response: Response,
        idempotency_key: Annotated[
            str | None, Header(min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$")
        ] = None,
    ) -> Any:
        """Queue a chat completion; answers at once with the job id and its events URL.

        With ``Accept: text/event-stream`` the answer is instead the job's event stream from
        its start (as ``GET /v1/jobs/{id}/events``), in the same request: one round trip to
        the first token. The job id is in the ``X-Tokenspool-Job-Id`` and ``Location``
        headers, and a dropped stream resumes with ``GET`` and ``Last-Event-ID``."""
        problem = request_limit_problem(body, settings)
        if problem is not None:
            return _invalid(*problem)
        s = store(request)
        job_id, created = await queue.submit(
            s, request.app.state.pool, models, body, idempotency_key
        )
        if created:
            metrics.jobs_submitted.labels(body.model, "jobs").inc()
        if wants_event_stream(request.headers.get("accept")):
            return await event_stream(
                request, job_id, "0", {"Location": f"/v1/jobs/{job_id}", JOB_ID_HEADER: job_id}
            )
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        status = JobStatus.queued
        if not created:
            response.status_code = 200
            # the key is written with its job (queue.submit), so the job exists unless it
            # expired since: then 404
            status = (await s.view(job_id)).status
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
        response_class=EventStream,
        status_code=200,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def job_events(
        job_id: str,
        request: Request,
        after: Annotated[str | None, Query(description="resume after this event id")] = None,
        last_event_id: Annotated[str | None, Header()] = None,
        format_: Annotated[
            Literal["events", "openai"],
            Query(alias="format", description="openai: as chat.completion.chunk messages"),
        ] = "events",
        include_usage: Annotated[
            bool, Query(description="format=openai: end with the usage chunk")
        ] = False,
    ) -> Response:
        """The job's events as SSE; resume with ``Last-Event-ID`` or ``?after=``."""
        if format_ == "openai":
            offset_param = "Last-Event-ID" if last_event_id else "after"
            return await openai.events(
                request, job_id, last_event_id or after, offset_param, include_usage
            )
        start = parse_event_id(last_event_id if last_event_id else after)
        return await event_stream(request, job_id, start)

    async def event_stream(
        request: Request, job_id: str, start: str, headers: dict[str, str] | None = None
    ) -> EventStream:
        """The job's events after ``start`` as SSE (404, 410 or 503 before it starts)."""
        s = store(request)
        head = await open_stream(s, job_id, start)  # 404, 410, or where the stream ends now

        hub = hub_of(request)

        job_json = json.dumps(job_id).encode()

        def push(batch: list[Entry]) -> bool:
            """Relay a batch handed over while the stream's task waits, if the connection
            takes it at once (``Hub.tail``). A declined batch goes through the stream's task,
            which builds its frames itself: they are built here only once it will take them."""
            if not response.can_send_now() or not response.send_now(
                sse_frames(job_id, batch, job_json)
            ):
                return False
            metrics.relayed_batch("sse", [entry_id for entry_id, _ in batch], head.last)
            return True

        async def stream() -> AsyncIterator[bytes]:
            if head.ended_by(start):
                return  # resumed at or after the terminal event: nothing is left
            with tracked(metrics, "sse", start):
                batches = hub.tail(job_id, start, push=push)
                async with aclosing(batches):
                    async for batch in batches:
                        # one write per batch, straight from the entries (no pydantic)
                        yield sse_frames(job_id, batch, job_json)
                        metrics.relayed_batch("sse", [entry_id for entry_id, _ in batch], head.last)

        response = EventStream(
            stream(),
            ping=settings.heartbeat_seconds,
            send_timeout=settings.send_timeout_seconds,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        return response

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

    @app.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus metrics of this API process."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await request.app.state.pool.ping()
        except REDIS_UNREACHABLE as exc:
            return _error(503, f"Redis unreachable: {exc}")
        return JSONResponse({"status": "ready"})

    return app
