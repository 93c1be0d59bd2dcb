"""Redis connections: one pool per process, with timeouts that fit blocking reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import hiredis
from arq.connections import ArqRedis
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .settings import Settings


class Pool(ConnectionPool):
    """redis-py's asyncio pool, without the lock around connection checkout.

    redis-py 5.3 holds an ``asyncio.Lock`` while it checks a pooled connection
    (``ensure_connection`` awaits a socket poll), so on a busy event loop every checkout of
    every request waits its turn, one loop pass each (redis/redis-py#3692). arq 0.28 pins
    ``redis<6``. Taking a connection from the list is synchronous, so it needs no lock; each
    caller then checks its own connection.
    """

    async def get_connection(
        self, command_name: object = None, *keys: object, **options: object
    ) -> Any:
        connection = self.get_available_connection()
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection


def pack(commands: list[tuple[Any, ...]]) -> bytes:
    """The commands in the Redis protocol, packed by hiredis in C. redis-py's asyncio
    connection packs in Python, argument by argument: about 8 µs per WRITE call against 1 µs
    here, and an XREAD naming hundreds of streams costs it milliseconds."""
    return b"".join([hiredis.pack_command(command) for command in commands])


def hiredis_reader(connection: AbstractConnection) -> Any | None:
    """The connection's hiredis reader while it is connected, or None (no hiredis parser, or
    disconnected). redis-py keeps it private (``_parser._reader``): this is the one place that
    reaches for it, for the readers below and the stream hub's pub/sub listener."""
    parser = connection._parser
    if not isinstance(parser, _AsyncHiredisParser) or not parser._connected:
        return None
    return parser._reader


async def read_replies(conn: Connection, count: int) -> list[Any]:
    """The next ``count`` replies on ``conn`` (a pipeline's), error replies as exception
    values (``ResponseError``, ``NoScriptError``...), straight from the connection's hiredis
    reader: redis-py's ``read_response`` costs a few microseconds per reply (an error-message
    string, a timestamp for the health check, two layers of calls), which a pipeline of
    hundreds of replies pays hundreds of times. As redis-py does, a failure or cancellation
    mid-reply drops the connection (the next command reconnects), and a reply that means the
    connection is unusable (e.g. "max number of clients") is raised."""
    parser = conn._parser
    if not isinstance(parser, _AsyncHiredisParser):
        return [await _reply(conn) for _ in range(count)]
    replies: list[Any] = []
    try:
        reader = hiredis_reader(conn)
        if reader is None:
            raise RedisConnectionError("the connection is closed")
        while len(replies) < count:
            reply = reader.gets()
            if reply is NOT_ENOUGH_DATA:
                await parser.read_from_socket()
            elif isinstance(reply, RedisConnectionError):
                raise reply
            else:
                replies.append(reply)
    except BaseException:
        await conn.disconnect(nowait=True)
        raise
    return replies


ROUND_TRIP_SECONDS = 10.0  # deadline of a round trip on a connection without a socket timeout


@asynccontextmanager
async def held(redis: Redis) -> AsyncIterator[Connection]:
    """A connection of ``redis``'s pool, held for several round trips (a WATCH ... EXEC)."""
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        yield conn
    finally:
        await pool.release(conn)


async def round_trip(conn: Connection, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The replies of ``commands`` sent as one pipeline on ``conn``, error replies as values
    (:func:`read_replies`), within the connection's socket timeout (or ``ROUND_TRIP_SECONDS``);
    past it the connection is dropped and the Redis timeout raised, as redis-py does."""
    limit = conn.socket_timeout or ROUND_TRIP_SECONDS
    try:
        async with asyncio.timeout(limit):
            await conn.send_packed_command(pack(commands))
            return await read_replies(conn, len(commands))
    except TimeoutError as exc:
        raise RedisTimeoutError(f"no answer from Redis within {limit}s") from exc


async def pipelined(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """The replies of ``commands`` sent as one non-transactional pipeline on a connection of
    ``redis``'s pool, error replies as values: what ``Pipeline.execute(raise_on_error=False)``
    returns (raw replies, no response callbacks), packed by hiredis and read by
    :func:`read_replies`. redis-py takes about 20 µs of CPU per command packing and parsing a
    pipeline of script calls; for the worker's lease renewals (every held lease, every second)
    that was 45 ms a second, in one block, at 2,000 streams."""
    async with held(redis) as conn:
        return await round_trip(conn, commands)


async def transaction(conn: Connection, commands: list[tuple[Any, ...]]) -> list[Any] | None:
    """``commands`` in MULTI ... EXEC on ``conn``, in one round trip: their replies, or None
    if a key the connection WATCHes changed (nothing ran). A command Redis refuses, or one
    that fails as it runs, is raised."""
    replies = await round_trip(conn, [("MULTI",), *commands, ("EXEC",)])
    for reply in replies[:-1]:  # refused while queued: EXEC then aborts them all
        if isinstance(reply, Exception):
            raise reply
    result = replies[-1]
    if isinstance(result, Exception):
        raise result
    if result is None:
        return None
    for reply in result:
        if isinstance(reply, Exception):
            raise reply
    return cast(list[Any], result)


async def multi_exec(redis: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """``commands`` in one MULTI ... EXEC (:func:`transaction`) on a connection of ``redis``'s
    pool that watches nothing, so the transaction always runs: their replies."""
    async with held(redis) as conn:
        result = await transaction(conn, commands)
    assert result is not None, "no key is watched"
    return result


async def _reply(conn: Connection) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as exc:  # this command's error reply; the rest still follow
        return exc


def job_serializer(value: dict[str, Any]) -> bytes:
    """arq job payloads cross Redis as JSON, never pickle."""
    return json.dumps(value, separators=(",", ":")).encode()


def job_deserializer(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(raw)
    return value


def connect(
    settings: Settings, *, max_connections: int | None = None, caller_bounds_waits: bool = False
) -> ArqRedis:
    """A Redis client (arq-capable) whose socket timeout exceeds the XREAD BLOCK time.

    Each stream client of the API holds one connection while its XREAD blocks, so the pool
    bounds the stream clients of one API process (``redis_max_connections``). With
    ``caller_bounds_waits`` the connections have no socket timeout: the caller puts a deadline
    on each round trip itself (redis-py otherwise starts a task for every send and a timer for
    every reply, which a pipeline of hundreds of replies pays hundreds of times)."""
    pool = Pool.from_url(
        settings.redis_url,
        socket_timeout=None if caller_bounds_waits else settings.read_block_ms / 1000 + 5,
        socket_connect_timeout=5,
        health_check_interval=30,
        max_connections=max_connections or settings.redis_max_connections,
        retry_on_timeout=False,
    )
    return ArqRedis(
        connection_pool=pool,
        job_serializer=job_serializer,
        job_deserializer=job_deserializer,
        default_queue_name=settings.queue_name,
    )


async def close(redis: ArqRedis) -> None:
    """Close the client and every pooled connection (the pool was passed in, so aclose alone
    would leave them open)."""
    await redis.aclose()
    await redis.connection_pool.disconnect()


def connect_reader(settings: Settings) -> Redis:
    """A client that keeps one connection to itself (the stream hub's reader). No health
    checks and no retries behind its back: its CLIENT ID changes only when it reconnects
    after an error, which the hub sees."""
    return Redis.from_url(
        settings.redis_url,
        single_connection_client=True,
        socket_timeout=settings.read_block_ms / 1000 + 5,
        socket_connect_timeout=5,
        health_check_interval=0,
    )
