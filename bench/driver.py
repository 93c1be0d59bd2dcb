"""How the bench drives the stack: submit, follow, cancel and wait over HTTP; read Redis and
the providers' logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from tokenspool.keys import Keys

from . import sse
from .stacks import FAKE_MODEL, BenchStack

FINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Submitted:
    """One accepted job, with the client's clock around its POST."""

    job_id: str
    prompt: str
    sent_at: float  # just before the POST was sent
    returned_at: float  # just after its 202 was read


class Driver:
    """HTTP and Redis clients for one stack; ``aclose()`` closes both."""

    def __init__(self, stack: BenchStack, *, connections: int = 64) -> None:
        self.stack = stack
        self.http = httpx.AsyncClient(
            base_url=stack.api_url,
            timeout=httpx.Timeout(30.0),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self.redis = Redis.from_url(stack.redis_url, socket_timeout=30)
        self.keys = Keys()

    async def aclose(self) -> None:
        await self.http.aclose()
        await self.redis.aclose()

    async def submit(self, prompt: str, model: str = FAKE_MODEL) -> Submitted:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        sent = time.time()
        response = await self.http.post("/v1/jobs", json=body)
        returned = time.time()
        response.raise_for_status()
        return Submitted(response.json()["id"], prompt, sent, returned)

    async def submit_lean(self, prompt: str, model: str = FAKE_MODEL) -> str:
        """``submit`` through ``sse.post_json`` rather than httpx (about 0.2 against 2.3 ms of
        the client's CPU per job here): for the load of the relay benchmark, whose hundreds of
        submissions share the cores with the streams it measures. Returns the job id."""
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}]})
        answer = await sse.post_json("127.0.0.1", self.stack.api_port, "/v1/jobs", body.encode())
        job_id: str = json.loads(answer)["id"]
        return job_id

    async def submit_and_follow(
        self,
        prompt: str,
        log: sse.StreamLog,
        within: float = 120.0,
        model: str = FAKE_MODEL,
        *,
        on_answer: Callable[[], None] | None = None,
        openai: bool = False,
    ) -> Submitted:
        """Queue a job and follow it in one request (``POST /v1/jobs`` with ``Accept:
        text/event-stream``), as the Python clients do; with ``openai``, through the
        OpenAI-compatible surface (``POST /v1/chat/completions`` with ``"stream": true``).
        ``returned_at`` is when the response head was read (the job is queued by then), when
        ``on_answer`` is called too."""
        body: dict[str, object] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
        }
        if openai:
            body["stream"] = True
        returned = 0.0

        def answered() -> None:
            nonlocal returned
            returned = time.time()
            if on_answer is not None:
                on_answer()

        sent = time.time()
        log.job_id = await sse.submit_and_follow(
            "127.0.0.1",
            self.stack.api_port,
            json.dumps(body).encode(),
            log,
            within=within,
            answered=answered,
            openai=openai,
        )
        return Submitted(log.job_id, prompt, sent, returned)

    async def submit_many(
        self, prompts: Sequence[str], model: str = FAKE_MODEL, concurrency: int = 32
    ) -> list[Submitted]:
        gate = asyncio.Semaphore(concurrency)

        async def one(prompt: str) -> Submitted:
            async with gate:
                return await self.submit(prompt, model)

        return list(await asyncio.gather(*(one(p) for p in prompts)))

    async def follow(self, job_id: str, log: sse.Sink, within: float = 120.0) -> None:
        await sse.follow("127.0.0.1", self.stack.api_port, job_id, log, within=within)

    async def cancel(self, job_ids: Iterable[str], concurrency: int = 32) -> Counter[int]:
        """Ask for every job to be cancelled; the answers' status codes, counted."""
        gate = asyncio.Semaphore(concurrency)
        codes: Counter[int] = Counter()

        async def one(job_id: str) -> None:
            async with gate:
                try:
                    response = await self.http.post(f"/v1/jobs/{job_id}/cancel")
                    codes[response.status_code] += 1  # 409 once finished: fine
                except httpx.HTTPError:
                    codes[0] += 1

        await asyncio.gather(*(one(j) for j in job_ids))
        return codes

    async def statuses(self, job_ids: Sequence[str]) -> list[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), "status")
            raw = await pipe.execute()
        return [(r or b"").decode() for r in raw]

    async def wait_finished(self, job_ids: Sequence[str], within: float = 60.0) -> bool:
        """Wait until every job has a final status; False if ``within`` seconds passed first."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(s in FINAL for s in await self.statuses(job_ids)):
                return True
            await asyncio.sleep(0.1)
        return False

    async def hash_floats(self, job_ids: Sequence[str], field: str) -> list[float | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self.keys.job(job_id), field)
            raw = await pipe.execute()
        return [float(r) if r is not None else None for r in raw]

    async def xlen_sum(self, job_ids: Sequence[str]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xlen(self.keys.events(job_id))
            return int(sum(await pipe.execute()))

    async def fake_started(self) -> dict[str, float]:
        """The fake provider's request start times (``started_at``) by prompt."""
        response = await self.http.get(self.stack.fake_url + "/_fake/requests")
        return {r["prompt"]: r["started_at"] for r in response.json()["requests"]}

    async def clocked_sends(self) -> dict[str, list[float]]:
        """The clocked provider's send time of every chunk, by prompt."""
        response = await self.http.get(self.stack.clocked_url + "/_bench/sends", timeout=60)
        data: dict[str, list[float]] = response.json()
        return data

    async def drain(self, job_ids: Sequence[str], within: float = 60.0) -> None:
        """Cancel whatever is left of ``job_ids`` and wait until all of them are final."""
        await self.cancel(
            j for j, s in zip(job_ids, await self.statuses(job_ids), strict=True) if s not in FINAL
        )
        await self.wait_finished(job_ids, within)


def entry_time(event_id: str) -> float:
    """The Redis server time (s) in a stream entry id: when the entry was appended (1 ms steps)."""
    return int(event_id.partition("-")[0]) / 1000


async def redis_counters(driver: Driver) -> dict[str, float]:
    """Redis's cumulative counters: request reads, network bytes, commands, calls by command."""
    stats = await driver.redis.info("stats")
    commands = await driver.redis.info("commandstats")
    names = (
        "total_reads_processed",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "total_commands_processed",
    )
    out = {k: float(stats[k]) for k in names}
    for name, value in commands.items():
        out[name.removeprefix("cmdstat_")] = float(value["calls"])
    return out


def top_commands(deltas: dict[str, float], chunks: int, n: int = 10) -> str:
    """The commands called most (script-internal calls included), per chunk: "xadd 1.00, ..."."""
    skip = {
        "total_reads_processed",
        "total_net_input_bytes",
        "total_net_output_bytes",
        "total_commands_processed",
        "info",
    }
    calls = sorted(((v, k) for k, v in deltas.items() if k not in skip and v > 0), reverse=True)
    return ", ".join(f"{k} {v / max(chunks, 1):.2f}" for v, k in calls[:n])
