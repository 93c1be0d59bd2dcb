"""A direct path for OpenAI-compatible providers: aiohttp + json, no per-chunk SDK objects.

litellm costs about 30x the CPU of a plain HTTP client + ``json.loads`` per chunk
(docs/benchmarks.md) and keeps every chunk in memory, which caps a worker at a few thousand
chunks a second. For a model whose litellm params are just an ``openai/`` model on an
``api_base`` (the common case of a self-hosted or OpenAI-compatible gateway), the worker reads
the stream itself; litellm still resolves everything else (cost, every other provider). The
conformance test (tests/test_fastpath.py) runs every fake-provider script through both paths and
requires the same events.

The client is aiohttp rather than httpx: reading 200 concurrent paced SSE streams (each chunk
arrives alone), aiohttp's line iteration cost about 25-30 µs of CPU per chunk against 100-107 µs
for httpx's ``aiter_lines`` (httpcore/anyio machinery and a timeout scope per read). The idle
timeout is aiohttp's per-read socket timeout (``sock_read``) until the response headers, then a
watchdog task per stream (no timer per chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
from aiohttp import ServerTimeoutError
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from .errors import ProviderError

# litellm params the fast path understands; anything else goes through litellm
FAST_KEYS = frozenset(
    {"model", "api_base", "api_key", "input_cost_per_token", "output_cost_per_token"}
)

# HTTP status → the error class litellm reports for it (same names, so retry policy and error
# types are the same on both paths)
STATUS_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "Timeout",
    409: "APIError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

MAX_CONNECTIONS = 4096  # open provider connections per worker process
MAX_LINE_BYTES = 8 * 2**20  # one SSE line (one chunk); a longer one breaks the stream

_session: aiohttp.ClientSession | None = None


def applies(params: dict[str, Any]) -> bool:
    """True when ``params`` name an OpenAI-compatible endpoint the fast path can call."""
    return (
        str(params.get("model", "")).startswith("openai/")
        and bool(params.get("api_base"))
        and set(params) <= FAST_KEYS
    )


def _http() -> aiohttp.ClientSession:
    """The process's provider session (made on first use, on the running loop)."""
    global _session
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=None),  # per request below
            # proxies from the environment, as httpx did; aiohttp then looks them (and netrc)
            # up in a thread for every request, so only when some are set
            trust_env=bool(urllib.request.getproxies()),
        )
    return _session


async def aclose() -> None:
    """Close the process's provider session and its connections (worker shutdown)."""
    global _session
    if _session is not None:
        session, _session = _session, None
        await session.close()


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _status_error(response: aiohttp.ClientResponse, body: bytes) -> ProviderError:
    status = response.status
    type_ = STATUS_TYPES.get(status, "APIError" if status >= 500 else "BadRequestError")
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace")[:500] or response.reason or ""
    return ProviderError(
        type_,
        f"{type_}: OpenAIException - {message}",
        status_code=status,
        retry_after=_retry_after(response),
        retryable=status in (408, 409, 429) or status >= 500,
    )


async def _lines(content: aiohttp.StreamReader) -> AsyncGenerator[list[bytes], None]:
    """The body's lines (split at ``\\n``, as aiohttp's ``readline`` does), a list of the
    lines completed by each arrival of data: one ``readany`` per arrival rather than one
    ``readline`` per line (a provider's chunk is two lines, its ``data:`` line and a blank
    one, and each ``readline`` is a coroutine call, a buffer scan and a flow-control check).
    A line longer than ``MAX_LINE_BYTES`` raises ``LineTooLong``, as
    ``readline(max_line_length=...)`` does; between reads, only the start of a line whose end
    has not arrived is kept."""
    head: list[bytes] = []  # the start of a line whose end has not arrived yet
    held = 0
    while data := await content.readany():
        if b"\n" not in data:
            head.append(data)
            held += len(data)
            if held > MAX_LINE_BYTES:
                raise LineTooLong(head[0][:100] + b"...", MAX_LINE_BYTES)
            continue
        if head:
            head.append(data)
            data = b"".join(head)
            head.clear()
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(data) > MAX_LINE_BYTES:
            for line in lines:
                if len(line) >= MAX_LINE_BYTES:
                    raise LineTooLong(line[:100] + b"...", MAX_LINE_BYTES)
        held = len(rest)
        if rest:
            head.append(rest)
        yield lines
    if head:  # the last line, without its line break
        yield [b"".join(head)]


_DONE: Any = object()  # the stream's ``data: [DONE]``


