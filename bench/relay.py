"""Per-chunk relay latency vs the number of concurrent streams, at 20 chunks/s per stream, and
one worker holding 2,000 slow streams at 5 chunks/s.

Relay latency of content chunk i = the client's receive time of its ``content.delta`` minus the
time the provider handed chunk i to its HTTP server. The provider is the bench's clocked twin of
the fake provider (``bench/clocked_provider.py``): same bytes, sent on an absolute schedule,
each send time recorded, so no sleep drift enters the figure. All processes read the same
clock (``time.time()``). The Redis entry id splits the path in two legs: provider → Redis
(worker) and Redis → client (API and SSE), each with ±1 ms from the id's millisecond steps.

How each stream is queued and read, and by what client: ``bench/relay_targets.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time

from . import procstat, sse
from .context import Context
from .driver import Driver, entry_time, redis_counters, top_commands
from .looplag import LoopLag
from .relay_level import CHUNK_RATE, Level, p50_p99
from .relay_targets import Target, minimal_target, openai_target, tokenspool_target
from .results import GroupResult, ms, num, times
from .stacks import CLOCKED_MODEL
from .stats import Summary

SLOW_RATE = 5  # chunks per second per stream, slow streams
STEADY_CORES = (
    "all streams running: CPU cores busy, machine; worker / API / Redis / provider / client"
)
MAX_JOBS = 2500  # per worker: every stream of a level runs at once
_ids = itertools.count()


async def _stream(
    target: Target, prompt: str, gate: asyncio.Semaphore, within: float
) -> tuple[str, sse.StreamLog | None, str]:
    log = sse.StreamLog("")
    try:
        await target.follow(prompt, log, within, gate)
        return prompt, log, ""
    except Exception as exc:  # one failed stream is a data point, not the end of the run
        return prompt, None, f"{type(exc).__name__}: {exc}"


async def level(
    ctx: Context,
    driver: Driver,
    streams: int,
    chunks: int,
    rate: int = CHUNK_RATE,
    target: Target | None = None,
) -> Level:
    """Relay latency with ``streams`` streams of ``chunks`` at ``rate``, through ``target``
    (default: tokenspool)."""
    target = target or tokenspool_target(ctx, driver)
    run = next(_ids)
    delay_ms = 1000 // rate
    prompts = [
        f"relay-{run}-{streams}-{k} [fake chunks={chunks} delay_ms={delay_ms}]"
        for k in range(streams)
    ]
    pids = dict(target.pids)
    pids["client"] = os.getpid()
    gate = asyncio.Semaphore(32)
    before = await redis_counters(driver)
    started = time.monotonic()
    rss = procstat.PeakRss({k: v for k, v in pids.items() if k.startswith("worker") or k == "api"})
    timeline = procstat.CpuTimeline(pids)
    async with LoopLag() as lag, rss, timeline:
        outcomes = await asyncio.gather(
            *(_stream(target, p, gate, within=chunks / rate + 120) for p in prompts)
        )
    elapsed = time.monotonic() - started
    used = timeline.used()
    after = await redis_counters(driver)
    sends = await driver.clocked_sends()

    logs = [(sends.get(p, []), log) for p, log, _ in outcomes if log is not None]
    # the steady window: every stream has sent its first content chunk and none its last
    spans = [(sent[1], sent[-2]) for sent, _ in logs if len(sent) > 2]
    lo, hi = (max(a for a, _ in spans), min(b for _, b in spans)) if spans else (0.0, 0.0)
    relay, steady, to_redis, to_client = [], [], [], []
    for sent, log in logs:
        for i, (at, event_id) in enumerate(zip(log.content_at, log.content_ids, strict=True)):
            if i + 1 >= len(sent):
                break
            t_sent = sent[i + 1]  # chunk 0 is the role chunk; content chunk i is chunk i + 1
            relay.append(at - t_sent)
            if lo <= t_sent <= hi:
                steady.append(at - t_sent)
            appended = entry_time(event_id)
            to_redis.append(appended - t_sent)
            to_client.append(at - appended)
    return Level(
        streams=streams,
        relay=Summary.of(relay),
        steady=Summary.of(steady),
        steady_seconds=max(0.0, hi - lo),
        to_redis=Summary.of(to_redis),
        to_client=Summary.of(to_client),
        lag=lag.summary(),
        cores={k: v / elapsed for k, v in used.items()},
        steady_cores=timeline.cores(lo, hi) if hi > lo else {},
        elapsed=elapsed,
        chunks=sum(len(log.content_at) for _, log in logs),
        redis={k: after[k] - before.get(k, 0.0) for k in after},
        retries=sum(log.retries for _, log in logs),
        rate=rate,
        rss_kb=rss.peak_kb,
        errors=[e for _, _, e in outcomes if e],
    )


async def run(ctx: Context, result: GroupResult) -> None:
    stack = ctx.stack()
    # one worker that may run every stream at once (the default max_jobs is 256)
    stack.set_workers(1, {"TOKENSPOOL_MAX_JOBS": str(MAX_JOBS)})
    counts = ctx.size([10, 50, 100, 200, 300, 400, 500], [10, 50])
    chunks = ctx.size(160, 60)
    slow_streams, slow_chunks = ctx.size(2000, 200), ctx.size(200, 30)
    driver = Driver(stack)
    levels: list[Level] = []
    try:
        for k in range(3):  # warm-up
            sub = await driver.submit(f"relay-warm-{next(_ids)}-{k} [fake chunks=5]", CLOCKED_MODEL)
            await driver.follow(sub.job_id, sse.StreamLog(sub.job_id), within=60)
        for n in counts:
            levels.append(await level(ctx, driver, n, chunks))
            await asyncio.sleep(1)
        openai = await level(ctx, driver, counts[-1], chunks, target=openai_target(ctx, driver))
        await asyncio.sleep(1)
        slow = await level(ctx, driver, slow_streams, slow_chunks, SLOW_RATE)
        with stack.minimal_relay() as (minimal_worker, minimal_api, port):
            floor = minimal_target(ctx, driver, minimal_worker.pid, minimal_api.pid, port)
            await asyncio.sleep(1)
            floors = [await level(ctx, driver, counts[-1], chunks, target=floor)]
            await asyncio.sleep(1)
            floors.append(await level(ctx, driver, slow_streams, slow_chunks, SLOW_RATE, floor))
    finally:
        await driver.aclose()
        stack.set_workers(1)

    table = result.table(
        f"Relay latency (provider send → client receive) at {CHUNK_RATE} chunks/s per stream, "
        f"{chunks} chunks per stream, 1 worker (max_jobs {MAX_JOBS})",
        [
            "streams",
            "chunks/s offered",
            "p50",
            "p90",
            "p99",
            "max",
            "all streams running: p50 / p99 (window)",
            "provider → Redis p50 / p99",
            "Redis → client p50 / p99",
        ],
    )
    costs = result.table(
        "What each level cost (same runs)",
        [
            "streams",
            "CPU cores: worker / API / Redis / client",
            STEADY_CORES,
            "CPU µs per chunk: worker / API",
            "Redis round trips per chunk",
            "WRITE scripts per chunk",
            "XREADs per chunk",
            "restarted attempts (job.retrying)",
            "client loop lag p99",
            "failed streams",
        ],
    )
    for lv in levels:
        r, st, a, b = lv.relay, lv.steady, lv.to_redis, lv.to_client
        window = (
            f"{p50_p99(st)} ({lv.steady_seconds:.1f} s)"
            if st.n
            else "none: the ramp outlasted a stream"
        )
        table.add(
            lv.streams,
            num(lv.streams * CHUNK_RATE, 0),
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.max),
            window,
            p50_p99(a),
            p50_p99(b),
        )
        costs.add(
            lv.streams,
            lv.cores_cell(),
            lv.steady_cores_cell(),
            lv.cpu_cell(),
            num(lv.per_chunk("total_reads_processed")),
            num(
                (lv.redis.get("evalsha", 0.0) + lv.redis.get("eval", 0.0)) / lv.chunks
                if lv.chunks
                else math.nan
            ),
            num(lv.per_chunk("xread")),
            lv.retries,
            ms(lv.lag.p99),
            lv.failed_cell(),
        )
        ctx.put(f"relay.{lv.streams}.p50", r.p50)
        ctx.put(f"relay.{lv.streams}.p99", r.p99)
        ctx.put(f"relay.{lv.streams}.max", r.max)
        ctx.put(f"relay.{lv.streams}.steady_p50", st.p50)
        ctx.put(f"relay.{lv.streams}.steady_p99", st.p99)
        ctx.put(f"relay.{lv.streams}.steady_machine_cores", lv.steady_cores.get("machine"))
        ctx.put(f"relay.{lv.streams}.round_trips_per_chunk", lv.per_chunk("total_reads_processed"))
        ctx.put(f"relay.{lv.streams}.worker_cpu_per_chunk", lv.cpu_per_chunk("worker"))
        costs.notes.extend(lv.error_notes(f"{lv.streams} streams, "))
    costs.notes.append(
        "Commands per chunk (script-internal calls included; the worker's WRITE script makes "
        "an HMGET, an HSET and a PUBLISH per call and an XADD per event): "
        + "; ".join(
            f"{lv.streams} streams: {top_commands(lv.redis, lv.chunks, 6)}" for lv in levels
        )
        + "."
    )
    ctx.series["relay"] = [(lv.streams, lv.relay.p50, lv.relay.p99, lv.relay.max) for lv in levels]
    table.notes.append(
        "p50 … max cover every content chunk of every stream, including the ramp while jobs "
        "were being submitted and started; the window column only chunks sent while all "
        "streams were running (no job starting or ending). Provider → Redis is the worker's "
        "share (reading the provider's stream, event mapping, the fenced write); Redis → "
        "client is the API's (the pub/sub notification that carries the entries, the "
        "hand-over to each consumer, the SSE write) plus the client's read. Client loop "
        "lag is how late the bench's own event loop ran a 10 ms timer meanwhile: the error "
        "bound of its receive timestamps. CPU cores busy are averages over the level "
        "(1.00 = one core), from /proc/<pid>/stat; the window's are over the same window as "
        "the latency column, from samples every 0.25 s, with the whole machine's busy time "
        "from /proc/stat: when it nears the number of cores, every hop queues for a CPU."
    )

    _openai_table(result, levels[-1], openai)
    _slow_table(ctx, result, slow)
    _floor_table(ctx, result, [levels[-1], slow], floors)


def _openai_table(result: GroupResult, jobs: Level, openai: Level) -> None:
    """The heaviest level again, through the OpenAI-compatible surface."""
    table = result.table(
        f"The OpenAI-compatible surface: {openai.streams} streams at {openai.rate} chunks/s "
        "again, each a POST /v1/chat/completions with stream: true, right after the level above",
        [
            "surface",
            "p50",
            "p99",
            "all streams running: p50 / p99",
            "provider → Redis p50 / p99",
            "Redis → client p50 / p99",
            "CPU µs per chunk: worker / API",
            "failed streams",
        ],
    )
    for name, lv in (("/v1/jobs (the level above)", jobs), ("/v1/chat/completions", openai)):
        table.add(
            name,
            ms(lv.relay.p50),
            ms(lv.relay.p99),
            p50_p99(lv.steady) if lv.steady.n else "none",
            p50_p99(lv.to_redis),
            p50_p99(lv.to_client),
            lv.cpu_cell(),
            lv.failed_cell(),
        )
    table.notes.extend(openai.error_notes())
    table.notes.append(
        "Same stack, provider and client; each content chunk is a chat.completion.chunk made "
        "by the API (tokenspool/openai_format.py), its SSE id the stream entry id."
    )


def _slow_table(ctx: Context, result: GroupResult, lv: Level) -> None:
    """One worker holding many slow streams: relay latency and the worker's peak memory."""
    worker_kb = sum(v for k, v in lv.rss_kb.items() if k.startswith("worker"))
    table = result.table(
        f"One worker holding {lv.streams:,} slow streams at {lv.rate} chunks/s each "
        f"({lv.chunks:,} content chunks received, max_jobs {MAX_JOBS})",
        [
            "p50",
            "p99",
            "max",
            "all streams running: p50 / p99 (window)",
            "worker peak RSS",
            "API peak RSS",
            "CPU cores: worker / API / Redis / client",
            STEADY_CORES,
            "Redis round trips per chunk",
            "restarted attempts",
            "failed streams",
        ],
    )
    st = lv.steady
    table.add(
        ms(lv.relay.p50),
        ms(lv.relay.p99),
        ms(lv.relay.max),
        f"{p50_p99(st)} ({lv.steady_seconds:.1f} s)" if st.n else "none",
        f"{worker_kb / 1024:,.0f} MiB",
        f"{lv.rss_kb.get('api', 0) / 1024:,.0f} MiB",
        lv.cores_cell(),
        lv.steady_cores_cell(),
        num(lv.per_chunk("total_reads_processed")),
        lv.retries,
        lv.failed_cell(),
    )
    table.notes.extend(lv.error_notes())
    table.notes.append(
        "Relay latency as above (provider send → client receive, every content chunk). Peak "
        "RSS: the highest VmRSS of the process, sampled every 0.25 s during the run. Every "
        "stream has its own SSE consumer in the bench process."
    )
    ctx.put("slow.streams", lv.streams)
    ctx.put("slow.p99", lv.relay.p99)
    ctx.put("slow.p50", lv.relay.p50)
    ctx.put("slow.steady_p99", lv.steady.p99)
    ctx.put("slow.steady_machine_cores", lv.steady_cores.get("machine"))
    ctx.put("slow.worker_rss_bytes", worker_kb * 1024)


