"""A direct path for OpenAI-compatible providers: httpx + json, no per-chunk SDK objects.

litellm costs about 30x the CPU of plain httpx + ``json.loads`` per chunk (docs/benchmarks.md)
and keeps every chunk in memory, which caps a worker at a few thousand chunks a second. For a
model whose litellm params are just an ``openai/`` model on an ``api_base`` (the common case of
a self-hosted or OpenAI-compatible gateway), the worker reads the stream itself; litellm still
resolves everything else (cost, every other provider). The conformance test
(tests/test_fastpath.py) runs every fake-provider script through both paths and requires the
same events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

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

_client: httpx.AsyncClient | None = None


def applies(params: dict[str, Any]) -> bool:
    """True when ``params`` name an OpenAI-compatible endpoint the fast path can call."""
    return (
        str(params.get("model", "")).startswith("openai/")
        and bool(params.get("api_base"))
        and set(params) <= FAST_KEYS
    )


def _http() -> httpx.AsyncClient:
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=512),
            timeout=None,  # per request below
        )
    return _client


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _status_error(response: httpx.Response, body: bytes) -> ProviderError:
    status = response.status_code
    type_ = STATUS_TYPES.get(status, "APIError" if status >= 500 else "BadRequestError")
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body.decode(errors="replace")[:500] or response.reason_phrase
    return ProviderError(
        type_,
        f"{type_}: OpenAIException - {message}",
        status_code=status,
        retry_after=_retry_after(response),
        retryable=status in (408, 409, 429) or status >= 500,
    )


class FastOpenAIStream:
    """One streaming chat completion read straight off the wire (same interface as
    :class:`tokenspool.provider.ProviderStream`)."""

    def __init__(self, params: dict[str, Any], request_kwargs: dict[str, Any], idle_timeout: float):
        self.params = params
        self.request_kwargs = request_kwargs
        self.idle_timeout = idle_timeout
        self._cm: Any = None
        self._response: httpx.Response | None = None
        self.chunks_seen = 0

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
        timeout = httpx.Timeout(self.idle_timeout, connect=min(10.0, self.idle_timeout))
        request = _http().build_request(
            "POST", url, content=json.dumps(body).encode(), headers=headers, timeout=timeout
        )
        try:
            self._response = await _http().send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise ProviderError(
                "Timeout", f"no answer within {self.idle_timeout}s", retryable=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(
                "APIConnectionError", f"APIConnectionError: {exc}", retryable=True
            ) from exc
        if self._response.status_code != 200:
            raw = await self._response.aread()
            await self._response.aclose()
            raise _status_error(self._response, raw)

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self._response is not None, "open() first"
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    error = chunk["error"] or {}
                    raise ProviderError(
                        "APIError", f"APIError: {error.get('message', error)}", retryable=True
                    )
                self.chunks_seen += 1
                yield chunk
        except (httpx.HTTPError, json.JSONDecodeError) as exc:
            # litellm's names and status: after the first chunk any break, a read timeout
            # included, is a MidStreamFallbackError (500); before it, a timeout or a
            # connection error
            if self.chunks_seen:
                raise ProviderError(
                    "MidStreamFallbackError",
                    f"MidStreamFallbackError: stream broke after it began: {exc!r}",
                    status_code=500,
                    retryable=True,
                ) from exc
            if isinstance(exc, httpx.TimeoutException):
                raise ProviderError(
                    "Timeout", f"provider sent nothing for {self.idle_timeout}s", retryable=True
                ) from exc
            raise ProviderError(
                "APIConnectionError", f"APIConnectionError: {exc!r}", retryable=True
            ) from exc

    async def aclose(self) -> None:
        if self._response is not None:
            response, self._response = self._response, None
            await asyncio.shield(response.aclose())
