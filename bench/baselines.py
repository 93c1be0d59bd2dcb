"""Baselines: what a user would pick instead of tokenspool, on the same fake-provider stream.

(a) ``litellm.acompletion(stream=True)`` in one process, the way tokenspool's worker calls it
(``max_retries=0``, ``stream_options.include_usage``); (b) plain httpx reading the SSE lines and
``json.loads`` of each chunk; (c) the same plus an XADD of each chunk as a tokenspool-shaped entry
to the stack's Redis, pipelined 100 at a time: the plain-httpx + XADD limit a worker process is
held against. All consume the stack's fake provider over loopback, in the bench process. Per
stream: wall time per content chunk, the consumer's CPU per chunk, and the fake provider's own
CPU per chunk (the floor any consumer of this provider sits on).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from tokenspool.provider import load_litellm

from . import procstat
from .context import Context
from .results import GroupResult, ms, num, rate, times, us
from .stats import Summary, median

TTFT_S = 0.1
_ids = itertools.count()


@dataclass
class Run:
    """One consumed stream: when it began, when the first content arrived, how many chunks."""

    started: float
    first: float
    ended: float
    chunks: int


Consumer = Callable[[str, int, int], Awaitable[Run]]  # (base_url, chunks, ttft_ms)


def _prompt(chunks: int, ttft_ms: int) -> str:
    return f"baseline-{next(_ids)} [fake chunks={chunks} ttft_ms={ttft_ms}]"


def _body(chunks: int, ttft_ms: int) -> dict[str, Any]:
    """The streaming request the plain-httpx consumers send."""
    return {
        "model": "fake-gpt",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": _prompt(chunks, ttft_ms)}],
    }


def litellm_consumer() -> Consumer:
    litellm = load_litellm()

    async def consume(base: str, chunks: int, ttft_ms: int) -> Run:
        started = time.perf_counter()
        first = 0.0
        n = 0
        response: Any = await litellm.acompletion(
            model="openai/fake-gpt",
            api_base=base + "/v1",
            api_key="fake-key",
            messages=[{"role": "user", "content": _prompt(chunks, ttft_ms)}],
            stream=True,
            stream_options={"include_usage": True},
            max_retries=0,
            num_retries=0,
            timeout=60,
        )
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                n += 1
                if not first:
                    first = time.perf_counter()
        return Run(started, first, time.perf_counter(), n)

    return consume


def httpx_consumer(client: httpx.AsyncClient) -> Consumer:
    async def consume(base: str, chunks: int, ttft_ms: int) -> Run:
        started = time.perf_counter()
        first = 0.0
        n = 0
        body = _body(chunks, ttft_ms)
        async with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                choices = json.loads(data)["choices"]
                if choices and choices[0]["delta"].get("content"):
                    n += 1
                    if not first:
                        first = time.perf_counter()
        return Run(started, first, time.perf_counter(), n)

    return consume


def httpx_xadd_consumer(client: httpx.AsyncClient, redis: Redis) -> Consumer:
    """httpx + json.loads, then each content chunk XADDed to a stream, pipelined 100 at a time
    with one pipeline in flight while the next fills (reading never waits on Redis)."""
    batch = 100

    async def consume(base: str, chunks: int, ttft_ms: int) -> Run:
        started = time.perf_counter()
        first = 0.0
        n = 0
        stream = f"bench:baseline:{next(_ids)}"
        body = _body(chunks, ttft_ms)
        pipe = redis.pipeline(transaction=False)
        in_flight: asyncio.Task[list[Any]] | None = None

        async def send() -> None:
            nonlocal pipe, in_flight
            if in_flight is not None:
                await in_flight
            in_flight = asyncio.create_task(pipe.execute())
            pipe = redis.pipeline(transaction=False)

        async with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                choices = json.loads(data)["choices"]
                if choices and choices[0]["delta"].get("content"):
                    n += 1
                    delta = json.dumps({"text": choices[0]["delta"]["content"]})
                    pipe.xadd(stream, {"n": n, "t": "content.delta", "a": 1, "d": delta})
                    if len(pipe) == batch:
                        await send()
                    if not first:
                        first = time.perf_counter()
        if len(pipe):
            await send()
        if in_flight is not None:
            await in_flight
        await redis.delete(stream)
        return Run(started, first, time.perf_counter(), n)

    return consume


def key(name: str) -> str:
    """A consumer's name as a metrics key part: ``httpx + XADD`` → ``httpx_xadd``."""
    return name.replace(" + ", "_").lower()


@dataclass
class StreamCost:
    wall_per_chunk: float
    cpu_per_chunk: float
    provider_cpu_per_chunk: float
    first_content: float  # time to the first content chunk of this burst stream

    @property
    def rate(self) -> float:
        return 1 / self.wall_per_chunk


