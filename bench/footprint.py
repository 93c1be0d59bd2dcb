"""Memory: Redis bytes kept per finished job, and the API's RSS with many open SSE streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time

import httpx

from . import procstat, sse
from .context import Context
from .driver import Driver
from .results import GroupResult, kib, ms, num, times
from .stacks import BenchStack

_ids = itertools.count()
TOKENS = 1000


async def redis_per_job(ctx: Context, result: GroupResult) -> None:
    """MEMORY USAGE of a finished 1,000-token job's two keys, next to plainer layouts."""
    stack = ctx.stack()
    driver = Driver(stack)
    reps = 3
    try:
        used, entries = [], []
        for k in range(reps):
            sub = await driver.submit(f"mem-{next(_ids)}-{k} [fake chunks={TOKENS}]")
            log = sse.StreamLog(sub.job_id, keep_ids=False)
            await driver.follow(sub.job_id, log, within=120)
            job_key, events_key = driver.keys.job(sub.job_id), driver.keys.events(sub.job_id)
            hash_bytes = await driver.redis.memory_usage(job_key, samples=0) or 0
            stream_bytes = await driver.redis.memory_usage(events_key, samples=0) or 0
            used.append((hash_bytes, stream_bytes))
            entries.append(await driver.redis.xlen(events_key))
            content = "".join(await _content(driver, events_key))
        # the same output kept more plainly, for scale
        bare = "bench:mem:bare"
        async with driver.redis.pipeline(transaction=False) as pipe:
            for word in content.split(" "):
                pipe.xadd(bare, {"t": word})
            await pipe.execute()
        bare_bytes = await driver.redis.memory_usage(bare, samples=0) or 0
        await driver.redis.set("bench:mem:text", content)
        text_bytes = await driver.redis.memory_usage("bench:mem:text", samples=0) or 0
        await driver.redis.delete(bare, "bench:mem:text")
    finally:
        await driver.aclose()
    hash_b = statistics.median(h for h, _ in used)
    stream_b = statistics.median(s for _, s in used)
    total = hash_b + stream_b
    ctx.put("mem.job_bytes", total)
    table = result.table(
        f"Redis memory per finished {TOKENS:,}-token job (MEMORY USAGE … SAMPLES 0, median of "
        f"{reps})",
        ["what", "bytes", "per token", "vs bare stream"],
    )
    table.add(
        f"job stream ({int(statistics.median(entries)):,} entries)",
        kib(stream_b),
        num(stream_b / TOKENS, 1) + " B",
        times(stream_b / bare_bytes),
    )
    table.add(
        "job hash (request, output, usage, …)", kib(hash_b), num(hash_b / TOKENS, 1) + " B", ""
    )
    table.add(
        "**job total (both keys)**",
        kib(total),
        num(total / TOKENS, 1) + " B",
        times(total / bare_bytes),
    )
    table.add(
        "bare stream: one entry per token, one field",
        kib(bare_bytes),
        num(bare_bytes / TOKENS, 1) + " B",
        times(1.0),
    )
    table.add(
        f"the output text as one string ({len(content):,} characters)",
        kib(text_bytes),
        num(text_bytes / TOKENS, 1) + " B",
        times(text_bytes / bare_bytes),
    )
    table.notes.append(
        "The job hash keeps the request and the folded output, so the content is stored twice "
        "(stream and hash) until the keys expire (retention, 24 h by default)."
    )


async def _content(driver: Driver, key: str) -> list[str]:
    import json

    out = []
    for _, fields in await driver.redis.xrange(key, "-", "+"):
        if fields.get(b"t") == b"content.delta":
            out.append(json.loads(fields[b"d"])["text"])
    return out


