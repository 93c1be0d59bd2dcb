"""The stream hub's pub/sub side: the ``written`` channels of the jobs it has consumers for.

The hub says which channels it wants (``want`` / ``drop``); ``apply`` SUBSCRIBEs and
UNSUBSCRIBEs to match, each change set in one command; ``listen`` hands every notification
(channel, last id) and every subscription confirmation (channel) to the hub's callbacks. After
a pub/sub error the listener reconnects, which resubscribes every channel (redis-py's PubSub
does), and each confirmation is then a catch-up for the hub.

The listener reads the pub/sub connection's replies itself rather than through
``PubSub.get_message``, which costs ~7 µs a message (a timer, the retry wrapper and a dict each):
one timed read waits for the next reply, and the replies that came with it are taken from the
parser's buffer without waiting (~0.4 µs each). Confirmations still go through redis-py's
``handle_message``, which keeps its record of the channels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from .connections import hiredis_reader
from .errors import REDIS_UNREACHABLE
from .tailer import RECONNECT_DELAYS

log = logging.getLogger(__name__)


def _buffered_reply(connection: AbstractConnection) -> Any:
    """The next reply already in the connection's hiredis reader, or None if it holds no
    whole reply (then a read must wait for the socket). Replies are taken as redis-py's own
    read would take them: an error reply raises."""
    reader = hiredis_reader(connection)
    if reader is None:
        return None  # no hiredis parser (or it disconnected): the timed read handles it
    reply = reader.gets()
    if reply is NOT_ENOUGH_DATA:
        return None
    if isinstance(reply, Exception):
        raise reply
    return reply


class Subscriptions:
    """``reader``'s pub/sub connection, subscribed to the channels wanted.

    ``on_written(channel, data)``: a notification; ``on_subscribed(channel)``: a subscription
    took effect. ``listen_timeout``: how long one read of the connection waits (then it
    checks whether it was closed, and waits again)."""

    def __init__(
        self,
        reader: Redis,
        on_written: Callable[[bytes, bytes], None],
        on_subscribed: Callable[[bytes], None],
        *,
        listen_timeout: float,
    ) -> None:
        self._pubsub = reader.pubsub()
        self._on_written = on_written
        self._on_subscribed = on_subscribed
        self._listen_timeout = listen_timeout
        self._wanted: set[bytes] = set()
        self._changed = asyncio.Event()  # the channels wanted changed, or a reconnect
        self._closed = False

    @property
    def subscribed(self) -> int:
        """How many channels the connection is subscribed to now."""
        return len(self._pubsub.channels)

    def want(self, channel: bytes) -> None:
        self._wanted.add(channel)
        self._changed.set()

    def drop(self, channel: bytes) -> None:
        self._wanted.discard(channel)
        self._changed.set()

    def closing(self) -> None:
        """Let ``listen`` and ``apply`` end on their own (their tasks are being stopped)."""
        self._closed = True
        self._changed.set()

    async def aclose(self) -> None:
        await asyncio.shield(self._pubsub.aclose())

    async def listen(self) -> None:
        """Receive the notifications and the subscription confirmations until closed."""
        failures = 0
        while not self._closed:
            try:
                await self._pubsub.connect()
                self._changed.set()  # channels wanted while it was away
                connection = self._pubsub.connection
                assert connection is not None  # connect() sets it
                while not self._closed:
                    # None: nothing for a while (the connection stays up); on any error the
                    # connection disconnects itself and connect() above reconnects it
                    reply = await connection.read_response(timeout=self._listen_timeout)
                    failures = 0
                    while reply is not None:
                        if type(reply) is list and reply and reply[0] == b"message":
                            self._on_written(reply[1], reply[2])  # no coroutine per message
                        else:
                            await self._on_confirmation(reply)
                        reply = _buffered_reply(connection)
            except REDIS_UNREACHABLE as exc:
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                log.warning("stream hub: pub/sub failed (%s); reconnecting in %ss", exc, delay)
                await asyncio.sleep(delay)

    async def _on_confirmation(self, reply: Any) -> None:
        """A reply other than a message: (un)subscribe confirmations, through redis-py."""
        message = await self._pubsub.handle_message(reply)
        if message is not None and message["type"] == "subscribe":
            self._on_subscribed(message["channel"])

    async def apply(self) -> None:
        """SUBSCRIBE to the channels newly wanted and UNSUBSCRIBE from those no longer
        wanted, whenever that changes, until closed."""
        while not self._closed:
            await self._changed.wait()
            self._changed.clear()
            connection = self._pubsub.connection
            if self._closed or connection is None or not connection.is_connected:
                continue  # the listener reconnects, then asks again
            current = set(self._pubsub.channels) - set(self._pubsub.pending_unsubscribe_channels)
            wanted = set(self._wanted)
            try:
                if wanted - current:
                    await self._pubsub.subscribe(*(wanted - current))
                if current - wanted:
                    await self._pubsub.unsubscribe(*(current - wanted))
            except REDIS_UNREACHABLE as exc:
                log.warning("stream hub: (un)subscribe failed (%s); after the reconnect", exc)