async def _single(
    consume: Consumer, base: str, fake_pid: int, chunks: int, reps: int
) -> StreamCost:
    await consume(base, 50, 0)  # warm-up: imports, connection pool
    walls, firsts = [], []
    total = 0
    # CPU is summed over all repetitions: /proc counts in clock ticks (10 ms)
    cpu0, fake0 = time.process_time(), procstat.cpu_seconds(fake_pid)
    for _ in range(reps):
        run = await consume(base, chunks, 0)
        total += run.chunks
        walls.append((run.ended - run.started) / run.chunks)
        firsts.append(run.first - run.started)
    cpu = (time.process_time() - cpu0) / total
    provider = (procstat.cpu_seconds(fake_pid) - fake0) / total
    return StreamCost(median(walls), cpu, provider, median(firsts))


async def _concurrent(consume: Consumer, base: str, streams: int, chunks: int) -> float:
    started = time.perf_counter()
    runs = await asyncio.gather(*(consume(base, chunks, 0) for _ in range(streams)))
    return sum(r.chunks for r in runs) / (time.perf_counter() - started)


async def _ttft(consume: Consumer, base: str, samples: int) -> Summary:
    overheads = []
    for _ in range(samples):
        run = await consume(base, 5, int(TTFT_S * 1000))
        overheads.append(run.first - run.started - TTFT_S)
    return Summary.of(overheads)


async def run(ctx: Context, result: GroupResult) -> None:
    stack = ctx.stack()
    assert stack.stack.fake is not None
    fake_pid = stack.stack.fake.pid
    base = stack.fake_url
    chunks = 2000
    reps = ctx.size(5, 2)
    streams, concurrent_chunks = ctx.size(16, 8), ctx.size(1000, 500)
    ttft_samples = ctx.size(30, 10)

    table = result.table(
        f"One stream of {chunks:,} content chunks, no delay, consumed in one process "
        f"(median of {reps})",
        [
            "consumer",
            "wall µs/chunk",
            "chunks/s",
            "consumer CPU µs/chunk",
            "fake provider CPU µs/chunk",
            "time to first content",
            "chunks/s vs httpx",
        ],
    )
    conc = result.table(
        f"{streams} concurrent streams of {concurrent_chunks:,} chunks in one process",
        ["consumer", "aggregate chunks/s", "vs one stream"],
    )
    ttft = result.table(
        f"TTFT overhead: first content time minus the scripted {TTFT_S * 1000:.0f} ms "
        f"({ttft_samples} sequential calls, 5 chunks each)",
        ["consumer", "p50", "p99", "max"],
    )
    redis = Redis.from_url(stack.redis_url, socket_timeout=30)
    async with (
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client,
        redis,
    ):
        consumers = {
            "litellm": litellm_consumer(),
            "httpx": httpx_consumer(client),
            "httpx + XADD": httpx_xadd_consumer(client, redis),
        }
        costs: dict[str, StreamCost] = {}
        for name, consume in consumers.items():
            costs[name] = cost = await _single(consume, base, fake_pid, chunks, reps)
            ctx.put(f"baseline.{key(name)}.wall_per_chunk", cost.wall_per_chunk)
            ctx.put(f"baseline.{key(name)}.rate", cost.rate)
            ctx.put(f"baseline.{key(name)}.cpu_per_chunk", cost.cpu_per_chunk)
            ctx.put(f"baseline.{key(name)}.provider_cpu_per_chunk", cost.provider_cpu_per_chunk)
            ctx.put(f"baseline.{key(name)}.burst_first_content", cost.first_content)
        for name, cost in costs.items():
            table.add(
                name,
                us(cost.wall_per_chunk),
                rate(cost.rate),
                us(cost.cpu_per_chunk),
                us(cost.provider_cpu_per_chunk),
                ms(cost.first_content),
                times(cost.rate / costs["httpx"].rate),
            )
        for name, consume in consumers.items():
            aggregate = await _concurrent(consume, base, streams, concurrent_chunks)
            ctx.put(f"baseline.{key(name)}.concurrent_rate", aggregate)
            conc.add(name, rate(aggregate), times(aggregate / costs[name].rate))
        for name, consume in consumers.items():
            s = await _ttft(consume, base, ttft_samples)
            ctx.put(f"baseline.{key(name)}.ttft_p50", s.p50)
            ctx.put(f"baseline.{key(name)}.ttft_p99", s.p99)
            ttft.add(name, ms(s.p50), ms(s.p99), ms(s.max))
    table.notes.append(
        "All consumers read the same bytes from the same fake provider process; the provider "
        "and the consumer share the machine's two cores, so wall time per chunk is bounded by "
        "whichever of the two is slower. litellm's per-chunk cost is mostly the OpenAI SDK "
        "building pydantic objects plus litellm's chunk wrapper "
        f"({num(costs['litellm'].cpu_per_chunk / costs['httpx'].cpu_per_chunk)}x the CPU of "
        "httpx + json.loads here)."
    )
