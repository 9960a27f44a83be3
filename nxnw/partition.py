"""A network partition between one process and a server, for the ``partition-zookeeper`` fault.

The process reaches the server through a TCP relay on a loopback port of its own; ``cut``
holds what either side sends (nothing is dropped or closed: the connection goes dark, as
it does when a network path fails and TCP retransmits in vain) and ``heal`` lets it through
again. Unlike a paused process (SIGSTOP) or an expired session, a partitioned process keeps
running and serving its clients and engines, and learns of the partition only from its own
timers: the interleaving the fault is there to exercise.

Must never: alter, reorder or drop a byte that passes; hold a connection open after either
side closed it, once healed.
"""

from __future__ import annotations

import asyncio
import contextlib

from nxnw.services.endpoints import HOST


class Partition:
    """A relay to ``upstream`` that can be cut and healed; ``start`` gives its port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task] = set()

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction, each chunk held while the partition is cut."""
        try:
            while data := await reader.read(65536):
                await self._open.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._connections.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._open.wait()  # a partitioned path does not connect either
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        pumps = [asyncio.create_task(self._pump(reader, up_writer)), asyncio.create_task(self._pump(up_reader, writer))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for side in (writer, up_writer):
                with contextlib.suppress(Exception):
                    side.close()
            await asyncio.gather(*pumps, return_exceptions=True)
