"""A memcached of one test's own, for tests that flush, kill or slow a server: doing that to
the shared ones would disturb every other test."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nxnw.fleet import free_port
from nxnw.services.endpoints import HOST


@contextmanager
def memcached_process(port: int | None = None) -> Iterator[tuple[str, int]]:
    """A memcached on ``port`` (or a free loopback port), answering before it is yielded;
    killed at the end."""
    port = port or free_port(HOST)
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root
    proc = subprocess.Popen(["memcached", *as_user, "-l", HOST, "-p", str(port), "-U", "0", "-m", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"memcached on {port} exited with {proc.returncode}"
                assert time.monotonic() < deadline, f"memcached on {port} did not start within 30 s"
                time.sleep(0.05)
        yield HOST, port
    finally:
        proc.kill()
        proc.wait(10)


class TcpRelay:
    """A TCP relay to ``upstream`` on a loopback port of its own: replies pass straight
    back; what clients send goes up through ``send_up``, which a test's relay overrides to
    hold, slow or record it."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.server: asyncio.base_events.Server | None = None
        self.handlers: set[asyncio.Task] = set()

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, HOST, 0)
        return HOST, self.server.sockets[0].getsockname()[1]

    async def send_up(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        """Pass on what one client connection sends until it closes."""
        while data := await reader.read(65536):
            up_writer.write(data)
            await up_writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def down() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        pump = asyncio.create_task(down())
        try:
            await self.send_up(reader, up_writer)
        finally:
            up_writer.close()
            pump.cancel()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


class GatedRelay(TcpRelay):
    """A server slow to answer: what clients send is held (never dropped) until ``gate`` is
    set; ``arrived`` is set once a client has sent anything. (A network path gone dark both
    ways is ``nxnw.partition.Partition``.)"""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()

    async def send_up(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.arrived.set()
            await self.gate.wait()
            up_writer.write(data)
            await up_writer.drain()
