"""Throughput at saturation, what each chunk costs, and scaling with worker processes.

A batch of 2,000-chunk jobs with no delay between chunks, all submitted at once (at least 16
per worker, enough to last a few seconds), keeps every worker CPU-bound. The
rate is the batch's chunks divided by its makespan in Redis: from the first ``job.started``
entry to the last terminal entry (server time in the entry ids). A fixed window of XLEN growth
would understate it whenever the publisher holds events back (it buffers up to 1,024 events
per job), so a window sees CPU spent but not yet the events. CPU comes from
``/proc/<pid>/stat`` (utime + stime) and Redis work from ``INFO stats`` / ``INFO
commandstats``, both read just before the batch is submitted and just after its last job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
from dataclasses import dataclass, field

from tokenspool.settings import Settings

from . import procstat, sse
from .context import Context
from .driver import Driver, entry_time, redis_counters, top_commands
from .results import GroupResult, num, rate, times, us
from .stacks import BenchStack

CHUNKS = 2000
MAX_JOBS = int(Settings.model_fields["max_jobs"].default)  # a worker's default concurrency


def _jobs(rate: float, seconds: float, workers: int) -> int:
    """Jobs for a batch of about ``seconds`` at ``rate``: 16 to 128 per worker."""
    wanted = math.ceil(rate * seconds / CHUNKS) if math.isfinite(rate) else 0
    per_worker = min(128, max(16, math.ceil(wanted / workers)))
    return per_worker * workers


_ids = itertools.count()


@dataclass
class Batch:
    """What one batch of saturating jobs cost and how fast it went."""

    workers: int
    jobs: int
    consumers: bool
    label: str = ""  # how the workers were configured, when not by default
    chunks: int = 0  # content chunks of the attempts that completed the jobs
    appended: int = 0  # content chunks appended, superseded attempts included
    restarts: int = 0  # attempts after the first (lease lost, taken over, re-run)
    makespan: float = 0.0  # first job.started → last terminal entry (Redis time)
    received: int = 0  # content.delta events received by the SSE consumers
    delivery_span: float = 0.0  # first job.started → last content.delta at the consumers
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process
    redis: dict[str, float] = field(default_factory=dict)  # counter deltas
    completed: int = 0

    @property
    def rate(self) -> float:
        return self.chunks / self.makespan if self.makespan else math.nan

    @property
    def appended_rate(self) -> float:
        return self.appended / self.makespan if self.makespan else math.nan

    @property
    def delivered_rate(self) -> float:
        return self.received / self.delivery_span if self.delivery_span else math.nan

    def worker_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if k.startswith("worker"))


async def _makespan(driver: Driver, ids: list[str]) -> tuple[float, int]:
    """Seconds from the first job.started to the last entry, and content entries, in Redis."""
    first, last, content = math.inf, 0.0, 0
    attempts = await driver.hash_floats(ids, "attempt")
    for job_id, attempt in zip(ids, attempts, strict=True):
        key = driver.keys.events(job_id)
        head = await driver.redis.xrange(key, "-", "+", count=2)  # job.queued, job.started
        tail = await driver.redis.xrevrange(key, "+", "-", count=1)
        first = min(first, entry_time(head[-1][0].decode()))
        last = max(last, entry_time(tail[0][0].decode()))
        # all but job.queued, job.started, usage and the terminal event, and the
        # job.retrying + job.started pair of every restarted attempt
        content += await driver.redis.xlen(key) - 4 - 2 * (int(attempt or 1) - 1)
    return last - first, content


async def _warm(driver: Driver, workers: int) -> None:
    # a worker's first provider call is slow (litellm imports the OpenAI SDK's resources, about
    # a second); short overlapping jobs most likely reach every worker (arq decides which)
    run = next(_ids)
    subs = await driver.submit_many(
        [f"tp-warm-{run}-{k} [fake chunks=5 ttft_ms=300]" for k in range(8 * workers)]
    )
    await driver.wait_finished([s.job_id for s in subs], within=120)


async def batch(
    stack: BenchStack,
    driver: Driver,
    workers: int,
    jobs_per_worker: int,
    consumers: bool,
    env: dict[str, str] | None = None,
) -> Batch:
    stack.set_workers(workers, env)
    await _warm(driver, workers)
    run = next(_ids)
    jobs = jobs_per_worker * workers
    pids = {**stack.pids(), "client": os.getpid()}
    pids.pop("clocked provider")
    meter = procstat.CpuMeter(pids)
    label = ", ".join(f"{k}={v}" for k, v in (env or {}).items())
    result = Batch(workers, jobs, consumers, label)
    before = await redis_counters(driver)
    meter.start()
    subs = await driver.submit_many([f"tp-{run}-{k} [fake chunks={CHUNKS}]" for k in range(jobs)])
    ids = [s.job_id for s in subs]
    logs = [sse.StreamLog(j, keep_ids=False) for j in ids]
    tasks = (
        [
            asyncio.create_task(driver.follow(j, log, within=600))
            for j, log in zip(ids, logs, strict=True)
        ]
        if consumers
        else []
    )
    try:
        await driver.wait_finished(ids, within=600)
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        result.cpu = meter.stop()
        after = await redis_counters(driver)
        result.redis = {k: after[k] - before.get(k, 0.0) for k in after}
        result.completed = (await driver.statuses(ids)).count("completed")
        result.makespan, result.appended = await _makespan(driver, ids)
        result.chunks = result.completed * CHUNKS
        attempts = await driver.hash_floats(ids, "attempt")
        result.restarts = int(sum(a - 1 for a in attempts if a))
        if consumers:
            starts = [log.started_at for log in logs if log.started_at]
            ends = [log.content_at[-1] for log in logs if log.content_at]
            result.received = sum(len(log.content_at) for log in logs)
            result.delivery_span = max(ends) - min(starts) if starts and ends else 0.0
    finally:
        await driver.drain(ids, within=120)
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    return result


def _cost_tables(ctx: Context, result: GroupResult, b: Batch) -> None:
    chunks = b.chunks
    cpu = result.table(
        f"CPU per chunk: {b.jobs} jobs x {CHUNKS:,} chunks on 1 worker, one SSE consumer each "
        f"({chunks:,} chunks)",
        ["process", "CPU seconds", "CPU µs per chunk", "vs litellm direct consumer"],
    )
    base = ctx.get("baseline.litellm.cpu_per_chunk")
    for name, seconds in sorted(b.cpu.items()):
        per = seconds / chunks
        worker = name.startswith("worker")
        cpu.add(name, num(seconds), us(per), times(per / base) if base and worker else "")
        ctx.put(f"tp.cpu_per_chunk.{'worker' if worker else name.replace(' ', '_')}", per)
    cpu.notes.append(
        "CPU from just before the batch was submitted to just after its last job ended, "
        "divided by the content chunks appended; client = the bench process (SSE consumers). "
        "litellm direct consumer = the baselines' CPU per chunk of litellm alone."
    )

    r = b.redis
    red = result.table(
        "Redis work per chunk (same batch; all clients: worker, API, arq, bench)",
        ["counter", "total", "per chunk"],
    )
    writes = r.get("evalsha", 0.0) + r.get("eval", 0.0)
    rows = [
        (
            "request reads (round trips, INFO total_reads_processed)",
            r.get("total_reads_processed", math.nan),
        ),
        ("EVALSHA/EVAL calls (worker writes, starts, leases)", writes),
        ("XREAD calls (API tails)", r.get("xread", 0.0)),
        ("XADD (inside scripts)", r.get("xadd", 0.0)),
        ("commands processed (incl. inside scripts)", r.get("total_commands_processed", math.nan)),
        ("bytes in (total_net_input_bytes)", r.get("total_net_input_bytes", math.nan)),
        ("bytes out (total_net_output_bytes)", r.get("total_net_output_bytes", math.nan)),
    ]
    for label, total in rows:
        red.add(label, num(total, 0), num(total / chunks, 3))
    red.notes.append("Commands per chunk: " + top_commands(r, chunks) + ".")
    ctx.put("tp.round_trips_per_chunk", r.get("total_reads_processed", math.nan) / chunks)
    ctx.put("tp.evalsha_per_chunk", writes / chunks)
    ctx.put("tp.xread_per_chunk", r.get("xread", math.nan) / chunks)
    ctx.put("tp.bytes_in_per_chunk", r.get("total_net_input_bytes", math.nan) / chunks)
    ctx.put("tp.bytes_out_per_chunk", r.get("total_net_output_bytes", math.nan) / chunks)


async def run(ctx: Context, result: GroupResult) -> None:
    stack = ctx.stack()
    # batches sized to last about this long at the rate the first one shows (a worker may do
    # 2,000 or 40,000 chunks/s)
    seconds = ctx.size(5.0, 1.5)
    counts = ctx.size([1, 2, 4], [1, 2])
    driver = Driver(stack)
    batches: list[Batch] = []
    slow: Batch | None = None
    try:
        consumed = await batch(stack, driver, 1, 16, True)
        if consumed.makespan and consumed.makespan < seconds / 2:
            consumed = await batch(stack, driver, 1, _jobs(consumed.rate, seconds, 1), True)
        for workers in counts:
            jobs = _jobs(consumed.rate, seconds, workers) // workers
            batches.append(await batch(stack, driver, workers, jobs, False))
        if "fast_path" in Settings.model_fields:  # the worker's litellm path, for comparison
            slow = await batch(
                stack, driver, 1, ctx.size(8, 4), False, {"TOKENSPOOL_FAST_PATH": "false"}
            )
    finally:
        await driver.aclose()
        stack.set_workers(1)

    naive = ctx.get("baseline.litellm.rate")
    naive_concurrent = ctx.get("baseline.litellm.concurrent_rate")
    one = batches[0].rate
    limit = max(
        (
            v
            for v in (
                ctx.get("baseline.httpx_xadd.rate"),
                ctx.get("baseline.httpx_xadd.concurrent_rate"),
            )
            if v
        ),
        default=None,
    )
    table = result.table(
        f"Chunks/s at saturation ({CHUNKS:,}-chunk jobs, no delay, all submitted at once, "
        f"default max_jobs: {MAX_JOBS} per worker)",
        [
            "workers",
            "jobs",
            "SSE consumers",
            "chunks/s (Redis makespan)",
            "incl. restarted attempts",
            "restarted attempts",
            "content.delta/s received",
            "per worker",
            "vs 1 worker",
            "vs litellm direct, 1 stream",
            "vs litellm direct, concurrent",
            "vs httpx + XADD limit",
            "worker cores busy",
            "fake provider cores busy",
        ],
    )
    for b in [consumed, *batches, *([slow] if slow else [])]:
        wall = b.makespan or math.nan
        table.add(
            f"{b.workers}" + (f" ({b.label})" if b.label else ""),
            f"{b.completed}/{b.jobs}",
            "one per job" if b.consumers else "none",
            rate(b.rate),
            rate(b.appended_rate),
            b.restarts,
            rate(b.delivered_rate) if b.consumers else "",
            rate(b.rate / b.workers),
            "" if b.consumers else times(b.rate / one),
            times(b.rate / naive) if naive else "n/a",
            times(b.rate / naive_concurrent) if naive_concurrent else "n/a",
            times(b.rate / limit) if limit else "n/a",
            num(b.worker_cpu() / wall),
            num(b.cpu.get("fake provider", math.nan) / wall),
        )
    table.notes.append(
        "jobs = completed/submitted; chunks/s counts the chunks of the attempts that "
        "completed the jobs. A restarted attempt means a worker did not renew a job's lease "
        "in time (TOKENSPOOL_LEASE_SECONDS), so a worker took the job over and ran it again "
        "from the start: that work is in 'incl. restarted attempts' only. "
        "httpx + XADD limit = the better of the baselines' single-stream and concurrent "
        "rates for plain httpx + json.loads + pipelined XADD, in one process. "
        "litellm direct = the baselines' single stream and "
        "concurrent streams consumed by litellm in one process: the provider calls a worker "
        "makes, minus everything tokenspool adds. Cores busy = CPU seconds over the makespan "
        "(slightly overstated: CPU is counted from submission to the end). On 2 cores, more "
        "workers compete with Redis, the API and the fake provider for the same CPUs."
    )
    ctx.put("tp.one_worker_rate", consumed.rate)
    ctx.put("tp.one_worker_delivered_rate", consumed.delivered_rate)
    ctx.put("tp.vs_litellm", (consumed.rate / naive) if naive else None)
    # the plain-httpx + XADD limit: the better of its single-stream and concurrent rates
    ctx.put("tp.vs_httpx_xadd", (consumed.rate / limit) if limit else None)
    for b in batches:
        ctx.put(f"tp.workers.{b.workers}.rate", b.rate)
    ctx.series["scaling"] = [(b.workers, b.rate) for b in batches]
    if slow is not None:
        ctx.put("tp.litellm_path_rate", slow.rate)
    ctx.series["cpu"] = {k: v / consumed.chunks for k, v in consumed.cpu.items()}
    _cost_tables(ctx, result, consumed)
