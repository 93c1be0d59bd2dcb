"""Counts HTTP error responses by status, as a pure ASGI middleware (streaming-safe)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokenspool.metrics import ApiMetrics


class ErrorCounter:
    """Increments ``tokenspool_http_errors{status}`` for every 4xx/5xx response."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    self.metrics.http_errors.labels(str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            # unhandled: the outer ServerErrorMiddleware answers 500 for it; count, re-raise
            if not started:
                self.metrics.http_errors.labels("500").inc()
            raise
