"""Async HTTP client for the tokenspool API; ``events()`` reconnects by itself."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import BaseModel

from .accumulator import Accumulator
from .errors import ClientError, JobNotFoundError, StreamGoneError, TokenspoolError
from .events import ContentDelta, Event, JobFailed, JobRetrying, ObjectDelta, from_json, is_terminal
from .jobs import JOB_ID_HEADER, JobAccepted, JobView

M = TypeVar("M", bound=BaseModel)


class JobFailedError(TokenspoolError):
    """The job ended with ``job.failed``."""

    def __init__(self, job_id: str, type_: str, message: str) -> None:
        self.job_id = job_id
        self.type = type_
        super().__init__(f"job {job_id} failed: {type_}: {message}")


class OutputRestartedError(TokenspoolError):
    """The job was retried after text was already yielded; that text was superseded."""

    def __init__(self, job_id: str, next_attempt: int) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id} restarted as attempt {next_attempt} after output began; "
            "read the job again from the start (or use events()) for the final answer"
        )


log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
TRANSIENT_STATUS = frozenset({502, 503, 504})  # e.g. Redis restarting behind the API


class _Transient(ClientError):
    """A reconnectable failure (server busy or restarting)."""


def raise_for_status(response: httpx.Response, job_id: str | None = None) -> None:
    """Translate an error answer of the API into the error hierarchy."""
    if response.is_success:
        return
    try:
        detail: Any = response.json().get("detail")
    except ValueError:
        detail = response.text
    if response.status_code == 404 and job_id is not None:
        raise JobNotFoundError(job_id)
    if response.status_code == 410:
        raise StreamGoneError(str(detail))
    raise ClientError(response.status_code, detail)


def job_body(
    model: str, messages: list[dict[str, Any]] | str, params: dict[str, Any]
) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body; a plain string is one user message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return {"model": model, "messages": messages, **params}


def schema_format(response_model: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` asking for JSON that matches ``response_model``."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": response_model.__name__,
            "schema": response_model.model_json_schema(),
            "strict": True,
        },
    }


def events_request(
    job_id: str | None, last: str, submit: tuple[dict[str, Any], str] | None
) -> tuple[str, str, dict[str, Any]]:
    """Method, path and httpx options of the next events request: the job's stream after
    ``last``, or (``job_id`` None) the POST that queues ``submit`` (body, idempotency key) and
    streams it from its start."""
    if job_id is not None:
        return "GET", f"/v1/jobs/{job_id}/events", {"headers": {"Last-Event-ID": last}}
    assert submit is not None, "a job id or a job to submit"
    body, key = submit
    return "POST", "/v1/jobs", {"json": body, "headers": {"Idempotency-Key": key}}


class AsyncClient:
    """Talks to a tokenspool API over HTTP (httpx, async); :class:`tokenspool.Client` is the
    synchronous twin with the same methods."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 30.0,
        read_timeout: float = 60.0,
        max_reconnects: int = 20,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_reconnects = max_reconnects
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, read=read_timeout),
        )
        self.reconnects = 0

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    _raise_for = staticmethod(raise_for_status)

    async def submit(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> JobAccepted:
        """Queue a chat completion; ``messages`` may be a plain prompt string."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = await self._http.post(
            "/v1/jobs", json=job_body(model, messages, params), headers=headers
        )
        self._raise_for(response)
        return JobAccepted.model_validate(response.json())

    async def get(self, job_id: str) -> JobView:
        response = await self._http.get(f"/v1/jobs/{job_id}")
        self._raise_for(response, job_id)
        return JobView.model_validate(response.json())

    async def cancel(self, job_id: str) -> str:
        response = await self._http.post(f"/v1/jobs/{job_id}/cancel")
        self._raise_for(response, job_id)
        status: str = response.json()["status"]
        return status

    async def jobs(self, limit: int = 20) -> list[JobView]:
        response = await self._http.get("/v1/jobs", params={"limit": limit})
        self._raise_for(response)
        return [JobView.model_validate(item) for item in response.json()]

    def events(self, job_id: str, after: str = "0") -> AsyncIterator[Event]:
        """The job's events from ``after`` to the terminal one, across dropped connections.

        After a dropped connection it reconnects with ``Last-Event-ID`` set to the last event
        it yielded, so nothing is repeated or missed. Events are read only as fast as the
        caller consumes them.
        """
        return self._follow(job_id, after)

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> AsyncIterator[Event]:
        """Queue a chat completion and yield its events from the start, in one request
        (``POST /v1/jobs`` with ``Accept: text/event-stream``): the first token comes one round
        trip sooner than ``submit`` then ``events``. A dropped connection resumes as in
        :meth:`events`; one dropped before the job id arrived sends the same request again
        under the same ``Idempotency-Key`` (a new one is made if none is given), so it never
        queues the job twice."""
        submit = (job_body(model, messages, params), idempotency_key or uuid.uuid4().hex)
        return self._follow(None, "0", submit)

    async def _follow(
        self, job_id: str | None, after: str, submit: tuple[dict[str, Any], str] | None = None
    ) -> AsyncIterator[Event]:
        """``job_id``'s events after ``after``; with ``job_id`` None, the events of the job
        ``submit`` (body, idempotency key) queues, from its start."""
        last = after
        failures = 0
        while True:
            method, url, options = events_request(job_id, last, submit)
            try:
                async with aconnect_sse(self._http, method, url, **options) as source:
                    if source.response.status_code in TRANSIENT_STATUS:
                        await source.response.aread()
                        raise _Transient(source.response.status_code, "temporarily unavailable")
                    if source.response.status_code != 200:
                        await source.response.aread()
                        self._raise_for(source.response, job_id)
                        if job_id is None:  # queued, but answered in JSON: follow it
                            job_id = JobAccepted.model_validate(source.response.json()).id
                            continue
                    job_id = job_id or source.response.headers[JOB_ID_HEADER]
                    async for sse in source.aiter_sse():
                        if not sse.data:
                            continue
                        event = from_json(sse.data)
                        last = sse.id or event.event_id or last
                        failures = 0
                        yield event
                        if is_terminal(event):
                            return
                # the server closed the stream before a terminal event: resume
                raise httpx.RemoteProtocolError("stream ended before the terminal event")
            except (httpx.TransportError, SSEError, _Transient) as exc:
                failures += 1
                self.reconnects += 1
                if failures > self.max_reconnects:
                    raise
                delay = RECONNECT_DELAYS[min(failures - 1, len(RECONNECT_DELAYS) - 1)]
                log.info(
                    "job %s: events connection lost (%s); resuming after %s",
                    job_id or "(not known yet)",
                    exc,
                    last,
                )
                await asyncio.sleep(delay)

    async def wait(self, job_id: str) -> JobView:
        """Follow the job to its end, then return its final view."""
        async for _ in self.events(job_id):
            pass
        return await self.get(job_id)

    async def stream_text(
        self, model: str, messages: list[dict[str, Any]] | str, **params: Any
    ) -> AsyncIterator[str]:
        """Submit and yield the answer's text as it arrives (one request, as :meth:`stream`).

        If the job is retried after text was yielded, :class:`OutputRestartedError` is raised
        (the text so far belonged to a superseded attempt); a failed job raises
        :class:`JobFailedError`.
        """
        yielded = False
        async for event in self.stream(model, messages, **params):
            if isinstance(event, ContentDelta):
                yielded = True
                yield event.text
            elif isinstance(event, JobRetrying) and yielded:
                raise OutputRestartedError(event.job_id, event.next_attempt)
            elif isinstance(event, JobFailed):
                raise JobFailedError(event.job_id, event.error.type, event.error.message)

    async def accumulate(self, job_id: str, after: str = "0") -> Accumulator:
        """Follow a job to its end and fold its events (the winning attempt's output)."""
        acc = Accumulator()
        async for event in self.events(job_id, after=after):
            acc.add(event)
        return acc

    async def structured(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        response_model: type[M],
        **params: Any,
    ) -> M:
        """Ask for JSON matching ``response_model`` and return a validated instance."""
        result: M | None = None
        async for item in self.structured_stream(model, messages, response_model, **params):
            result = item
        if result is None:
            raise TokenspoolError("the job ended without a structured answer")
        return result

    async def structured_stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        response_model: type[M],
        **params: Any,
    ) -> AsyncIterator[M]:
        """Yield partial instances as the JSON grows, then the validated final instance.

        Partial instances are built with ``model_construct`` (unvalidated, fields missing until
        they arrive); the last item is validated against ``response_model``.
        """
        job_id = ""
        events = self.stream(
            model, messages, response_format=schema_format(response_model), **params
        )
        async for event in events:
            job_id = event.job_id
            if isinstance(event, ObjectDelta) and isinstance(event.value, dict):
                yield response_model.model_construct(**event.value)
            elif isinstance(event, JobFailed):
                raise JobFailedError(job_id, event.error.type, event.error.message)
        view = await self.get(job_id)
        yield response_model.model_validate(view.output.parsed)
