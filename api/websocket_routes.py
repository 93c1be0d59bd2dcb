"""``GET /v1/jobs/{id}/ws``: a job's events over a WebSocket, one JSON text message each.

Close codes: 1000 after the terminal event (or at once when ``after`` is at or past it); 4400
malformed ``after``; 4404 unknown or expired job; 4408 a send timed out (resume with ``after``);
4410 events after the offset were trimmed (at the start, or before this reader got them); 1011
Redis failed mid-stream; 1013 Redis unavailable at the start.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from tokenspool.errors import InvalidEventIdError, JobNotFoundError, StreamGoneError
from tokenspool.events import entry_json
from tokenspool.metrics import ApiMetrics
from tokenspool.settings import Settings
from tokenspool.store import JobStore
from tokenspool.tailer import parse_event_id

from .streams import StreamHead, hub_of, open_stream, tracked

TRANSPORT = "websocket"
MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 of them the code


def _reason(text: str) -> str:
    return text.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    connected = WebSocketState.CONNECTED
    if websocket.application_state == connected and websocket.client_state == connected:
        try:
            await websocket.close(code, _reason(reason))
        except (WebSocketDisconnect, OSError):
            pass  # the client left meanwhile


def websocket_router(settings: Settings, metrics: ApiMetrics) -> APIRouter:
    router = APIRouter(tags=["jobs"])

    async def relay(
        websocket: WebSocket, job_id: str, start: str, head: StreamHead
    ) -> tuple[int, str] | None:
        """Send the events up to the terminal one, a message each, a batch at a time (at most
        one XREAD batch held). Returns the close (code, reason), or None if the client left; a
        task listening for the client's disconnect runs alongside."""
        result: tuple[int, str] | None = None
        last = start
        job_json = json.dumps(job_id).encode()

        async def pump() -> None:
            nonlocal result, last
            batches = hub_of(websocket).tail(job_id, start)
            try:
                async with aclosing(batches):
                    async for batch in batches:
                        async with asyncio.timeout(settings.send_timeout_seconds):
                            for entry_id, fields in batch:
                                data = entry_json(job_id, entry_id, fields, job_json)
                                await websocket.send_text(data.decode())
                                last = entry_id.decode()
                        ids = [entry_id for entry_id, _ in batch]
                        metrics.relayed_batch(TRANSPORT, ids, head.last)
                result = (1000, "job ended")
            except WebSocketDisconnect:
                result = None
            except TimeoutError:
                result = (4408, f"send timed out; resume with after={last}")
            except JobNotFoundError as exc:
                result = (4404, str(exc))
            except StreamGoneError as exc:  # fell behind the stream cap
                result = (4410, str(exc))
            except (RedisConnectionError, RedisTimeoutError):
                result = (1011, f"Redis unavailable; resume with after={last}")

        async def listen() -> None:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass  # client messages mean nothing here; each is dropped at once

        async with asyncio.TaskGroup() as group:
            pumping = group.create_task(pump())
            listening = group.create_task(listen())
            # whichever finishes first ends the other
            pumping.add_done_callback(lambda _: listening.cancel())
            listening.add_done_callback(lambda _: pumping.cancel())
        return result

    @router.websocket("/v1/jobs/{job_id}/ws")
    async def job_websocket(
        websocket: WebSocket,
        job_id: str,
        after: Annotated[str | None, Query(description="resume after this event id")] = None,
    ) -> None:
        """The job's events as JSON text messages; closes with 1000 after the terminal one."""
        await websocket.accept()  # close codes can only be sent on an accepted socket
        store: JobStore = websocket.app.state.store
        try:
            start = parse_event_id(after)
        except InvalidEventIdError as exc:
            await _close(websocket, 4400, str(exc))
            return
        try:
            head = await open_stream(store, job_id, start)
            if head.ended_by(start):
                await _close(websocket, 1000, "job ended")
                return
        except JobNotFoundError as exc:
            await _close(websocket, 4404, str(exc))
            return
        except StreamGoneError as exc:
            await _close(websocket, 4410, str(exc))
            return
        except (RedisConnectionError, RedisTimeoutError):
            await _close(websocket, 1013, "Redis unavailable")
            return
        with tracked(metrics, TRANSPORT, start):
            result = await relay(websocket, job_id, start, head)
        if result is not None:
            await _close(websocket, *result)

    return router
