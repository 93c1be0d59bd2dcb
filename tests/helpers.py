"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import httpx

from tokenspool.client import AsyncClient
from tokenspool.embedded import Child
from tokenspool.events import Event
from tokenspool.fake_llm import Plan, plan
from tokenspool.stack import Stack


def expected(model: str, prompt: str, **params: Any) -> Plan:
    """What the fake provider will send for this job (the upstream name equals the public one)."""
    return plan({"model": model, "messages": [{"role": "user", "content": prompt}], **params})


def parse_sse(text: str) -> list[dict[str, str]]:
    """Parse complete SSE text into events (dicts of id/event/data); comments are dropped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            events.append(fields)
    return events


async def sse_events(http: httpx.AsyncClient, job_id: str, **kw: Any) -> list[dict[str, Any]]:
    """Read a job's whole SSE stream (it closes after the terminal event)."""
    response = await http.get(f"/v1/jobs/{job_id}/events", **kw)
    assert response.status_code == 200, response.text
    out = []
    for item in parse_sse(response.text):
        out.append(
            {"id": item.get("id"), "event": item.get("event"), "data": json.loads(item["data"])}
        )
    return out


async def fake_requests(fake_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=fake_url) as http:
        response = await http.get("/_fake/requests")
        return list(response.json()["requests"])


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:  # noqa: ASYNC109
    """Poll an async predicate until it returns a truthy value (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(interval)


class Follower:
    """Collects a job's events in the background; tests wait on what it has seen."""

    def __init__(self, client: AsyncClient, job_id: str) -> None:
        self.events: list[Event] = []
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._run(client, job_id))

    async def _run(self, client: AsyncClient, job_id: str) -> None:
        async for event in client.events(job_id):
            self.events.append(event)
            self._new.set()

    async def until(self, predicate: Callable[[Event], bool], within: float = 20.0) -> Event:
        async with asyncio.timeout(within):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._new.clear()
                await self._new.wait()

    async def done(self, within: float = 30.0) -> list[Event]:
        await asyncio.wait_for(self.task, within)
        return self.events


def worker_child(stack: Stack, worker: str) -> Child:
    """The stack's worker process named by a ``job.started`` event's ``worker`` (host:pid)."""
    pid = int(worker.rsplit(":", 1)[1])
    return next(w for w in stack.workers if w.pid == pid)


async def drop_and_resume_consumer(
    http: httpx.AsyncClient, job_id: str, rng: random.Random, max_batch: int
) -> str:
    """A raw SSE consumer that reads 1..max_batch events, drops the connection, and resumes with
    ``Last-Event-ID``, until the terminal event; returns the content text it assembled."""
    text: list[str] = []
    last, done = "0", False
    while not done:
        budget = rng.randint(1, max_batch)  # events to read before this consumer "drops"
        async with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last}
        ) as response:
            block: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in block:
                        data = json.loads(block["data"])
                        last = block["id"]
                        if data["type"] == "content.delta":
                            text.append(data["text"])
                        budget -= 1
                        done = data["type"] == "job.completed"
                        if done or budget == 0:
                            break
                    block = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    block[name] = value
    return "".join(text)


def replace_worker(stack: Stack, worker: str, sig: int) -> Child:
    """Send ``sig`` to the worker named by a ``job.started`` event, take it out of the stack and
    start a fresh one in its place (so the stack keeps its size); returns the signalled child,
    which the caller reaps."""
    child = worker_child(stack, worker)
    child.signal(sig)
    stack.workers.remove(child)
    stack.start_worker()
    return child
