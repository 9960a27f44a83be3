"""A steady workload through the proxy that records every operation it makes, with its outcome.

Responsible for: clients that write, delete and read entities, send batches (several keys,
one ts) and entity-group transactions (a read, then a read-check-write under the group's
lock), and use the cache (get, fill on a miss, set, delete) — through the proxy's HTTP
API, and for the cache through its memcache listener when the endpoint names one — and
that record each op into a ``History`` for the checker with one of three outcomes.
Must never: drop an op it invoked, or call an op failed that may have happened.

Outcomes (see ``nxnw/history.py``):

* ``ok`` -- a 2xx (a read's 404 and a cache miss included), with the ts and value it named.
* ``failed`` -- nothing reached an engine or memcached: a 4xx (bad input never reaches an
  engine; 409 is a transaction conflict), a 503 whose JSON ``error`` is one of
  ``REFUSED_ERRORS`` (the proxy's marker for "refused before any engine call"), a cache
  set answered ``stored: false``/``NOT_STORED``, memcached's ``CLIENT_ERROR``, or a
  connection that could not be opened (the request was never sent).
* ``unknown`` -- everything else: a timeout (the client gave up mid-request), a dropped
  connection, a 5xx without the marker (a 503 after the request was admitted may follow
  an engine write), memcached's ``SERVER_ERROR``.

Endpoints and fail-over: each client gets its endpoints from ``endpoint_for(client)`` —
one ``Endpoint`` or a list of them. An endpoint is a fixed address or a DNS name the
client resolves once per TTL, the way a real client does, so the DNS hand-off is measured
by the clients themselves (``stats.reached``: which address each request reached, and
when). After a connection error, a timeout or a 503 a client moves on to its next
endpoint for its next op.

Options (all keyword arguments; the defaults keep the historical behaviour of a mixed
read/write/cache load):

* ``mix`` -- relative weights of ``read``, ``write``, ``delete``, ``batch``,
  ``transaction`` and ``cache`` ops (``DEFAULT_MIX``); a weight of 0 turns one off.
* ``groups`` -- entity groups: key ``i`` belongs to group ``i % groups``; a transaction
  reads and writes keys of one group.
* ``client_timeout`` -- seconds a client waits for any one request before it gives up
  (the op is then ``unknown``); ``set_client_timeout(seconds)`` changes it for requests
  started from then on (``None``: back to ``client_timeout``) — the "clients that time out
  mid-write" fault.

Every write and cache set carries a value of its own (``c<client>-<n>``), so that a
value read names the write that made it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from dns_handoff.resolve import answer
from nxnw.history import History, Part, PendingOp
from proxy.api import encode_key
from sync.aio import io_executor, run_blocking

#: the JSON ``error`` of a 503 with which the proxy says: refused before any engine or
#: memcached call, so the op definitely did not happen
REFUSED_ERRORS = frozenset({"refused"})
DEFAULT_MIX: Mapping[str, float] = {"read": 0.34, "write": 0.26, "delete": 0.06, "batch": 0.04,
                                    "transaction": 0.04, "cache": 0.26}
OP_CLASSES = tuple(DEFAULT_MIX)
DEFAULT_CLIENT_TIMEOUT = 10.0


class WorkloadError(ValueError):
    """A workload option that cannot work; the message names it and its value."""


@dataclass
class Endpoint:
    """How clients find one data endpoint: a fixed address, or a DNS name resolved per TTL.

    ``memcache_port``: the proxy's memcache listener on the same address; when set, cache
    ops use it instead of the HTTP cache endpoints.
    """

    port: int
    address: str = "127.0.0.1"
    dns_server: str | None = None
    dns_name: str | None = None
    ttl: float = 5.0
    memcache_port: int | None = None
    _resolved_at: float = -1e9

    async def current(self) -> str:
        if self.dns_server and self.dns_name and time.monotonic() - self._resolved_at >= self.ttl:
            try:
                addresses = await run_blocking(answer, self.dns_server, self.dns_name, "A", executor=io_executor())
            except Exception:  # noqa: BLE001 — a failed lookup keeps the last answer, as a resolver cache does
                addresses = []
            if addresses:
                self.address = addresses[0]
                self._resolved_at = time.monotonic()
        return self.address


@dataclass
class WorkloadStats:
    requests: int = 0
    #: requests the proxy did not serve: not acknowledged, and not a transaction conflict
    failed: int = 0
    #: transactions refused with 409 because their read set had changed (a normal answer)
    conflicts: int = 0
    #: of those, the ones whose outcome is unknown
    unknown: int = 0
    #: (wall-clock second, address reached) of every request, for the switch-over figures
    reached: list[tuple[float, str]] = field(default_factory=list)
    #: (wall-clock second, address, hit) of every cache read, for the cache's warmth
    cache_reads: list[tuple[float, str, bool]] = field(default_factory=list)

    def cache_hit_ratio(self, address: str, since: float, seconds: float) -> float | None:
        """Hits among cache reads served by ``address`` in the window after ``since``."""
        window = [hit for t, a, hit in self.cache_reads if a == address and since <= t < since + seconds]
        return sum(window) / len(window) if window else None


@dataclass
class _Answer:
    """What one request came back with, reduced to what the history needs."""

    outcome: str              # "ok" | "failed" | "unknown"
    status: int | None = None
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; ``{}`` when it is not one (the caller then sees no field)."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def read_ts(self) -> int | None:
        """The ``X-Nxnw-Timestamp`` of a read answered 200, else None."""
        try:
            return int(self.headers["X-Nxnw-Timestamp"]) if self.status == 200 else None
        except (KeyError, ValueError):
            return None

    @property
    def moves_on(self) -> bool:
        """The client tries its next endpoint after this answer."""
        return self.status is None or self.status == 503


def http_outcome(status: int, body: bytes) -> str:
    """``ok``, ``failed`` or ``unknown`` for an HTTP answer of the proxy (module docstring)."""
    if 200 <= status < 300:
        return "ok"
    if 400 <= status < 500:
        return "failed"
    if status == 503:
        try:
            error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            error = None
        if error in REFUSED_ERRORS:
            return "failed"
    return "unknown"


class _Client:
    """One client: its endpoints, its HTTP session, its memcache connection, its counter."""

    def __init__(self, workload: Workload, cid: int) -> None:
        self.w = workload
        self.cid = cid
        self.name = f"c{cid}"
        self.rng = random.Random(workload.seed * 1000 + cid)
        found = workload.endpoint_for(cid)
        self.endpoints: list[Endpoint] = [found] if isinstance(found, Endpoint) else list(found)
        if not self.endpoints:
            raise WorkloadError(f"endpoint_for({cid}) named no endpoint")
        self.current = 0
        self.n = 0          # values made so far (each write and set has its own)
        self.seq = 0        # batches and transactions sent so far (their ids)
        self.ops: dict[str, Callable[[str, str], Awaitable[_Answer]]] = {
            "read": self._read, "write": self._write, "delete": self._delete, "batch": self._batch,
            "transaction": self._transaction, "cache": self._cache}
        self.http: aiohttp.ClientSession | None = None
        self._mc: tuple[str, int, asyncio.StreamReader, asyncio.StreamWriter] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self.current]

    def value(self) -> bytes:
        self.n += 1
        return f"{self.name}-{self.n}".encode()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as self.http:
            # aiohttp resends a GET, PUT or DELETE once on a new connection when a kept-alive one
            # drops mid-request (RFC 9112 9.3.1); a refused resend would then hide that the first
            # attempt reached a proxy (one killed while it wrote). Without the resend, a refused
            # connection always means nothing was sent (failed) and a dropped one is unknown.
            # The switch is the one aiohttp's own test client turns off.
            self.http._retry_connection = False
            try:
                while not self.w._stop.is_set():
                    await self.one_op()
                    await asyncio.sleep(self.w.pause)
            finally:
                await self._close_memcache()

    async def one_op(self) -> None:
        what = self.rng.choices(OP_CLASSES, weights=[self.w.mix[c] for c in OP_CLASSES])[0]
        address = await self.endpoint.current()
        base = f"http://{address}:{self.endpoint.port}"
        got = await self.ops[what](base, address)
        if got.moves_on:
            self.current = (self.current + 1) % len(self.endpoints)

    # --- data ops -------------------------------------------------------------------------

    def _entity_url(self, base: str, key: str) -> str:
        return f"{base}/v1/apps/{self.w.app}/kinds/{self.w.kind}/entities/{encode_key(key.encode())}"

    async def _read(self, base: str, address: str, key: str | None = None) -> _Answer:
        key = key or self.rng.choice(self.w.keys)
        op = self.w.history.begin(self.name, "read", key)
        got = await self._request("GET", self._entity_url(base, key), address)
        if got.status == 404:           # no live entity: an acknowledged read of nothing
            op.succeed(None)
        elif got.outcome == "ok" and got.read_ts() is not None:
            op.succeed(got.read_ts(), got.body)
        else:
            self._record_unacked(op, got)
        return got

    async def _write(self, base: str, address: str) -> _Answer:
        key = self.rng.choice(self.w.keys)
        value = self.value()
        op = self.w.history.begin(self.name, "write", key, value)
        got = await self._request("PUT", self._entity_url(base, key), address, data=value)
        self._record_ts(op, got)
        return got

    async def _delete(self, base: str, address: str) -> _Answer:
        key = self.rng.choice(self.w.keys)
        op = self.w.history.begin(self.name, "delete", key)
        got = await self._request("DELETE", self._entity_url(base, key), address)
        self._record_ts(op, got)
        return got

    async def _batch(self, base: str, address: str) -> _Answer:
        keys = self.rng.sample(self.w.keys, min(len(self.w.keys), self.rng.randint(2, 4)))
        parts = [Part("delete", k) if self.rng.random() < 0.1 else Part("write", k, self.value()) for k in keys]
        self.seq += 1
        op = self.w.history.begin_many(self.name, parts, batch=f"{self.name}-b{self.seq}")
        got = await self._request("POST", f"{base}/v1/apps/{self.w.app}/batch", address,
                                  json={"writes": [self._item(p) for p in parts]})
        self._record_ts(op, got)
        return got

    async def _transaction(self, base: str, address: str) -> _Answer:
        """Read one key of a group, then commit a write of it and of another key of the
        group on condition that the first one is still at the ts read."""
        groups = self.w.groups
        first = self.rng.randrange(len(self.w.keys))
        others = [i for i in range(first % groups, len(self.w.keys), groups) if i != first]
        keys = [self.w.keys[first], *([self.w.keys[self.rng.choice(others)]] if others else [])]
        read = await self._read(base, address, keys[0])
        checked = read.read_ts()
        if checked is None and read.status != 404:
            return read
        writes = [Part("write", k, self.value()) for k in keys]
        self.seq += 1
        op = self.w.history.begin_many(self.name, [Part("read", keys[0], checked_ts=checked), *writes],
                                       batch=f"{self.name}-t{self.seq}")
        body = {"group": f"g{first % groups}",
                "reads": [{"kind": self.w.kind, "key": _b64(keys[0]), "ts": checked}],
                "writes": [self._item(p) for p in writes]}
        got = await self._request("POST", f"{base}/v1/apps/{self.w.app}/transactions", address, json=body)
        self._record_ts(op, got)
        return got

    def _item(self, part: Part) -> dict[str, Any]:
        value = None if part.value is None else base64.b64encode(part.value).decode()  # type: ignore[arg-type]
        return {"kind": self.w.kind, "key": _b64(part.key), "value": value}

    def _record_ts(self, op: PendingOp, got: _Answer) -> None:
        ts = got.json().get("ts") if got.outcome == "ok" else None
        if isinstance(ts, int) and not isinstance(ts, bool):
            op.succeed(ts)
        else:
            self._record_unacked(op, got if got.outcome != "ok" else _Answer("unknown", got.status, got.body))

    def _record_unacked(self, op: PendingOp, got: _Answer) -> None:
        if got.status == 409:
            self.w.stats.conflicts += 1
        else:
            self.w.stats.failed += 1
        if got.outcome == "failed":
            op.failed()
        else:
            self.w.stats.unknown += 1
            op.unknown()

    # --- cache ops ------------------------------------------------------------------------

    async def _cache(self, base: str, address: str) -> _Answer:
        """What an app does with its cache: mostly read and fill on a miss; sometimes
        update or invalidate."""
        key = f"{self.w.app}:session-{self.rng.randrange(len(self.w.keys))}"
        roll = self.rng.random()
        if roll < 0.15:
            return await self._cache_delete(base, address, key)
        if roll < 0.35:
            return await self._cache_set(base, address, key)
        got = await self._cache_get(base, address, key)
        if got.status == 404:
            return await self._cache_set(base, address, key)
        return got

    def _cache_url(self, base: str, key: str) -> str:
        return f"{base}/v1/cache/{encode_key(key.encode())}"

    async def _cache_get(self, base: str, address: str, key: str) -> _Answer:
        op = self.w.history.begin(self.name, "cache_get", key)
        if self.endpoint.memcache_port:
            got = await self._memcache(address, b"get %s\r\n" % key.encode(), address)
        else:
            got = await self._request("GET", self._cache_url(base, key), address)
        if got.outcome == "ok" or got.status == 404:     # 404: a miss
            hit = got.status == 200
            op.succeed(value=got.body if hit else None)
            self.w.stats.cache_reads.append((time.time(), address, hit))
        else:
            self._record_unacked(op, got)
        return got

    async def _cache_set(self, base: str, address: str, key: str) -> _Answer:
        value = self.value()
        op = self.w.history.begin(self.name, "cache_set", key, value)
        if self.endpoint.memcache_port:
            got = await self._memcache(address, b"set %s 0 600 %d\r\n%s\r\n" % (key.encode(), len(value), value),
                                       address)
        else:
            got = await self._request("PUT", self._cache_url(base, key), address, data=value, params={"ttl": "600"})
            stored = got.json().get("stored") if got.outcome == "ok" else None
            if got.outcome == "ok" and stored is not True:
                got = _Answer("failed" if stored is False else "unknown", got.status, got.body)
        if got.outcome == "ok":
            op.succeed()
        else:
            self._record_unacked(op, got)
        return got

    async def _cache_delete(self, base: str, address: str, key: str) -> _Answer:
        op = self.w.history.begin(self.name, "cache_delete", key)
        if self.endpoint.memcache_port:
            got = await self._memcache(address, b"delete %s\r\n" % key.encode(), address)
        else:
            got = await self._request("DELETE", self._cache_url(base, key), address)
        if got.outcome == "ok":
            op.succeed()
        else:
            self._record_unacked(op, got)
        return got

    # --- transports -----------------------------------------------------------------------

    async def _request(self, method: str, url: str, address: str, **kwargs: Any) -> _Answer:
        assert self.http is not None
        self.w.stats.requests += 1
        timeout = aiohttp.ClientTimeout(total=self.w.client_timeout)
        try:
            async with self.http.request(method, url, timeout=timeout, **kwargs) as resp:
                body = await resp.read()
                got = _Answer(http_outcome(resp.status, body), resp.status, body, dict(resp.headers))
        except aiohttp.ClientConnectorError:
            got = _Answer("failed")  # never connected, and never resent (see ``run``): nothing was sent
        except (aiohttp.ClientError, asyncio.TimeoutError):
            got = _Answer("unknown")
        self.w.stats.reached.append((time.time(), address))
        return got

    async def _memcache(self, host: str, command: bytes, address: str) -> _Answer:
        """One text-protocol command on this client's connection to the listener; a get
        answers status 200 (hit, body = value) or 404 (miss), like the HTTP endpoint."""
        port = self.endpoint.memcache_port
        assert port is not None
        self.w.stats.requests += 1
        try:
            async with asyncio.timeout(self.w.client_timeout):
                if self._mc is None or self._mc[:2] != (host, port):
                    await self._close_memcache()
                    try:
                        reader, writer = await asyncio.open_connection(host, port)
                    except OSError:
                        return _Answer("failed")
                    self._mc = (host, port, reader, writer)
                _, _, reader, writer = self._mc
                writer.write(command)
                await writer.drain()
                line = await reader.readuntil(b"\r\n")
                if line.startswith(b"VALUE "):
                    size = int(line.split()[3])
                    value = (await reader.readexactly(size + 2))[:-2]
                    if await reader.readuntil(b"\r\n") != b"END\r\n":
                        raise ValueError("no END after the value")
                    got = _Answer("ok", 200, value)
                elif line in (b"END\r\n", b"NOT_FOUND\r\n"):
                    got = _Answer("ok", 404)
                elif line in (b"STORED\r\n", b"DELETED\r\n"):
                    got = _Answer("ok", 200)
                elif line == b"NOT_STORED\r\n" or line.startswith(b"CLIENT_ERROR"):
                    got = _Answer("failed", 400, line)
                else:
                    got = _Answer("unknown", 503, line)   # SERVER_ERROR: said nothing about what happened
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, IndexError):
            await self._close_memcache()
            got = _Answer("unknown")
        finally:
            self.w.stats.reached.append((time.time(), address))
        if got.status == 503:
            await self._close_memcache()
        return got

    async def _close_memcache(self) -> None:
        if self._mc is not None:
            writer = self._mc[3]
            self._mc = None
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def _b64(key: str) -> str:
    return base64.b64encode(key.encode()).decode()


class Workload:
    """``clients`` concurrent clients on ``keys`` keys of one kind (options: module docstring)."""

    def __init__(self, app: str, endpoint_for: Callable[[int], Endpoint | Sequence[Endpoint]], *, clients: int = 4,
                 keys: int = 200, kind: str = "Item", history: History | None = None, pause: float = 0.002,
                 seed: int = 1, mix: Mapping[str, float] | None = None, groups: int = 8,
                 client_timeout: float = DEFAULT_CLIENT_TIMEOUT) -> None:
        mix = dict(DEFAULT_MIX if mix is None else mix)
        unknown = set(mix) - set(OP_CLASSES)
        if unknown or any(w < 0 for w in mix.values()) or not any(mix.values()):
            raise WorkloadError(f"mix {mix} must weigh some of {', '.join(OP_CLASSES)} with weights >= 0")
        if groups < 1 or keys < 1 or clients < 1:
            raise WorkloadError(f"clients ({clients}), keys ({keys}) and groups ({groups}) must be at least 1")
        if client_timeout <= 0:
            raise WorkloadError(f"client_timeout {client_timeout} must be > 0 seconds")
        self.app = app
        self.kind = kind
        self.keys = [f"key-{i:05d}" for i in range(keys)]
        self.endpoint_for = endpoint_for
        self.clients = clients
        self.history = history if history is not None else History()
        self.pause = pause
        self.seed = seed
        self.mix = {c: mix.get(c, 0.0) for c in OP_CLASSES}
        self.groups = groups
        self.default_timeout = client_timeout
        self.client_timeout = client_timeout
        self.stats = WorkloadStats()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(_Client(self, i).run()) for i in range(self.clients)]

    def set_client_timeout(self, seconds: float | None) -> None:
        """The timeout of requests started from now on (``None``: back to the default)."""
        if seconds is not None and seconds <= 0:
            raise WorkloadError(f"client timeout {seconds} must be > 0 seconds")
        self.client_timeout = self.default_timeout if seconds is None else seconds

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