def _floor_table(ctx: Context, result: GroupResult, ours: list[Level], floors: list[Level]) -> None:
    """The minimal relay (``bench/minimal_relay.py``) at the two heaviest loads above."""
    table = result.table(
        "The floor: the minimal relay of the same shape (provider → worker → Redis → API → SSE "
        "client) at the same loads, right after tokenspool's runs",
        [
            "load",
            "p50",
            "p90",
            "p99",
            "max",
            "all streams running: p50 / p99",
            "CPU cores: worker / API / Redis / client",
            STEADY_CORES,
            "CPU µs per chunk: worker / API",
            "tokenspool ÷ minimal: p50 / p99 / CPU µs per chunk worker / API",
            "failed streams",
        ],
    )
    for mine, lv in zip(ours, floors, strict=True):
        r, st = lv.relay, lv.steady
        worker, api = lv.cpu_per_chunk("worker"), lv.cpu_per_chunk("api")
        table.add(
            f"{lv.streams:,} streams at {lv.rate} chunks/s",
            ms(r.p50),
            ms(r.p90),
            ms(r.p99),
            ms(r.max),
            p50_p99(st) if st.n else "none",
            lv.cores_cell(),
            lv.steady_cores_cell(),
            lv.cpu_cell(),
            " / ".join(
                times(a / b) if b > 0 else "n/a"
                for a, b in (
                    (mine.relay.p50, r.p50),
                    (mine.relay.p99, r.p99),
                    (mine.cpu_per_chunk("worker"), worker),
                    (mine.cpu_per_chunk("api"), api),
                )
            ),
            lv.failed_cell(),
        )
        table.notes.extend(lv.error_notes(f"{lv.streams} streams, "))
    table.notes.append(
        "The minimal relay is the least Python that makes the same hops with the same "
        "libraries (aiohttp to the provider, redis-py's connection and hiredis to Redis, a raw "
        "asyncio HTTP server to the clients, uvloop in both processes): it takes prompts off a "
        "Redis list, XADDs each content delta (pending XADDs pipelined while one write is in "
        "flight, plus one PUBLISH naming the streams), and its API XREADs the notified streams "
        "and writes each entry as one SSE frame to every consumer's socket. It has no arq, "
        "fencing, leases, typed events, usage, retries, resume checks, per-consumer "
        "backpressure, cancellation, FastAPI, sse-starlette or metrics. Same clocked provider, "
        "Redis and SSE client as above; tokenspool's worker and API stay up, idle, meanwhile. "
        "It is the latency this machine allows a Python pipeline of tokenspool's shape."
    )
    for name, lv in (("minimal", floors[0]), ("minimal.slow", floors[1])):
        key = f"minimal.{lv.streams}" if name == "minimal" else name
        ctx.put(f"{key}.p50", lv.relay.p50)
        ctx.put(f"{key}.p99", lv.relay.p99)
        ctx.put(f"{key}.steady_p50", lv.steady.p50)
        ctx.put(f"{key}.steady_p99", lv.steady.p99)
        ctx.put(f"{key}.steady_machine_cores", lv.steady_cores.get("machine"))
