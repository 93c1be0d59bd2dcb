"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from tokenspool.fake_llm import Plan, plan


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
        out.append({"id": item.get("id"), "event": item.get("event"),
                    "data": json.loads(item["data"])})
    return out


async def fake_requests(fake_url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=fake_url) as http:
        response = await http.get("/_fake/requests")
        return list(response.json()["requests"])


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll an async predicate until it returns a truthy value (bounded)."""
    async with asyncio.timeout(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await asyncio.sleep(interval)
