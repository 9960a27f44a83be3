"""A side's memcached pool: several servers, keys spread by ketama consistent hashing.

Responsible for: parsing a pool spec (``h1:p[:weight],h2:p[:weight],…``, IPv6 hosts in
brackets); placing each server on a ketama continuum the way twemproxy and libmemcached
do (160 points per server scaled by its weight, four points per MD5 digest of
``"<host:port>-<i>"``, a key's point the first 4 bytes of its MD5, little-endian), so a
key lands on the same server as behind twemproxy with ``hash: md5, distribution: ketama``;
sending each request to its key's server (through that server's ``MemcacheClient``, or
for the listener's callback path its one pipelined ``RelayConnection``, ``relay_for``);
marking a server down after ``fail_limit``
consecutive failures (no connection, no reply in time) and letting one request try it
again after ``retry_after`` seconds.

Must never: move a key to another server because its own is down. twemproxy's
``auto_eject_hosts`` does, and for a cache that sits next to a migration that is a stale
read waiting to happen: when the server comes back it still holds the key's old value,
which no write since has touched. Here a down server's keys fail fast instead
(``MemcacheUnavailable`` naming the server and when it is tried again), as mcrouter's
TKO does; a copy that fails that way is recorded like any failed copy and its key
invalidated at the next switch.

Both sides are independent pools: N1 and N2 may have different sizes and weights.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import math
import time
from dataclasses import dataclass

from proxy.cache.client import MemcacheClient, RelayConnection, Reply
from proxy.cache.errors import MemcacheTimeout, MemcacheUnavailable

POINTS_PER_SERVER = 160
POINTS_PER_HASH = 4
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class ServerSpec:
    """One memcached of a pool; ``name`` (``host:port``) is what ketama hashes."""

    host: str
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_servers(spec: str) -> list[ServerSpec]:
    """``"h1:11211,h2:11211:2,[::1]:11211"`` -> servers; ValueError naming the bad part."""
    servers: list[ServerSpec] = []
    for part in spec.split(","):
        item = part.strip()
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ValueError(f"memcached server {item!r} is not [ipv6]:port[:weight]")
            fields = rest[1:].split(":")
        else:
            host, *fields = item.split(":")
        if not host or not 1 <= len(fields) <= 2 or not all(f.isdigit() for f in fields):
            raise ValueError(f"memcached server {item!r} is not host:port or host:port:weight")
        port = int(fields[0])
        weight = int(fields[1]) if len(fields) == 2 else 1
        if not 0 < port < 65536:
            raise ValueError(f"memcached server {item!r}: port {port} is outside 1..65535")
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"memcached server {item!r}: weight {weight} is outside 1..{MAX_WEIGHT}")
        server = ServerSpec(host, port, weight)
        if any(s.name == server.name for s in servers):
            raise ValueError(f"memcached server {server.name} is named twice in {spec!r}")
        servers.append(server)
    return servers


def _md5_point(data: bytes, alignment: int) -> int:
    d = hashlib.md5(data).digest()
    i = alignment * 4
    return d[i] | d[i + 1] << 8 | d[i + 2] << 16 | d[i + 3] << 24


class Ketama:
    """The continuum: sorted points, each owned by a server index."""

    def __init__(self, servers: list[ServerSpec]) -> None:
        if not servers:
            raise ValueError("a memcached pool needs at least one server")
        total = sum(s.weight for s in servers)
        points: list[tuple[int, int]] = []
        for index, server in enumerate(servers):
            share = server.weight / total
            # twemproxy's arithmetic: points rounded down to a multiple of 4 (one MD5 each)
            count = int(math.floor(share * POINTS_PER_SERVER / POINTS_PER_HASH * len(servers) + 1e-10))
            for pointer in range(count):
                host = f"{server.name}-{pointer}".encode()
                points.extend((_md5_point(host, a), index) for a in range(POINTS_PER_HASH))
        points.sort()
        self._values = [value for value, _ in points]
        self._owners = [owner for _, owner in points]

    def server_of(self, key: bytes) -> int:
        at = bisect.bisect_left(self._values, _md5_point(key, 0))
        return self._owners[at if at < len(self._values) else 0]


class _Health:
    """Consecutive failures of one server, and until when it is marked down."""

    __slots__ = ("failures", "down_until")

    def __init__(self) -> None:
        self.failures = 0
        self.down_until = 0.0

    def ok(self) -> None:
        """An answer from the server: it is up."""
        if self.failures:
            self.failures = 0
            self.down_until = 0.0


class MemcachePool:
    """The same operations as ``MemcacheClient``, each sent to its key's server.

    ``servers``: a spec string or ``ServerSpec`` list. ``side`` labels errors and metrics.
    A server is marked down after ``fail_limit`` consecutive ``MemcacheUnavailable`` or
    ``MemcacheTimeout`` failures; while down its keys get ``MemcacheUnavailable`` at once;
    after ``retry_after`` s the next request tries it (one success clears the count, one
    more failure marks it down again). A ``CLIENT_ERROR``/``SERVER_ERROR`` reply is an
    answer from a live server and counts as no failure.
    """

    cmd_get = staticmethod(MemcacheClient.cmd_get)
    cmd_peek = staticmethod(MemcacheClient.cmd_peek)
    cmd_store = staticmethod(MemcacheClient.cmd_store)
    cmd_delete = staticmethod(MemcacheClient.cmd_delete)
    reply_get = MemcacheClient.reply_get
    reply_peek = MemcacheClient.reply_peek
    reply_store = MemcacheClient.reply_store
    reply_delete = MemcacheClient.reply_delete
    _unexpected = MemcacheClient._unexpected

    def __init__(self, servers: str | list[ServerSpec], *, side: str = "", max_connections: int = 16,
                 timeout: float = 1.0, connect_timeout: float = 1.0, fail_limit: int = 3,
                 retry_after: float = 2.0) -> None:
        specs = parse_servers(servers) if isinstance(servers, str) else list(servers)
        if fail_limit < 1 or retry_after <= 0:
            raise ValueError(f"fail_limit must be >= 1 and retry_after > 0, got {fail_limit} and {retry_after}")
        self.specs = specs
        self.side = side
        self.timeout = timeout
        self.fail_limit = fail_limit
        self.retry_after = retry_after
        self.clients = [MemcacheClient(s.host, s.port, side=side, max_connections=max_connections, timeout=timeout,
                                       connect_timeout=connect_timeout) for s in specs]
        self.server = f"{side} {','.join(s.name for s in specs)}".strip()
        self._health = [_Health() for _ in specs]
        self._health_of = {id(c): h for c, h in zip(self.clients, self._health)}
        self._ring = Ketama(specs) if len(specs) > 1 else None
        #: one pipelined connection per server for the listener's callback path
        self.relays = [RelayConnection(s.host, s.port, c.server, timeout=timeout, connect_timeout=connect_timeout,
                                       on_success=h.ok, on_failure=lambda c=c: self._failed(c))
                       for s, c, h in zip(specs, self.clients, self._health)]

    def __repr__(self) -> str:
        return f"MemcachePool({self.server})"

    # --- placement and health -----------------------------------------------------------

    def index_of(self, key: bytes) -> int:
        return 0 if self._ring is None else self._ring.server_of(key)

    def client_for(self, key: bytes) -> MemcacheClient:
        """The key's server; ``MemcacheUnavailable`` if it is marked down."""
        index = 0 if self._ring is None else self._ring.server_of(key)
        health = self._health[index]
        if health.down_until and time.monotonic() < health.down_until:
            client = self.clients[index]
            raise MemcacheUnavailable(client.server, f"marked down after {health.failures} consecutive failures; "
                                                     f"tried again in {health.down_until - time.monotonic():.1f}s")
        return self.clients[index]

    def relay_for(self, key: bytes) -> RelayConnection | None:
        """The key's server's pipelined connection (the listener's callback path); None
        while the server is marked down (the awaitable path then answers with the reason)."""
        index = 0 if self._ring is None else self._ring.server_of(key)
        down_until = self._health[index].down_until
        if down_until and time.monotonic() < down_until:
            return None
        return self.relays[index]

    def is_down(self, index: int) -> bool:
        return time.monotonic() < self._health[index].down_until

    def _failed(self, client: MemcacheClient) -> None:
        health = self._health_of[id(client)]
        health.failures += 1
        if health.failures >= self.fail_limit:
            health.down_until = time.monotonic() + self.retry_after

    def _ok(self, client: MemcacheClient) -> None:
        self._health_of[id(client)].ok()

    async def _on(self, key: bytes, call):
        client = self.client_for(key)
        try:
            result = await call(client)
        except (MemcacheUnavailable, MemcacheTimeout):
            self._failed(client)
            raise
        self._ok(client)
        return result

    # --- operations (as MemcacheClient's) ------------------------------------------------

    async def get(self, key: bytes, *, touch: int | None = None):
        return await self._on(key, lambda c: c.get(key, touch=touch))

    async def peek(self, key: bytes):
        return await self._on(key, lambda c: c.peek(key))

    async def store(self, key: bytes, value: bytes, **kwargs):
        return await self._on(key, lambda c: c.store(key, value, **kwargs))

    async def delete(self, key: bytes, *, cas: int | None = None):
        return await self._on(key, lambda c: c.delete(key, cas=cas))

    async def arith(self, key: bytes, delta: int, *, incr: bool = True):
        return await self._on(key, lambda c: c.arith(key, delta, incr=incr))

    async def touch(self, key: bytes, exptime: int) -> bool:
        return await self._on(key, lambda c: c.touch(key, exptime))

    async def forward(self, key: bytes, payload: bytes, reply_kind: int) -> bytes:
        """``payload`` (one text request for ``key``) sent as is; its reply's raw bytes.
        The hot path of ``passthrough``: ``_on`` inlined (no closure, one coroutine less)."""
        client = self.client_for(key)
        try:
            reply = await client.forward(payload, reply_kind)
        except (MemcacheUnavailable, MemcacheTimeout):
            self._failed(client)
            raise
        self._ok(client)
        return reply

    async def batch(self, requests: list[tuple[bytes, bytes]]) -> list[Reply]:
        """``[(key, encoded request), …]``: each server's share pipelined on one of its
        connections, the servers in parallel; the replies in the order of ``requests``.
        Raises the first failure (every server's share has finished or failed by then)."""
        if self._ring is None:
            client = self.client_for(requests[0][0])
            try:
                replies = await client.pipeline(b"".join(cmd for _, cmd in requests), len(requests))
            except (MemcacheUnavailable, MemcacheTimeout):
                self._failed(client)
                raise
            self._ok(client)
            return replies
        shares: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(requests):
            shares.setdefault(self.index_of(key), []).append(i)
        out: list[Reply | None] = [None] * len(requests)

        async def send(index: int, positions: list[int]) -> None:
            keys = [requests[i][0] for i in positions]
            client = self.client_for(keys[0])
            try:
                replies = await client.pipeline(b"".join(requests[i][1] for i in positions), len(positions))
            except (MemcacheUnavailable, MemcacheTimeout):
                self._failed(client)
                raise
            self._ok(client)
            for i, reply in zip(positions, replies):
                out[i] = reply

        results = await asyncio.gather(*(send(i, p) for i, p in shares.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return out  # type: ignore[return-value]

    async def flush_all(self, delay: int = 0) -> None:
        """``flush_all [delay]`` on every server of the pool; raises the first failure, naming it."""
        results = await asyncio.gather(*(c.flush_all(delay) for c in self.clients), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def close(self) -> None:
        for relay in self.relays:
            relay.close()
        for client in self.clients:
            await client.close()


__all__ = ["Ketama", "MemcachePool", "ServerSpec", "parse_servers"]
