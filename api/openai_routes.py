"""OpenAI-compatible routes: ``POST /v1/chat/completions`` and the OpenAI-format event stream
(``GET /v1/jobs/{id}/events?format=openai``). The mapping itself is ``tokenspool.openai_format``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from tokenspool import queue
from tokenspool.errors import (
    IdempotencyConflictError,
    InvalidEventIdError,
    JobNotFoundError,
    StreamGoneError,
    UnknownModelError,
)
from tokenspool.events import as_text, from_entry
from tokenspool.jobs import JOB_ID_HEADER, JobStatus
from tokenspool.keys import F_CREATED, F_MODEL
from tokenspool.metrics import ApiMetrics
from tokenspool.model_list import ModelList
from tokenspool.openai_format import (
    ChatCompletionRequest,
    ChunkFormatter,
    Frame,
    completion,
    error_body,
    validation_error_body,
)
from tokenspool.settings import Settings
from tokenspool.store import JobStore
from tokenspool.tailer import check_retained, parse_event_id
from tokenspool.waits import Entry

from .limits import request_limit_problem
from .streams import EventStream, StreamHead, hub_of, stream_head, tracked

IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
TRANSPORT = "sse_openai"
RETRYING = b"job.retrying"  # its entry type


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(message, type_, param=param, code=code), status_code=status, headers=headers
    )


def _format(
    formatter: ChunkFormatter,
    job_id: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    out: list[bytes],
) -> None:
    """Append the OpenAI-format bytes of one stream entry to ``out``: a text delta straight
    from the entry (``ChunkFormatter.text_frame``), anything else through its event."""
    frame = formatter.text_frame(entry_id, fields)
    if frame is not None:
        out.append(frame)
    else:
        out.extend(f.encode() for f in formatter.feed(from_entry(job_id, entry_id, fields)))


class _CommentLine(ServerSentEvent):
    """A heartbeat as one comment line (see ``Frame.encode`` for why no blank line follows)."""

    def encode(self) -> bytes:
        return Frame(comment=str(self.comment)).encode()


def _heartbeat() -> ServerSentEvent:
    return _CommentLine(comment=f"ping - {datetime.now(UTC)}")


class OpenAIRoutes:
    """The OpenAI surface: ``router`` holds ``POST /v1/chat/completions``; ``events`` serves the
    OpenAI format of ``GET /v1/jobs/{id}/events``."""

    def __init__(self, settings: Settings, models: ModelList, metrics: ApiMetrics) -> None:
        self.settings = settings
        self.models = models
        self.metrics = metrics
        self.router = APIRouter(tags=["openai"])
        self.router.add_api_route(
            "/v1/chat/completions",
            self.chat_completions,
            methods=["POST"],
            response_model=None,
            summary="Create a chat completion (OpenAI-compatible)",
            responses={
                200: {"content": {"application/json": {}, "text/event-stream": {}}},
                400: {"description": "invalid body, in OpenAI's error shape"},
                404: {"description": "unknown model (code model_not_found)"},
            },
        )

    async def chat_completions(self, request: Request) -> Response:
        """Queue the completion as a job, then stream it as ``chat.completion.chunk`` SSE
        (``stream: true``) or wait for it and answer a ``chat.completion``. The job id is in
        the ``X-Tokenspool-Job-Id`` header."""
        try:
            raw = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "request body is not valid JSON", code="invalid_json")
        if not isinstance(raw, dict):
            return _error(400, "request body must be a JSON object", code="invalid_json")
        try:
            body = ChatCompletionRequest.model_validate(raw)
        except ValidationError as exc:
            return JSONResponse(validation_error_body(exc), status_code=400)
        problem = request_limit_problem(body, self.settings)
        if problem is not None:
            param, message = problem
            return _error(400, f"{param}: {message}", param=param, code="invalid_value")
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY_RE.match(key):
            return _error(
                400,
                "Idempotency-Key must be 1-255 printable ASCII characters without spaces",
                param="Idempotency-Key",
                code="invalid_value",
            )
        if body.model not in self.models:
            message = str(UnknownModelError(body.model, self.models.names))
            return _error(404, message, param="model", code="model_not_found")
        store: JobStore = request.app.state.store
        try:
            job_id, created = await queue.submit(
                store, request.app.state.pool, self.models, body.job_request(), key
            )
        except IdempotencyConflictError as exc:
            return _error(409, str(exc), param="Idempotency-Key", code="idempotency_key_reused")
        if created:
            self.metrics.jobs_submitted.labels(body.model, "chat_completions").inc()
        headers = {JOB_ID_HEADER: job_id}
        created_at = await self._created_at(store, job_id)
        if body.stream:
            formatter = ChunkFormatter(job_id, body.model, created_at, body.include_usage)
            return self._stream(request, job_id, "0", formatter, headers)
        return await self._wait(request, job_id, created_at, headers)

    async def events(
        self,
        request: Request,
        job_id: str,
        offset: str | None,
        offset_param: str,
        include_usage: bool,
    ) -> Response:
        """The job's OpenAI-format stream after ``offset`` (an event id it sent)."""
        try:
            start = parse_event_id(offset)
        except InvalidEventIdError as exc:
            return _error(400, str(exc), param=offset_param, code="invalid_value")
        store: JobStore = request.app.state.store
        fields = store.redis.hmget(store.keys.job(job_id), [F_MODEL, F_CREATED])
        model, created = await cast(Awaitable[list[Any]], fields)
        if model is None:
            return _error(404, str(JobNotFoundError(job_id)), code="job_not_found")
        try:
            await check_retained(store.redis, store.keys.events(job_id), start)
        except StreamGoneError as exc:
            return _error(410, str(exc), code="events_trimmed")
        formatter = ChunkFormatter(
            job_id, as_text(model), int(float(as_text(created or 0))), include_usage
        )
        if start != "0":
            await self._replay(store, job_id, start, formatter)
            formatter.role_sent = True  # the client has the first chunk, or its head was trimmed
        return self._stream(request, job_id, start, formatter, {JOB_ID_HEADER: job_id})

    async def _replay(
        self, store: JobStore, job_id: str, through: str, formatter: ChunkFormatter
    ) -> None:
        """Feed the events up to ``through`` (the frames the client already has) to rebuild the
        formatter's state, one bounded XRANGE page at a time."""
        low, page = "-", self.settings.read_count
        while not formatter.done:
            entries = await store.redis.xrange(store.keys.events(job_id), low, through, count=page)
            for entry_id, fields in entries:
                formatter.feed(from_entry(job_id, entry_id, fields))
            if len(entries) < page:
                return
            low = "(" + as_text(entries[-1][0])

    def _stream(
        self,
        request: Request,
        job_id: str,
        start: str,
        formatter: ChunkFormatter,
        headers: dict[str, str],
    ) -> EventStream:
        store: JobStore = request.app.state.store
        hub = hub_of(request)
        head = StreamHead((0, 0), terminal=False)  # read when the stream starts

        def push(batch: list[Entry]) -> bool:
            """Relay a batch handed over while the stream's task waits, if the connection
            takes it at once (``Hub.tail``). The formatter is fed only then: its state must
            follow what the client got. A retry can end the stream: that goes through the
            task (the hub pushes no terminal event either)."""
            if any(f.get(b"t") == RETRYING for _, f in batch) or not response.can_send_now():
                return False
            out: list[bytes] = []
            for entry_id, fields in batch:
                _format(formatter, job_id, entry_id, fields, out)
            if out and not response.send_now(b"".join(out)):
                # can_send_now said it would: the formatter moved on, the client has not
                raise RuntimeError("an event stream refused a send it said it could take")
            self.metrics.relayed_batch(TRANSPORT, [entry_id for entry_id, _ in batch], head.last)
            return True

        async def frames() -> AsyncIterator[bytes]:
            nonlocal head
            head = await stream_head(store, job_id)
            with tracked(self.metrics, TRANSPORT, start):
                if formatter.done:
                    return  # the client already had the end
                batches = hub.tail(job_id, start, push=push)
                try:
                    async with aclosing(batches):
                        async for batch in batches:
                            out: list[bytes] = []
                            fed = 0
                            for entry_id, fields in batch:
                                _format(formatter, job_id, entry_id, fields, out)
                                fed += 1
                                if formatter.done:
                                    break
                            if out:
                                yield b"".join(out)  # one write per batch
                            ids = [entry_id for entry_id, _ in batch[:fed]]
                            self.metrics.relayed_batch(TRANSPORT, ids, head.last)
                            if formatter.done:
                                return
                except StreamGoneError as exc:  # fell behind the stream cap: say so, then end
                    gone = error_body(str(exc), "tokenspool_stream_gone", code="events_trimmed")
                    yield Frame(data=json.dumps(gone)).encode()

        response = EventStream(
            frames(),
            ping=self.settings.heartbeat_seconds,
            ping_message_factory=_heartbeat,
            send_timeout=self.settings.send_timeout_seconds,
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        return response

    async def _wait(
        self, request: Request, job_id: str, created_at: int, headers: dict[str, str]
    ) -> Response:
        """Follow the job to its terminal event (bounded by the job timeout), then answer."""
        store: JobStore = request.app.state.store
        timeout = self.settings.job_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                batches = hub_of(request).tail(job_id, "0")
                async with aclosing(batches):
                    async for _batch in batches:
                        pass  # the tail ends after the terminal event
            view = await store.view(job_id)
        except TimeoutError:
            return _error(
                504,
                f"job {job_id} did not finish within {timeout:g}s; it goes on: follow it at "
                f"GET /v1/jobs/{job_id}",
                "timeout",
                code="job_timeout",
                headers=headers,
            )
        except JobNotFoundError as exc:
            return _error(404, str(exc), code="job_not_found", headers=headers)
        if view.status == JobStatus.completed:
            return JSONResponse(completion(view, created_at), headers=headers)
        if view.status == JobStatus.cancelled:
            return _error(
                409,
                f"job {job_id} was cancelled",
                "tokenspool_cancelled",
                code="job_cancelled",
                headers=headers,
            )
        error_type = view.error.type if view.error else "Error"
        message = view.error.message if view.error else "no error recorded"
        return _error(
            504 if error_type == "Timeout" else 502,
            f"job {job_id} failed: {error_type}: {message}",
            error_type,
            code="job_failed",
            headers=headers,
        )

    @staticmethod
    async def _created_at(store: JobStore, job_id: str) -> int:
        raw = await cast(Awaitable[Any], store.redis.hget(store.keys.job(job_id), F_CREATED))
        return int(float(as_text(raw))) if raw is not None else int(time.time())
