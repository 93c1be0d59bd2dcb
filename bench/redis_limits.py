"""The limit: what the stack's own Redis does for one Python client, with no tokenspool logic.

Raw XADD awaited one at a time and pipelined in batches, the fenced WRITE script tokenspool
appends with (``JobStore.write``), XREAD COUNT 100 drain rate, and the wake-up latency of a
blocked XREAD after an XADD. Entries look like tokenspool's ``content.delta`` entries. The
client is redis-py's asyncio client with hiredis, as in the core.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from tokenspool.events import from_entry
from tokenspool.settings import Settings
from tokenspool.store import JobStore

from .context import Context
from .results import GroupResult, ms, rate, times, us
from .stats import Summary

ENTRY = {"t": "content.delta", "a": "1", "d": '{"text":"Durable "}'}
PREFIX = "bench:limits"


async def xadd_awaited(redis: Redis, key: str, n: int) -> float:
    """Seconds per entry, one XADD per round trip."""
    started = time.perf_counter()
    for _ in range(n):
        await redis.xadd(key, ENTRY, maxlen=100_000)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / n


async def xadd_pipelined(redis: Redis, key: str, n: int, batch: int) -> float:
    started = time.perf_counter()
    for _ in range(n // batch):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(batch):
                pipe.xadd(key, ENTRY, maxlen=100_000)  # type: ignore[arg-type]
            await pipe.execute()
    return (time.perf_counter() - started) / (n // batch * batch)


async def fenced_write(store: JobStore, redis: Redis, n: int, batch: int) -> float:
    """Seconds per entry through tokenspool's WRITE script (fenced, sequenced batches)."""
    job_id = f"bench-limits-{batch}"
    await redis.hset(  # type: ignore[misc]
        store.keys.job(job_id), mapping={"status": "running", "attempt": 1, "wseq": 0}
    )
    events = [(ENTRY["t"], ENTRY["d"])] * batch
    started = time.perf_counter()
    for seq in range(1, n // batch + 1):
        await store.write(job_id, 1, events, seq)
    elapsed = time.perf_counter() - started
    await redis.delete(store.keys.job(job_id), store.keys.events(job_id))
    return elapsed / (n // batch * batch)


async def xread_drain(redis: Redis, key: str, parse: bool) -> float:
    """Seconds per entry reading ``key`` from the start with XREAD COUNT 100."""
    last = "0"
    n = 0
    started = time.perf_counter()
    while True:
        response = await redis.xread({key: last}, count=100)
        if not response:
            break
        entries = response[0][1]
        for entry_id, fields in entries:
            if parse:  # what the API does per event before SSE framing
                from_entry("job", entry_id, fields).model_dump_json()
        n += len(entries)
        last = entries[-1][0]
    return (time.perf_counter() - started) / n


async def wakeup(writer: Redis, reader: Redis, key: str, samples: int) -> Summary:
    """XADD → a blocked XREAD returns: seconds, measured in one event loop (as the API is)."""
    sent: list[float] = []
    got: list[float] = []
    ready = asyncio.Event()

    async def read() -> None:
        # from a concrete id, never "$": an XADD that lands before the first XREAD blocks
        # would be missed, and the writer would wait for a wake-up that never comes
        last = "0-0"  # the key was just deleted
        while len(got) < samples:
            ready.set()
            response = await reader.xread({key: last}, count=100, block=5000)
            if response:
                got.append(time.perf_counter())
                last = response[0][1][-1][0]

    task = asyncio.create_task(read())
    for _ in range(samples):
        await ready.wait()
        ready.clear()
        await asyncio.sleep(0.002)  # let the reader block
        sent.append(time.perf_counter())
        await writer.xadd(key, ENTRY)  # type: ignore[arg-type]
    await asyncio.wait_for(task, 10)
    return Summary.of(g - s for s, g in zip(sent, got, strict=True))


async def run(ctx: Context, result: GroupResult) -> None:
    stack = ctx.stack()
    n = ctx.size(20_000, 4_000)
    samples = ctx.size(1_000, 200)
    redis = Redis.from_url(stack.redis_url)
    reader = Redis.from_url(stack.redis_url, socket_timeout=10)
    store = JobStore(redis, Settings(redis_url=stack.redis_url))
    key = f"{PREFIX}:stream"
    try:
        await redis.delete(key)
        await xadd_awaited(redis, key, 200)  # warm-up
        per: dict[str, float] = {}
        per["XADD, awaited one at a time"] = await xadd_awaited(redis, key, n)
        per["XADD, pipelined x10"] = await xadd_pipelined(redis, key, n, 10)
        per["XADD, pipelined x100"] = await xadd_pipelined(redis, key, n, 100)
        per["tokenspool WRITE script, 1 event per call"] = await fenced_write(store, redis, n, 1)
        per["tokenspool WRITE script, 100 events per call"] = await fenced_write(
            store, redis, n, 100
        )
        await redis.delete(key)
        await xadd_pipelined(redis, key, n, 100)
        per["XREAD COUNT 100 drain"] = await xread_drain(redis, key, parse=False)
        per[
            "XREAD COUNT 100 + tokenspool event parse and JSON (API per-event work)"
        ] = await xread_drain(redis, key, parse=True)
        await redis.delete(key)
        wake = await wakeup(redis, reader, key, samples)
    finally:
        await redis.delete(key)
        await redis.aclose()
        await reader.aclose()

    base = per["XADD, awaited one at a time"]
    table = result.table(
        f"Raw Redis rates, one asyncio client, {n:,} entries each",
        ["operation", "µs/entry", "entries/s", "vs awaited XADD"],
    )
    for name, seconds in per.items():
        table.add(name, us(seconds), rate(1 / seconds), times(base / seconds))
    keys = {
        "XADD, awaited one at a time": "xadd",
        "XADD, pipelined x10": "xadd_p10",
        "XADD, pipelined x100": "xadd_p100",
        "tokenspool WRITE script, 1 event per call": "write1",
        "tokenspool WRITE script, 100 events per call": "write100",
        "XREAD COUNT 100 drain": "xread",
    }
    for name, short in keys.items():
        ctx.put(f"redis.{short}.rate", 1 / per[name])
    ctx.put(
        "redis.xread_parse.rate",
        1 / per["XREAD COUNT 100 + tokenspool event parse and JSON (API per-event work)"],
    )
    wake_table = result.table(
        f"XADD → blocked XREAD wake-up ({samples:,} samples)", ["p50", "p90", "p99", "max"]
    )
    wake_table.add(ms(wake.p50, 3), ms(wake.p90, 3), ms(wake.p99, 3), ms(wake.max, 3))
    ctx.put("redis.wakeup_p50", wake.p50)
    ctx.put("redis.wakeup_p99", wake.p99)
    wake_table.notes.append(
        "Writer and reader are two connections in one asyncio loop, as in the API: the time "
        "from just before the XADD is sent to the blocked XREAD's reply being handled."
    )
