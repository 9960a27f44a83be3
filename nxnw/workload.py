"""A steady workload through the proxy's HTTP API that records every operation it makes.

Clients resolve the application's DNS name the way a real client does — once per TTL —
and send each request to whichever deployment the answer names, so the DNS hand-off is
measured by the clients themselves: which address each request reached, and when. Every
write, delete and read goes into a ``History`` for the checker; a request that fails or
times out is recorded as unacknowledged, never dropped.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from dns_handoff.resolve import answer
from nxnw.history import History
from proxy.api import encode_key


@dataclass
class Endpoint:
    """How clients find the data endpoint: a fixed address, or a DNS name resolved per TTL."""

    port: int
    address: str = "127.0.0.1"
    dns_server: str | None = None
    dns_name: str | None = None
    ttl: float = 5.0
    _resolved_at: float = -1e9

    async def current(self) -> str:
        if self.dns_server and self.dns_name and time.monotonic() - self._resolved_at >= self.ttl:
            try:
                addresses = await asyncio.get_running_loop().run_in_executor(
                    None, answer, self.dns_server, self.dns_name, "A")
            except Exception:
                addresses = []
            if addresses:
                self.address = addresses[0]
                self._resolved_at = time.monotonic()
        return self.address


@dataclass
class WorkloadStats:
    requests: int = 0
    failed: int = 0
    #: (wall-clock second, address reached) of every request, for the switch-over figures
    reached: list[tuple[float, str]] = field(default_factory=list)
    #: (wall-clock second, address, hit) of every cache read, for the cache's warmth
    cache_reads: list[tuple[float, str, bool]] = field(default_factory=list)

    def cache_hit_ratio(self, address: str, since: float, seconds: float) -> float | None:
        """Hits among cache reads served by ``address`` in the window after ``since``."""
        window = [hit for t, a, hit in self.cache_reads if a == address and since <= t < since + seconds]
        return sum(window) / len(window) if window else None


class Workload:
    """``clients`` concurrent clients writing, deleting and reading ``keys`` keys of one kind."""

    def __init__(self, app: str, endpoint_for: Callable[[int], Endpoint], *, clients: int = 4, keys: int = 200,
                 kind: str = "Item", history: History | None = None, pause: float = 0.002, seed: int = 1) -> None:
        self.app = app
        self.kind = kind
        self.keys = [f"key-{i:05d}" for i in range(keys)]
        self.endpoint_for = endpoint_for
        self.clients = clients
        self.history = history if history is not None else History()
        self.pause = pause
        self.seed = seed
        self.stats = WorkloadStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, cid: int) -> None:
        rng = random.Random(self.seed * 1000 + cid)
        endpoint = self.endpoint_for(cid)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            n = 0
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                address = await endpoint.current()
                url = f"http://{address}:{endpoint.port}/v1/apps/{self.app}/kinds/{self.kind}/entities/{encode_key(key.encode())}"
                roll = rng.random()
                if roll < 0.25:
                    await self._cache_aside(http, address, endpoint.port, f"{self.app}:session-{rng.randrange(len(self.keys))}")
                elif roll < 0.55:
                    value = f"c{cid}-{n}".encode()
                    op = self.history.begin(f"c{cid}", "write", key, value)
                    await self._send(op, http.put(url, data=value), address, expect_json=True)
                elif roll < 0.62:
                    op = self.history.begin(f"c{cid}", "delete", key)
                    await self._send(op, http.delete(url), address, expect_json=True)
                else:
                    op = self.history.begin(f"c{cid}", "read", key)
                    await self._send(op, http.get(url), address, expect_json=False)
                n += 1
                await asyncio.sleep(self.pause)

    async def _cache_aside(self, http: aiohttp.ClientSession, address: str, port: int, key: str) -> None:
        """What an app does with its cache: read, and on a miss fill it."""
        url = f"http://{address}:{port}/v1/cache/{encode_key(key.encode())}"
        try:
            async with http.get(url) as resp:
                await resp.read()
                hit = resp.status == 200
            self.stats.cache_reads.append((time.time(), address, hit))
            if not hit:
                async with http.put(url, data=b"session data for " + key.encode(), params={"ttl": "600"}) as resp:
                    await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.stats.failed += 1

    async def _send(self, op, request, address: str, expect_json: bool) -> None:
        self.stats.requests += 1
        try:
            async with request as resp:
                if expect_json and resp.status == 200:
                    op.succeed((await resp.json())["ts"])
                elif not expect_json and resp.status == 200:
                    await resp.read()
                    op.succeed(int(resp.headers["X-Nxnw-Timestamp"]))
                elif not expect_json and resp.status == 404:
                    op.succeed(None)
                else:
                    await resp.read()
                    op.unknown()
                    self.stats.failed += 1
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            op.unknown()
            self.stats.failed += 1
            await asyncio.sleep(0.05)
        self.stats.reached.append((time.time(), address))
