"""A TCP proxy on loopback whose connections a test can cut, to simulate dropped networks."""

from __future__ import annotations

import asyncio
import contextlib


class DroppingProxy:
    """Forwards 127.0.0.1:<port> to a target; ``drop_all()`` resets every open connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def forward(self, data: bytes, request: bool, connection: dict[str, bool]) -> bool:
        """Whether to pass ``data`` on (a request from the client when ``request``, else a reply
        to it); it may wait first. ``connection``: per-connection state for subclasses."""
        return True

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bool,
        connection: dict[str, bool],
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if await self.forward(data, request, connection):
                    writer.write(data)
                    await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            connection: dict[str, bool] = {}
            await asyncio.gather(
                self._pipe(reader, up_writer, True, connection),
                self._pipe(up_reader, writer, False, connection),
            )
        finally:
            self._writers -= {writer, up_writer}

    def drop_all(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many."""
        dropped = 0
        for writer in list(self._writers):
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()
                dropped += 1
        return dropped

    async def stop(self) -> None:
        self.drop_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
