"""What the streaming routes (SSE, OpenAI-format SSE, WebSocket) share."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from typing import cast

from tokenspool.events import TERMINAL_TYPES, Event
from tokenspool.keys import E_TYPE
from tokenspool.metrics import ApiMetrics
from tokenspool.settings import Settings
from tokenspool.store import JobStore
from tokenspool.tailer import tail


def tail_events(
    store: JobStore, settings: Settings, job_id: str, start: str
) -> AsyncGenerator[Event, None]:
    """``tail`` with the API's read settings, typed as the generator it is (for ``aclosing``)."""
    events = tail(
        store.redis,
        job_id,
        start,
        keys=store.keys,
        count=settings.read_count,
        block_ms=settings.read_block_ms,
    )
    return cast(AsyncGenerator[Event, None], events)


def id_tuple(event_id: str) -> tuple[int, int]:
    """A validated stream id (``parse_event_id``) as a comparable pair."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def ended_by(store: JobStore, job_id: str, start: str) -> bool:
    """True if the job's stream ends with its terminal event at or before ``start``: a reader
    resuming there has nothing left to read (and would otherwise wait until the keys expire)."""
    if start == "0":
        return False
    last = await store.redis.xrevrange(store.keys.events(job_id), "+", "-", count=1)
    if not last:
        return False
    entry_id, fields = last[0]
    kind = {_s(k): _s(v) for k, v in fields.items()}.get(E_TYPE)
    return kind in TERMINAL_TYPES and id_tuple(_s(entry_id)) <= id_tuple(start)


@contextmanager
def tracked(metrics: ApiMetrics, transport: str, start: str) -> Iterator[None]:
    """Count a stream client while it is connected (gauge, duration, resumes)."""
    if start != "0":
        metrics.stream_resumes.labels(transport).inc()
    gauge = metrics.stream_clients.labels(transport)
    gauge.inc()
    began = time.monotonic()
    try:
        yield
    finally:
        gauge.dec()
        metrics.stream_seconds.labels(transport).observe(time.monotonic() - began)


async def stream_head(store: JobStore, job_id: str) -> tuple[int, int]:
    """The id of the stream's newest entry now (``(0, 0)`` if empty): what a client connecting
    now replays rather than waits for."""
    last = await store.redis.xrevrange(store.keys.events(job_id), "+", "-", count=1)
    return id_tuple(_s(last[0][0])) if last else (0, 0)