class _Arrivals:
    """Counts streams that received their first event; ``all`` is set once every one has."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.all = asyncio.Event()

    def sink(self, log: sse.StreamLog) -> sse.Sink:
        def record(at: float, type_: str, event_id: str) -> None:
            if log.first_event_at is None:
                self.left -= 1
                if self.left == 0:
                    self.all.set()
            log(at, type_, event_id)

        return record


async def _probe(driver: Driver, ids: list[str]) -> str:
    """Submit one more job while the streams are open: its answer and latency."""
    started = time.monotonic()
    try:
        sub = await driver.submit("rss-probe [fake chunks=1]")
        ids.append(sub.job_id)
        return f"202 in {ms(time.monotonic() - started)}"
    except httpx.HTTPStatusError as exc:
        return f"{exc.response.status_code} in {ms(time.monotonic() - started)}"
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {ms(time.monotonic() - started)}"


async def api_rss(ctx: Context, result: GroupResult) -> None:
    """VmRSS of a fresh API process, idle and then with ``n`` open SSE streams."""
    n = ctx.size(1000, 200)
    stack = BenchStack()  # a fresh API: earlier scenarios grew the shared one's heap
    try:
        stack.set_workers(1)
        assert stack.stack.api is not None
        api_pid = stack.stack.api.pid
        driver = Driver(stack)
        tasks: list[asyncio.Task[None]] = []
        try:
            for k in range(5):  # warm the routes the streams use
                sub = await driver.submit(f"rss-warm-{k} [fake chunks=20]")
                await driver.follow(sub.job_id, sse.StreamLog(sub.job_id), within=60)
            await asyncio.sleep(1)
            idle_rss = procstat.status_kb(api_pid, "VmRSS") * 1024
            idle_fds = procstat.open_fds(api_pid)
            # jobs that stay open: 16 wait on the provider's 10-minute TTFT, the rest queued
            subs = await driver.submit_many(
                [f"rss-{k} [fake chunks=1 ttft_ms=600000]" for k in range(n)]
            )
            ids = [s.job_id for s in subs]
            logs = [sse.StreamLog(j, keep_ids=False) for j in ids]
            arrivals = _Arrivals(n)
            tasks = [
                asyncio.create_task(driver.follow(log.job_id, arrivals.sink(log), within=300))
                for log in logs
            ]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ctx.size(60, 30)):
                    await arrivals.all.wait()
            await asyncio.sleep(2)  # let the API settle before reading its memory
            opened = sum(log.first_event_at is not None for log in logs)
            failed = sum(t.done() and t.exception() is not None for t in tasks)
            rss = procstat.status_kb(api_pid, "VmRSS") * 1024
            hwm = procstat.status_kb(api_pid, "VmHWM") * 1024
            fds = procstat.open_fds(api_pid)
            clients = int((await driver.redis.info("clients"))["connected_clients"])
            probe = await _probe(driver, ids)
            cpu0 = procstat.cpu_seconds(api_pid)
            idle_window = ctx.size(10.0, 3.0)
            await asyncio.sleep(idle_window)
            idle_cpu = (procstat.cpu_seconds(api_pid) - cpu0) / idle_window
            cancels = await driver.cancel(ids, concurrency=64)
            settle = ctx.size(20.0, 10.0)
            await asyncio.wait(tasks, timeout=settle)
            closed = sum(1 for log in logs if log.terminal)
            api_log = (stack.workdir / "api.log").read_text(errors="replace")
            pool_errors = api_log.count("Too many connections")
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await driver.aclose()
    finally:
        stack.stop()
    ctx.put("mem.api_rss_idle", idle_rss)
    ctx.put("mem.api_rss_streams", rss)
    ctx.put("mem.api_rss_per_stream", (rss - idle_rss) / max(opened, 1))
    table = result.table(
        f"API process with {n:,} SSE streams open (fresh API, 1 worker)",
        ["measure", "idle (warmed up)", f"{n:,} streams requested", "ratio"],
    )
    table.add("streams that received their first event", "", f"{opened:,}", "")
    table.add("streams whose connection failed", "", f"{failed:,}", "")
    table.add("VmRSS", kib(idle_rss), kib(rss), times(rss / idle_rss))
    table.add("VmRSS growth per open stream", "", kib((rss - idle_rss) / max(opened, 1)), "")
    table.add("VmHWM (peak RSS)", "", kib(hwm), "")
    table.add("open file descriptors", str(idle_fds), str(fds), times(fds / idle_fds))
    table.add("Redis connected clients (all processes)", "", str(clients), "")
    table.add(
        f"API CPU while the streams idle ({idle_window:.0f} s)", "", f"{idle_cpu:.2f} cores", ""
    )
    table.add("POST /v1/jobs meanwhile", "", probe, "")
    table.add(
        "API log lines with 'Too many connections' (Redis pool exhausted)",
        "",
        f"{pool_errors:,}",
        "",
    )
    answers = ", ".join(
        f"{code or 'no answer'}: {count:,}" for code, count in sorted(cancels.items())
    )
    table.add("answers to POST /v1/jobs/{id}/cancel for every job", "", answers, "")
    table.add(
        f"streams ended by job.cancelled within {settle:.0f} s of the cancels",
        "",
        f"{closed:,}",
        "",
    )
    table.notes.append(
        "Each open stream holds its own blocked XREAD, so its own Redis connection from the "
        "API's pool (tokenspool.connections.connect: max_connections=512): streams beyond the "
        "pool's free connections cannot read. Idle streams re-issue XREAD every "
        "TOKENSPOOL_READ_BLOCK_MS (5 s) plus an EXISTS check, hence the idle CPU."
    )


async def run(ctx: Context, result: GroupResult) -> None:
    await redis_per_job(ctx, result)
    await api_rss(ctx, result)
