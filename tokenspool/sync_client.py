"""The synchronous client: the same methods as :class:`tokenspool.AsyncClient`, blocking."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, connect_sse
from pydantic import BaseModel

from .accumulator import Accumulator
from .client import (
    RECONNECT_DELAYS,
    TRANSIENT_STATUS,
    JobFailedError,
    OutputRestartedError,
    _Transient,
    events_request,
    job_body,
    raise_for_status,
    schema_format,
)
from .errors import TokenspoolError
from .events import ContentDelta, Event, JobFailed, JobRetrying, ObjectDelta, from_json, is_terminal
from .jobs import JOB_ID_HEADER, JobAccepted, JobView

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


class Client:
    """Talks to a tokenspool API over HTTP (httpx, blocking); ``events()`` reconnects by itself."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 30.0,
        read_timeout: float = 60.0,
        max_reconnects: int = 20,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_reconnects = max_reconnects
        self._owns_http = http is None
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, read=read_timeout)
        )
        self.reconnects = 0

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def submit(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> JobAccepted:
        """Queue a chat completion; ``messages`` may be a plain prompt string."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        response = self._http.post(
            "/v1/jobs", json=job_body(model, messages, params), headers=headers
        )
        raise_for_status(response)
        return JobAccepted.model_validate(response.json())

    def get(self, job_id: str) -> JobView:
        response = self._http.get(f"/v1/jobs/{job_id}")
        raise_for_status(response, job_id)
        return JobView.model_validate(response.json())

    def cancel(self, job_id: str) -> str:
        response = self._http.post(f"/v1/jobs/{job_id}/cancel")
        raise_for_status(response, job_id)
        status: str = response.json()["status"]
        return status

    def jobs(self, limit: int = 20) -> list[JobView]:
        response = self._http.get("/v1/jobs", params={"limit": limit})
        raise_for_status(response)
        return [JobView.model_validate(item) for item in response.json()]

    def events(self, job_id: str, after: str = "0") -> Iterator[Event]:
        """The job's events from ``after`` to the terminal one, across dropped connections
        (reconnecting with ``Last-Event-ID``); read only as fast as the caller consumes them."""
        return self._follow(job_id, after)

    def stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        *,
        idempotency_key: str | None = None,
        **params: Any,
    ) -> Iterator[Event]:
        """Queue a chat completion and yield its events from the start, in one request (see
        AsyncClient.stream)."""
        submit = (job_body(model, messages, params), idempotency_key or uuid.uuid4().hex)
        return self._follow(None, "0", submit)

    def _follow(
        self, job_id: str | None, after: str, submit: tuple[dict[str, Any], str] | None = None
    ) -> Iterator[Event]:
        last = after
        failures = 0
        while True:
            method, url, options = events_request(job_id, last, submit)
            try:
                with connect_sse(self._http, method, url, **options) as source:
                    status = source.response.status_code
                    if status in TRANSIENT_STATUS:
                        source.response.read()
                        raise _Transient(status, "temporarily unavailable")
                    if status != 200:
                        source.response.read()
                        raise_for_status(source.response, job_id)
                        if job_id is None:  # queued, but answered in JSON: follow it
                            job_id = JobAccepted.model_validate(source.response.json()).id
                            continue
                    job_id = job_id or source.response.headers[JOB_ID_HEADER]
                    for sse in source.iter_sse():
                        if not sse.data:
                            continue
                        event = from_json(sse.data)
                        last = sse.id or event.event_id or last
                        failures = 0
                        yield event
                        if is_terminal(event):
                            return
                raise httpx.RemoteProtocolError("stream ended before the terminal event")
            except (httpx.TransportError, SSEError, _Transient) as exc:
                failures += 1
                self.reconnects += 1
                if failures > self.max_reconnects:
                    raise
                log.info(
                    "job %s: events connection lost (%s); resuming after %s",
                    job_id or "(not known yet)",
                    exc,
                    last,
                )
                time.sleep(RECONNECT_DELAYS[min(failures - 1, len(RECONNECT_DELAYS) - 1)])

    def wait(self, job_id: str) -> JobView:
        """Follow the job to its end, then return its final view."""
        for _ in self.events(job_id):
            pass
        return self.get(job_id)

    def accumulate(self, job_id: str, after: str = "0") -> Accumulator:
        """Follow a job to its end and fold its events (the winning attempt's output)."""
        acc = Accumulator()
        for event in self.events(job_id, after=after):
            acc.add(event)
        return acc

    def stream_text(
        self, model: str, messages: list[dict[str, Any]] | str, **params: Any
    ) -> Iterator[str]:
        """Submit and yield the answer's text as it arrives, in one request (see
        AsyncClient.stream_text)."""
        yielded = False
        for event in self.stream(model, messages, **params):
            if isinstance(event, ContentDelta):
                yielded = True
                yield event.text
            elif isinstance(event, JobRetrying) and yielded:
                raise OutputRestartedError(event.job_id, event.next_attempt)
            elif isinstance(event, JobFailed):
                raise JobFailedError(event.job_id, event.error.type, event.error.message)

    def structured(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        response_model: type[M],
        **params: Any,
    ) -> M:
        """Ask for JSON matching ``response_model`` and return a validated instance."""
        result: M | None = None
        for item in self.structured_stream(model, messages, response_model, **params):
            result = item
        if result is None:
            raise TokenspoolError("the job ended without a structured answer")
        return result

    def structured_stream(
        self,
        model: str,
        messages: list[dict[str, Any]] | str,
        response_model: type[M],
        **params: Any,
    ) -> Iterator[M]:
        """Partial (unvalidated) instances as the JSON grows, then the validated final one."""
        job_id = ""
        events = self.stream(
            model, messages, response_format=schema_format(response_model), **params
        )
        for event in events:
            job_id = event.job_id
            if isinstance(event, ObjectDelta) and isinstance(event.value, dict):
                yield response_model.model_construct(**event.value)
            elif isinstance(event, JobFailed):
                raise JobFailedError(job_id, event.error.type, event.error.message)
        yield response_model.model_validate(self.get(job_id).output.parsed)
