"""The least Python that relays a provider stream through Redis Streams to SSE clients: the
latency floor of tokenspool's shape on this machine, measured in the same run.

Same hops, same processes, same provider, client and Redis as tokenspool end to end:
clocked provider → *worker* → Redis → *API* → bench SSE client. What it leaves out is all that
makes tokenspool a product: arq, fencing and leases, typed events, usage and cost, retries,
resume checks, backpressure per consumer, cancellation, FastAPI, sse-starlette, metrics.

- worker: takes ``key<TAB>prompt`` items off a Redis list (BLPOP), streams the prompt from the
  provider with aiohttp, and appends each content delta with XADD. Pending XADDs go out as one
  pipelined write while none is in flight (tokenspool's writer does the same), followed by
  one PUBLISH naming the streams written.
- API: a raw asyncio HTTP server for ``GET /v1/jobs/{key}/events``. One task reads the
  notifications and, for the streams that have consumers, one XREAD; every entry becomes one
  SSE frame written to each consumer's socket.

Both run on uvloop. Run as ``python -m bench.minimal_relay worker|api --redis URL ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import deque
from typing import Any

import aiohttp
import hiredis
import uvloop
from redis.asyncio.connection import Connection, parse_url

QUEUE = "bench:minimal:queue"
CHANNEL = "bench:minimal:written"
MAXLEN = "10000"


def _connection(url: str) -> Connection:
    options = parse_url(url)
    return Connection(host=options.get("host", "127.0.0.1"), port=options.get("port", 6379), db=0)


class MinimalWorker:
    def __init__(self, redis_url: str, provider: str, model: str) -> None:
        self.redis_url, self.provider, self.model = redis_url, provider, model
        self.pending: deque[tuple[str, str, str]] = deque()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        self.out = _connection(self.redis_url)
        await self.out.connect()
        queue = _connection(self.redis_url)
        await queue.connect()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)
        )
        writer = asyncio.create_task(self._write())
        jobs: set[asyncio.Task[None]] = set()
        print("minimal worker ready", flush=True)
        while True:
            await queue.send_command("BLPOP", QUEUE, 1)
            item = await queue.read_response()
            if item is None:
                continue
            key, _, prompt = item[1].decode().partition("\t")
            task = asyncio.create_task(self._job(key, prompt))
            jobs.add(task)
            task.add_done_callback(jobs.discard)
        writer.cancel()

    def _emit(self, key: str, type_: str, data: str) -> None:
        self.pending.append((key, type_, data))
        self.wake.set()

    async def _job(self, key: str, prompt: str) -> None:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
        }
        async with self.session.post(self.provider + "/chat/completions", json=body) as resp:
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    break
                choices = json.loads(payload).get("choices")
                if choices:
                    text = choices[0].get("delta", {}).get("content")
                    if text:
                        self._emit(key, "content.delta", json.dumps({"text": text}))
        self._emit(key, "job.completed", "{}")

    async def _write(self) -> None:
        while True:
            if not self.pending:
                self.wake.clear()
                await self.wake.wait()
                continue
            batch, self.pending = self.pending, deque()
            keys = dict.fromkeys(key for key, _, _ in batch)
            calls: list[Any] = [
                ("XADD", key, "MAXLEN", "~", MAXLEN, "*", "t", t, "d", d) for key, t, d in batch
            ]
            calls.append(("PUBLISH", CHANNEL, " ".join(keys)))
            commands = [hiredis.pack_command(call) for call in calls]
            await self.out.send_packed_command(b"".join(commands))
            for _ in commands:
                await self.out.read_response()


class _Client(asyncio.Protocol):
    def __init__(self, api: MinimalApi) -> None:
        self.api = api
        self.transport: Any = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        path = self.head.split(b" ", 2)[1].decode()
        self.head = None  # type: ignore[assignment]
        parts = path.strip("/").split("/")  # v1 jobs {key} events
        if len(parts) != 4 or parts[3] != "events":
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            self.transport.close()
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
        )
        self.api.add(parts[2], self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.api.drop(self.transport)


class MinimalApi:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.consumers: dict[str, list[Any]] = {}  # stream key -> transports
        self.last: dict[str, str] = {}  # stream key -> last id read
        self.due: set[str] = set()  # streams to read
        self.wake = asyncio.Event()

    def add(self, key: str, transport: Any) -> None:
        if key not in self.consumers:
            self.consumers[key] = []
            self.last[key] = "0"
        self.consumers[key].append(transport)
        self.due.add(key)
        self.wake.set()

    def drop(self, transport: Any) -> None:
        for key, transports in list(self.consumers.items()):
            if transport in transports:
                transports.remove(transport)
                if not transports:
                    del self.consumers[key], self.last[key]

    async def run(self, port: int) -> None:
        sub = _connection(self.redis_url)
        await sub.connect()
        await sub.send_command("SUBSCRIBE", CHANNEL)
        await sub.read_response()
        self.reader = _connection(self.redis_url)
        await self.reader.connect()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Client(self), "127.0.0.1", port)
        listener = asyncio.create_task(self._listen(sub))
        print("minimal api ready", flush=True)
        async with server:
            await self._read_loop()
        listener.cancel()

    async def _listen(self, sub: Connection) -> None:
        while True:
            message = await sub.read_response()
            for key in message[2].decode().split(" "):
                if key in self.consumers:
                    self.due.add(key)
            self.wake.set()

    async def _read_loop(self) -> None:
        while True:
            if not self.due:
                self.wake.clear()
                await self.wake.wait()
                continue
            keys = [k for k in self.due if k in self.consumers]
            self.due.clear()
            if not keys:
                continue
            await self.reader.send_command(
                "XREAD", "COUNT", 1000, "STREAMS", *keys, *(self.last[k] for k in keys)
            )
            reply = await self.reader.read_response() or []
            for raw_key, entries in reply:
                key = raw_key.decode()
                transports = self.consumers.get(key)
                if not transports:
                    continue
                done = False
                for entry_id, fields in entries:
                    type_, data = fields[1], fields[3]
                    frame = b"event: %s\r\nid: %s\r\ndata: %s\r\n\r\n" % (type_, entry_id, data)
                    for transport in transports:
                        transport.write(frame)
                    done = type_ == b"job.completed"
                self.last[key] = entries[-1][0].decode()
                if len(entries) == 1000:
                    self.due.add(key)
                if done:
                    for transport in list(transports):
                        transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["worker", "api"])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--provider", help="worker: the provider's API base, ending in /v1")
    parser.add_argument("--model", default="clocked-gpt")
    parser.add_argument("--port", type=int, help="api: the port to serve on")
    args = parser.parse_args()
    if args.role == "worker":
        uvloop.run(MinimalWorker(args.redis, args.provider, args.model).run())
    else:
        uvloop.run(MinimalApi(args.redis).run(args.port))


if __name__ == "__main__":
    main()
