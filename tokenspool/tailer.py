"""Tail a job's events straight from Redis, resuming after connection errors."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis

from .errors import (
    REDIS_UNREACHABLE,
    InvalidEventIdError,
    JobNotFoundError,
    StreamGoneError,
    TokenspoolError,
)
from .events import Event, from_entry, is_terminal
from .keys import Keys

log = logging.getLogger(__name__)

EVENT_ID_RE = re.compile(r"^(0|[0-9]{1,20}-[0-9]{1,20})$")
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


class TailTimeoutError(TokenspoolError, TimeoutError):
    """No new event arrived within the tail's idle timeout."""


def parse_event_id(value: str | None) -> str:
    """Validate an ``after`` / ``Last-Event-ID`` value; ``None`` or empty means the start."""
    if value is None or value.strip() == "":
        return "0"
    value = value.strip()
    if not EVENT_ID_RE.match(value):
        raise InvalidEventIdError(value)
    ms, _, seq = value.partition("-")
    if int(ms) >= 2**64 or int(seq or 0) >= 2**64:  # Redis ids are two unsigned 64-bit parts
        raise InvalidEventIdError(value)
    return "0" if value in ("0", "0-0") else value


def _ordinal(fields: dict[object, object]) -> int | None:
    raw = fields.get(b"n", fields.get("n"))
    if raw is None:
        return None
    return int(raw.decode() if isinstance(raw, bytes) else str(raw))


def id_tuple(value: str) -> tuple[int, int]:
    """A stream id (``<ms>-<seq>``, or ``0``) as a comparable pair."""
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


async def check_retained(redis: Redis, stream: str, after: str) -> None:
    """Raise StreamGoneError if events after ``after`` were trimmed away (MAXLEN cap).

    XINFO's ``entries-added`` exceeds ``length`` once entries were trimmed; an offset older
    than the oldest retained entry then has a gap behind it. (An offset equal to the last
    trimmed id is refused too: the server does not say which ids it trimmed.)
    """
    raise_if_trimmed(await redis.xinfo_stream(stream), after)


def raise_if_trimmed(info: dict[str, Any], after: str) -> None:
    """``check_retained`` on a reply of XINFO STREAM already read."""
    added, length = int(info.get("entries-added") or 0), int(info.get("length") or 0)
    first = info.get("first-entry")
    if added <= length or not first:
        return
    first_id = first[0].decode() if isinstance(first[0], bytes) else str(first[0])
    if id_tuple(after) < id_tuple(first_id):
        raise StreamGoneError(
            f"offset {after} is older than the retained events: {added - length} early events "
            f"were trimmed and the oldest kept is {first_id}; resume from a later id or read "
            "the job's output"
        )


async def tail(
    redis: Redis,
    job_id: str,
    after: str | None = "0",
    *,
    keys: Keys | None = None,
    count: int = 100,
    block_ms: int = 5_000,
    idle_timeout: float | None = None,
    reconnect_timeout: float = 60.0,
) -> AsyncIterator[Event]:
    """Yield the events of ``job_id`` after ``after`` until (and including) the terminal one.

    Reads with XREAD COUNT/BLOCK, so at most ``count`` events are held at once and the caller's
    pace is the reading pace. After a connection error it resumes from the last id it yielded,
    for up to ``reconnect_timeout`` seconds. ``idle_timeout`` bounds the wait for a new event.
    """
    keys = keys or Keys()
    last = parse_event_id(after)
    stream, job_key = keys.events(job_id), keys.job(job_id)
    if not await redis.exists(stream, job_key):
        raise JobNotFoundError(job_id)
    if last != "0":
        await check_retained(redis, stream, last)
    # ordinal the next entry must carry; a jump means entries were trimmed before we read them
    expected_n: int | None = 1 if last == "0" else None
    failures = 0
    outage_started: float | None = None
    idle_since = time.monotonic()
    while True:
        try:
            response = await redis.xread({stream: last}, count=count, block=block_ms)
        except REDIS_UNREACHABLE as exc:
            now = time.monotonic()
            outage_started = outage_started or now
            if now - outage_started > reconnect_timeout:
                raise
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            log.warning("job %s: tail read failed (%s); resuming after %s", job_id, exc, last)
            await asyncio.sleep(delay)
            continue
        failures, outage_started = 0, None
        if not response:
            if not await redis.exists(stream, job_key):
                raise JobNotFoundError(job_id)  # expired while we waited
            if idle_timeout is not None and time.monotonic() - idle_since > idle_timeout:
                raise TailTimeoutError(f"job {job_id}: no event for {idle_timeout}s")
            continue
        idle_since = time.monotonic()
        for _name, entries in response:
            for entry_id, fields in entries:
                n = _ordinal(fields)
                if n is not None:
                    if expected_n is not None and n != expected_n:
                        raise StreamGoneError(
                            f"job {job_id}: events {expected_n}..{n - 1} were trimmed (stream cap) "
                            f"before this reader got them; it read up to {last}"
                        )
                    expected_n = n + 1
                event = from_entry(job_id, entry_id, fields)
                last = event.event_id or last
                yield event
                if is_terminal(event):
                    return
