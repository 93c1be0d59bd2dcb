"""What a relay level drives, one stream at a time: tokenspool's stack, or the minimal relay.

Each tokenspool stream is one request, ``POST /v1/jobs`` with ``Accept: text/event-stream``,
which queues the job and streams its events, through the bench's own lean HTTP client
(``sse.submit_and_follow``): httpx costs the client about ten times the CPU per request, on the
cores the streams already running are measured on. With a POST and then a GET, the job started
before its reader connected: in the ramp of a 500-stream level the reader's first event came a
median 77-117 ms after the provider's first chunk, and the chunks sent before it (about 1% of a
level) counted that wait as relay latency. ``ONE_REQUEST = False`` measures that way again. The
minimal relay (the floor) has no such route: its jobs are queued with RPUSH and then followed
with a GET. Either way, 32 streams at a time wait for their job to be queued. The OpenAI
target drives the same stack through ``POST /v1/chat/completions`` with ``"stream": true``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import minimal_relay, sse
from .context import Context
from .driver import Driver
from .stacks import CLOCKED_MODEL

ONE_REQUEST = True  # tokenspool's streams: queue and follow in one request (module docstring)

# (prompt, log, within, gate): queue the prompt's job and read its events into ``log`` until the
# terminal one (within ``within`` s); ``gate`` is held until the job is queued
Follow = Callable[[str, sse.StreamLog, float, asyncio.Semaphore], Awaitable[None]]


@dataclass
class Target:
    """What a level drives: tokenspool's stack, or the minimal relay of the same shape."""

    pids: dict[str, int]  # by role: "worker …", "api", "redis", "clocked provider"
    follow: Follow


def _one_request(driver: Driver, openai: bool) -> Follow:
    """Queue and follow each job in one request (``Driver.submit_and_follow``), holding
    ``gate`` until the job is queued."""

    async def follow(
        prompt: str, log: sse.StreamLog, within: float, gate: asyncio.Semaphore
    ) -> None:
        await gate.acquire()
        held = True

        def queued() -> None:
            nonlocal held
            if held:
                held = False
                gate.release()

        try:
            await driver.submit_and_follow(
                prompt, log, within, CLOCKED_MODEL, on_answer=queued, openai=openai
            )
        finally:
            queued()

    return follow


def _pids(ctx: Context) -> dict[str, int]:
    return {k: v for k, v in ctx.stack().pids().items() if k != "fake provider"}


def tokenspool_target(ctx: Context, driver: Driver) -> Target:
    port = ctx.stack().api_port

    async def post_then_get(
        prompt: str, log: sse.StreamLog, within: float, gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            log.job_id = await driver.submit_lean(prompt, CLOCKED_MODEL)
        await sse.follow("127.0.0.1", port, log.job_id, log, within=within)

    return Target(_pids(ctx), _one_request(driver, False) if ONE_REQUEST else post_then_get)


def openai_target(ctx: Context, driver: Driver) -> Target:
    """tokenspool through its OpenAI-compatible surface: ``POST /v1/chat/completions`` with
    ``"stream": true`` (one request per job, as the openai SDK makes), read as chunks."""
    return Target(_pids(ctx), _one_request(driver, True))


def minimal_target(ctx: Context, driver: Driver, worker: int, api: int, port: int) -> Target:
    async def follow(
        prompt: str, log: sse.StreamLog, within: float, gate: asyncio.Semaphore
    ) -> None:
        async with gate:
            log.job_id = f"bench:minimal:{uuid.uuid4().hex}"
            await driver.redis.rpush(minimal_relay.QUEUE, f"{log.job_id}\t{prompt}")
        await sse.follow("127.0.0.1", port, log.job_id, log, within=within)

    pids = {k: v for k, v in ctx.stack().pids().items() if k in ("redis", "clocked provider")}
    return Target({**pids, "worker": worker, "api": api}, follow)
