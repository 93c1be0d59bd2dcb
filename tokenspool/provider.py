"""Calls a model through litellm as a stream, and translates its errors at the boundary."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from .errors import ProviderError

_litellm: ModuleType | None = None


def load_litellm() -> ModuleType:
    """Import litellm once, offline (no cost-map download) and quiet."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        _litellm = litellm
    return _litellm


# error classes (litellm's names) worth another attempt even without an HTTP status
RETRYABLE_TYPES = frozenset(
    {
        "APIConnectionError",
        "Timeout",
        "RateLimitError",
        "ServiceUnavailableError",
        "InternalServerError",
        "MidStreamFallbackError",
        "APIError",
    }
)


def _retry_after(exc: BaseException) -> float | None:
    headers: Any = getattr(exc, "litellm_response_headers", None)
    response = getattr(exc, "response", None)
    if not headers and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to our own backoff


def provider_error(exc: BaseException) -> ProviderError:
    """A ProviderError naming the provider's error class and message, with retry hints."""
    message = str(getattr(exc, "message", "") or exc) or exc.__class__.__name__
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    type_ = exc.__class__.__name__
    retryable = (status is not None and (status in (408, 409, 429) or status >= 500)) or (
        status is None and type_ in RETRYABLE_TYPES
    )
    return ProviderError(
        type_, message, status_code=status, retry_after=_retry_after(exc), retryable=retryable
    )


KEEP_CHUNKS = 16  # chunks litellm's stream wrapper may keep (see _bound_kept_chunks)


class ProviderStream:
    """One streaming chat completion; ``aclose()`` closes the upstream connection."""

    def __init__(self, params: dict[str, Any], request_kwargs: dict[str, Any], idle_timeout: float):
        self.params = params
        self.request_kwargs = request_kwargs
        self.idle_timeout = idle_timeout
        self._response: Any = None

    async def open(self) -> None:
        litellm = load_litellm()
        kwargs: dict[str, Any] = {
            **self.request_kwargs,
            **self.params,
            "stream": True,
            "stream_options": {"include_usage": True},
            # retries are tokenspool's decision, not the SDK's (it retries 429/5xx twice)
            "max_retries": 0,
            "num_retries": 0,
            "timeout": self.idle_timeout,  # litellm/OpenAI SDK: per-read idle timeout
        }
        try:
            async with asyncio.timeout(self.idle_timeout):
                self._response = await litellm.acompletion(**kwargs)
        except TimeoutError as exc:
            raise ProviderError(
                "Timeout", f"no answer within {self.idle_timeout}s", retryable=True
            ) from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise provider_error(exc) from exc

    async def chunks(self) -> AsyncIterator[Any]:
        assert self._response is not None, "open() first"
        iterator = self._response.__aiter__()
        # litellm's own per-read timeout fires first (reported as MidStreamFallbackError, as on
        # the fast path); this one only guards against a library that never returns
        guard = self.idle_timeout * 1.5 + 1.0
        while True:
            try:
                async with asyncio.timeout(guard):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                raise ProviderError(
                    "Timeout", f"provider sent nothing for {self.idle_timeout}s", retryable=True
                ) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise provider_error(exc) from exc
            self._bound_kept_chunks()
            yield chunk

    def _bound_kept_chunks(self) -> None:
        # litellm's stream wrapper appends every chunk to ``.chunks`` for its end-of-stream
        # logging and usage rebuild, about 2.5 KB each for the life of the stream. The worker
        # needs neither (usage comes from the provider's own usage chunk; no litellm callbacks
        # are set); the wrapper's repetition check reads only the last two.
        kept = getattr(self._response, "chunks", None)
        if isinstance(kept, list) and len(kept) > 2 * KEEP_CHUNKS:
            del kept[:-KEEP_CHUNKS]

    async def aclose(self) -> None:
        if self._response is not None and hasattr(self._response, "aclose"):
            response, self._response = self._response, None
            await asyncio.shield(response.aclose())


def cost_usd(params: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> float | None:
    """The job's cost from litellm's pricing (or the model's own ``input_cost_per_token`` /
    ``output_cost_per_token`` in the models file); None when the model has no known price."""
    if "input_cost_per_token" in params or "output_cost_per_token" in params:
        # the model's own prices: what litellm's cost_per_token computes for custom prices
        # (price x tokens, each side), without its ~0.1 ms of provider lookups per job
        prompt_cost = float(params.get("input_cost_per_token", 0.0)) * prompt_tokens
        completion_cost = float(params.get("output_cost_per_token", 0.0)) * completion_tokens
        return round(prompt_cost + completion_cost, 10)
    model = params.get("model", "")
    if model in _UNPRICED:
        return None
    litellm = load_litellm()
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )
    except Exception:  # litellm raises several types for unmapped models: no price known
        # litellm's price map is loaded once (the worker registers no models), so a model it
        # cannot price stays unpriced: its ~0.1 ms of failed lookups is not paid per job
        if len(_UNPRICED) < MAX_UNPRICED:
            _UNPRICED.add(model)
        return None
    return round(float(prompt_cost) + float(completion_cost), 10)


MAX_UNPRICED = 1024  # models remembered as unpriced (a models file names far fewer)
_UNPRICED: set[str] = set()