def _chunk(line: bytes) -> Any:
    """The chunk an SSE line carries: a dict, ``_DONE`` at ``[DONE]``, None for a line that is
    not ``data:``. Raises ValueError for data that is not JSON, and ProviderError for an error
    object sent in place of a chunk."""
    if not line.startswith(b"data:"):
        return None
    data = line[5:].strip()
    if data == b"[DONE]":
        return _DONE
    chunk = json.loads(data)
    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
        error = chunk["error"] or {}
        raise ProviderError("APIError", f"APIError: {error.get('message', error)}", retryable=True)
    return chunk


class FastOpenAIStream:
    """One streaming chat completion read straight off the wire (same interface as
    :class:`tokenspool.provider.ProviderStream`)."""

    def __init__(self, params: dict[str, Any], request_kwargs: dict[str, Any], idle_timeout: float):
        self.params = params
        self.request_kwargs = request_kwargs
        self.idle_timeout = idle_timeout
        self._response: aiohttp.ClientResponse | None = None
        self._last_line = 0.0  # when the body's last whole line arrived (monotonic)

    async def open(self) -> None:
        body = {
            **self.request_kwargs,
            "model": str(self.params["model"]).removeprefix("openai/"),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"content-type": "application/json"}
        if self.params.get("api_key"):
            headers["authorization"] = f"Bearer {self.params['api_key']}"
        url = str(self.params["api_base"]).rstrip("/") + "/chat/completions"
        # connect: waiting for a pooled connection and opening it; sock_read: each read of
        # the answer, headers included (the provider's silence, however long the answer)
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.idle_timeout,
            sock_connect=min(10.0, self.idle_timeout),
            sock_read=self.idle_timeout,
        )
        try:
            response = await _http().request(
                "POST", url, data=json.dumps(body).encode(), headers=headers, timeout=timeout
            )
        except TimeoutError as exc:  # aiohttp's timeouts subclass TimeoutError
            raise ProviderError(
                "Timeout", f"no answer within {self.idle_timeout}s", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(
                "APIConnectionError", f"APIConnectionError: {exc!r}", retryable=True
            ) from exc
        self._response = response
        if response.status != 200:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise ProviderError(
                    "APIConnectionError", f"APIConnectionError: {exc!r}", retryable=True
                ) from exc
            finally:
                response.release()
            raise _status_error(response, raw)

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self._response is not None, "open() first"
        content = self._response.content
        watchdog = self._watch_idle(self._response)
        try:
            async with contextlib.aclosing(_lines(content)) as body:  # closed at [DONE] too
                async for lines in body:
                    self._last_line = time.monotonic()
                    for line in lines:
                        chunk = _chunk(line)
                        if chunk is _DONE:
                            return
                        if chunk is not None:
                            yield chunk
        except (aiohttp.ClientError, HttpProcessingError, ValueError) as exc:
            # litellm's name and status: once the answer's body is being read, any break (a
            # read timeout included, and before the first chunk too) is a
            # MidStreamFallbackError (500). ValueError: a line that is not JSON (or not UTF-8).
            raise ProviderError(
                "MidStreamFallbackError",
                f"MidStreamFallbackError: stream broke after it began: {exc!r}",
                status_code=500,
                retryable=True,
            ) from exc
        finally:
            if watchdog is not None:
                watchdog.cancel()

    def _watch_idle(self, response: aiohttp.ClientResponse) -> asyncio.Task[None] | None:
        """Keep the idle timeout of the answer's body with one task per stream instead of
        aiohttp's ``sock_read``, which cancels and re-arms a timer at every chunk (a tenth of
        the worker's CPU with 2,000 slow streams). Every quarter of the timeout it checks when
        the last line came; after ``idle_timeout`` without one it fails the read the way
        ``sock_read`` does (``ServerTimeoutError``), so the errors stay the same. (A line that
        arrives in pieces counts when it is whole.)"""
        connection = response.connection
        if connection is None or connection.protocol is None:
            return None  # the body is read already: sock_read stays
        connection.protocol.read_timeout = None
        self._last_line = time.monotonic()
        content = response.content

        async def watch() -> None:
            while True:
                await asyncio.sleep(self.idle_timeout / 4)
                if time.monotonic() - self._last_line > self.idle_timeout:
                    content.set_exception(ServerTimeoutError("Timeout on reading data from socket"))
                    return

        return asyncio.create_task(watch(), name="provider-idle-timeout")

    async def aclose(self) -> None:
        """Close the upstream connection (a finished answer's is back in the pool already)."""
        if self._response is not None:
            response, self._response = self._response, None
            response.close()
