"""The Cassandra engine: one keyspace per deployment, one table per app, cassandra-driver.

URL: ``cassandra://host[,host…][:port]/keyspace[?local_dc=dc1&consistency=LOCAL_QUORUM&batch_kib=32]``.
The keyspace must exist (its replication is the operator's choice, not ours); tables are
created on the first write to an app.

Authentication and TLS, also URL parameters, so that every process that opens the engine
from its URL (proxies, Dask workers) connects the same way: ``username=NAME`` with
``password_env=VAR`` or ``password_file=/path`` (the driver's PlainTextAuthProvider; a
``password=`` in the URL is refused, since URLs are logged and handed to workers);
``tls=true`` verifies the nodes' certificates, hostnames (node addresses) included, against
``tls_ca=/path.pem`` (the system's CAs without it) and presents ``tls_cert=``/``tls_key=``
when the cluster requires client certificates. Files and variables are read when the engine
is built; a missing one is ``EngineUnavailable`` naming it, never the secret.

Table layout, and why deletes are not ``DELETE``::

    CREATE TABLE "<keyspace>"."<app>" (rk blob PRIMARY KEY, value blob, deleted boolean)

Every write, put or delete, is one ``INSERT … USING TIMESTAMP <entity ts>`` that sets
*both* columns: a put writes ``(value, deleted=false)``, a delete writes ``(value=null,
deleted=true)`` — the null is a real Cassandra cell tombstone. Last-write-wins is then
Cassandra's own cell reconciliation, with no read before the write: the newer timestamp
wins, cell by cell, and because both cells of a write carry the same timestamp the winner
is the same write in both. A native ``DELETE`` would not do: Cassandra never returns a
deleted row nor its timestamp, and the engine contract needs tombstones as rows
(``scan(tombstones=True)``, ``read``) so that exports carry deletes and verify can repair
by timestamp. The ``deleted`` cell is live, so a tombstone row is never purged by
``gc_grace_seconds``; it costs one small row per deleted key, as on the other engines.

Equal timestamps: the contract (``Entity.wins_over``) says a tombstone wins over a value,
and of two values the greater, byte-wise. That is Cassandra's own rule for a timestamp tie
between two cells: "a cell tombstone beats a live cell, else the greater value wins"
(unsigned bytes), in any arrival order and inside one batch too. Between a put and a
delete the ``value`` column's tombstone beats the put's live value, and ``deleted=true``
(0x01) is the greater value against ``deleted=false`` (0x00); between two puts
``deleted`` is equal and ``value`` decides. The other engines follow this rule; nothing
here has to.

Bulk writes: ``apply`` of many entities sends them as ``UNLOGGED`` batches of entities
owned by the same replicas, each under a byte budget (``batch_kib``, 32 KiB by default,
below Cassandra's default 50 KiB ``batch_size_fail_threshold``); a single write or an
entity larger than the budget goes alone. An unlogged batch is not atomic, which the
contract does not ask for, and each statement in it keeps its own ``USING TIMESTAMP``, so
last-write-wins is unchanged. Batching is what lets the Python driver, whose per-request
cost dominates, load ~10× more entities per second than one request per entity. A
snapshot's rows (``apply_rows``, ``scan_rows``) become statement parameters, and scanned
rows become rows, with no ``Entity`` built on the way.

Ranges are token ranges: the ring's own boundaries (the vnode tokens of every node), cut
further at midpoints when a snapshot asks for more ranges than the ring has. A
``KeyRange`` holds decimal Murmur3 tokens, start inclusive and end exclusive, and the
first and last ranges are open-ended, so together they cover the whole token space and
every row, including rows written after ``ranges`` was called, is in exactly one range.

The event loop never blocks: statements run with ``execute_async`` and the driver's
callbacks resolve an asyncio future through ``loop.call_soon_threadsafe``. The driver's
blocking calls (connect, prepare, shutdown) run on one small executor owned by the engine.
"""

from __future__ import annotations

import asyncio
import logging
import heapq
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from cassandra import ConsistencyLevel, InvalidRequest, OperationTimedOut, ReadTimeout, Unavailable, WriteTimeout
from cassandra.auth import PlainTextAuthProvider
from cassandra.connection import ConnectionBusy
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement, tuple_factory

from datastore.engine import Engine, EngineUnavailable, KeyRange
from datastore.model import APP_PATTERN, Entity, EntityRef, Row, check_app
from datastore.secret import SecretUnavailable, read_secret

T = TypeVar("T")

DEFAULT_PORT = 9042
#: Murmur3Partitioner's token space; ``MIN_TOKEN`` itself is never a row's token.
MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1
#: Requests (single writes or batches) in flight per ``apply`` call: enough to keep a node
#: busy, bounded so that a snapshot chunk of 100,000 entities does not queue 100,000
#: requests in the driver.
MAX_IN_FLIGHT = 64
#: Bytes of keys and values in flight per ``apply`` call, so that large values do not fill
#: the driver's socket buffer (it then refuses requests: see ``BusyRetry``).
MAX_IN_FLIGHT_BYTES = 4 * 1024 * 1024
DEFAULT_BATCH_KIB = 32
#: Entities per batch at most, whatever their size (Cassandra warns above
#: ``unlogged_batch_across_partitions_warn_threshold`` partitions per batch).
MAX_BATCH_ENTITIES = 100
#: What a write costs in a batch beyond its key and value (cell headers, timestamps).
ENTITY_OVERHEAD_BYTES = 64
#: Errors after which the engine is, for the caller, not answering (the proxy journals the
#: write for repair; the loader retries the chunk).
UNAVAILABLE_ERRORS = (NoHostAvailable, OperationTimedOut, Unavailable, ReadTimeout, WriteTimeout)
#: One write's parameters to the write statement: ``(rk, value, deleted, timestamp)``.
_Write = tuple[bytes, bytes | None, bool, int]


def _quote(name: str) -> str:
    """A CQL identifier, quoted so that an app called ``select`` is still a table name."""
    return '"' + name.replace('"', '""') + '"'


def _is_busy(exc: BaseException) -> bool:
    """The driver refused to send because every connection's socket buffer is full."""
    return isinstance(exc, NoHostAvailable) and bool(exc.errors) and all(
        isinstance(err, ConnectionBusy) for err in exc.errors.values())



class _ProtocolNegotiationFilter(logging.Filter):
    """The driver offers its newest protocol and logs a warning for every step down to the
    server's; against a Cassandra 4 or 5 that is two warnings per connect and means
    nothing. Negotiation itself stays on, so older clusters (3.x, v4) still work."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Downgrading core protocol version")


logging.getLogger("cassandra.cluster").addFilter(_ProtocolNegotiationFilter())

class BusyRetry:
    """Backoff for a request the driver refused with ``ConnectionBusy``.

    The driver raises it, instead of queueing, when a connection's socket buffer is full
    (large values, many writes in flight). The request never left, so sending it again is
    always safe, whatever the statement. Gives up with ``EngineUnavailable`` at the deadline.
    """

    def __init__(self, address: str, deadline_s: float = 30.0, first_delay_s: float = 0.002, max_delay_s: float = 0.2) -> None:
        self.address = address
        self.deadline = time.monotonic() + deadline_s
        self.deadline_s = deadline_s
        self.delay = first_delay_s
        self.max_delay = max_delay_s

    async def wait(self, exc: BaseException) -> None:
        if time.monotonic() + self.delay > self.deadline:
            raise EngineUnavailable(f"cassandra at {self.address} stayed busy for {self.deadline_s:.0f} s: {exc}") from exc
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.max_delay)


def _is_missing_table(exc: BaseException) -> bool:
    return isinstance(exc, InvalidRequest) and "unconfigured table" in str(exc)


def token_bounds(key_range: KeyRange) -> tuple[int, int]:
    """The inclusive token interval ``[lo, hi]`` of a ``KeyRange`` made by this engine."""
    try:
        lo = int(key_range.start) if key_range.start else MIN_TOKEN
        hi = int(key_range.end) - 1 if key_range.end else MAX_TOKEN
    except ValueError:
        raise ValueError(f"key range {key_range} is not a Cassandra token range (decimal Murmur3 tokens)") from None
    if not (MIN_TOKEN <= lo and hi <= MAX_TOKEN):
        raise ValueError(f"key range {key_range} lies outside the Murmur3 token space [{MIN_TOKEN}, {MAX_TOKEN}]")
    return lo, hi


def split_token_ring(tokens: Iterable[int], at_least: int) -> list[KeyRange]:
    """Cut the token space at each node token, then halve the widest pieces until there are
    ``at_least`` of them. A node token ``t`` owns ``(previous, t]``, so the cut is at ``t + 1``."""
    cuts = sorted({t + 1 for t in tokens if MIN_TOKEN <= t < MAX_TOKEN})
    points = [MIN_TOKEN, *cuts, MAX_TOKEN + 1]
    spans = [(-(b - a), a, b) for a, b in zip(points, points[1:])]
    heapq.heapify(spans)
    while len(spans) < at_least:
        width, a, b = heapq.heappop(spans)
        if -width < 2:
            heapq.heappush(spans, (width, a, b))
            break
        mid = a + (b - a) // 2
        heapq.heappush(spans, (-(mid - a), a, mid))
        heapq.heappush(spans, (-(b - mid), mid, b))
    ordered = sorted((a, b) for _, a, b in spans)
    return [KeyRange("" if a == MIN_TOKEN else str(a), "" if b == MAX_TOKEN + 1 else str(b)) for a, b in ordered]


@dataclass(frozen=True, slots=True)
class _AppStatements:
    write: PreparedStatement
    read: PreparedStatement
    scan: PreparedStatement


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _auth_provider(url: str, query: dict[str, str]) -> PlainTextAuthProvider | None:
    """The URL's username and the password it names (by variable or file), or None."""
    if "password" in query:
        raise EngineUnavailable(f"cassandra URL {url.split('?', 1)[0]!r}: a password does not go in the URL; "
                                "name it with password_env=VAR or password_file=/path")
    username = query.get("username")
    sources = {k.removeprefix("password_"): v for k, v in query.items() if k in ("password_env", "password_file")}
    if username is None and not sources:
        return None
    if username is None or len(sources) != 1:
        raise EngineUnavailable(f"cassandra URL {url!r}: username= goes with exactly one of password_env= or password_file=")
    try:
        return PlainTextAuthProvider(username=username, password=read_secret(**sources))
    except SecretUnavailable as exc:
        raise EngineUnavailable(f"cassandra URL {url!r}: password: {exc}") from None


def _ssl_context(url: str, query: dict[str, str]) -> ssl.SSLContext | None:
    """A client TLS context verifying the nodes (``tls=true``, ``tls_ca``, ``tls_cert``/``tls_key``), or None."""
    tls = query.get("tls", "false").lower()
    if tls not in ("true", "false"):
        raise EngineUnavailable(f"cassandra URL {url!r}: tls={tls!r} is not true or false")
    files = {k: query[k] for k in ("tls_ca", "tls_cert", "tls_key") if k in query}
    if tls == "false":
        if files:
            raise EngineUnavailable(f"cassandra URL {url!r}: {', '.join(files)} need tls=true")
        return None
    if ("tls_cert" in files) != ("tls_key" in files):
        raise EngineUnavailable(f"cassandra URL {url!r}: tls_cert and tls_key go together")
    context = ssl.create_default_context()
    try:
        if "tls_ca" in files:
            context.load_verify_locations(cafile=files["tls_ca"])
        if "tls_cert" in files:
            context.load_cert_chain(files["tls_cert"], files["tls_key"])
    except (OSError, ssl.SSLError) as exc:
        raise EngineUnavailable(f"cassandra URL {url!r}: TLS files: {getattr(exc, 'strerror', None) or exc}") from None
    return context


class CassandraEngine(Engine):
    scheme = "cassandra"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        keyspace = parts.path.strip("/")
        if not keyspace or not APP_PATTERN.fullmatch(keyspace):
            raise EngineUnavailable(f"cassandra URL {url!r} names no valid keyspace; use cassandra://host:port/keyspace")
        self.keyspace = keyspace
        self.hosts, self.port = self._parse_hosts(url, parts.netloc)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.local_dc = query.get("local_dc")
        level = query.get("consistency", "LOCAL_QUORUM").upper()
        if level not in ConsistencyLevel.name_to_value:
            raise EngineUnavailable(f"consistency {level!r} in {url!r} is not a Cassandra consistency level")
        self.consistency = ConsistencyLevel.name_to_value[level]
        batch_kib = query.get("batch_kib", str(DEFAULT_BATCH_KIB))
        if not batch_kib.isdigit():
            raise EngineUnavailable(f"batch_kib {batch_kib!r} in {url!r} is not a whole number of KiB (0 turns batching off)")
        self.batch_bytes = int(batch_kib) * 1024
        self.address = f"{','.join(self.hosts)}:{self.port}/{self.keyspace}"
        self._auth = _auth_provider(url, query)
        self._ssl_context = _ssl_context(url, query)
        self._executor: ThreadPoolExecutor | None = None
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._statements: dict[str, _AppStatements] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def _parse_hosts(url: str, netloc: str) -> tuple[list[str], int]:
        hosts, port = [], DEFAULT_PORT
        for item in filter(None, netloc.split(",")):
            host, sep, port_text = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
            if sep:
                if not port_text.isdigit():
                    raise EngineUnavailable(f"port {port_text!r} in {url!r} is not a number")
                port = int(port_text)
            hosts.append(host)
        if not hosts:
            raise EngineUnavailable(f"cassandra URL {url!r} names no host")
        return hosts, port

    # --- plumbing: the driver's threads and the event loop --------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineUnavailable(f"cassandra engine {self.address} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _start(self, statement: Any, params: Sequence[Any] | None = None) -> ResponseFuture:
        if self._session is None:
            raise EngineUnavailable(f"cassandra engine {self.address} is not open")
        return self._session.execute_async(statement, params)

    def _unavailable(self, exc: BaseException) -> BaseException:
        if isinstance(exc, UNAVAILABLE_ERRORS):
            return EngineUnavailable(f"cassandra at {self.address} did not answer: {type(exc).__name__}: {exc}")
        return exc

    def _send(self, statement: Any, params: Sequence[Any] | None = None) -> asyncio.Future:
        """Start a statement; the returned future resolves on the loop with its first page
        (or the driver's own exception)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        response = self._start(statement, params)
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(_set_result, fut, rows),
            lambda exc: loop.call_soon_threadsafe(_set_exception, fut, exc),
        )
        return fut

    async def _execute(self, statement: Any, params: Sequence[Any] | None = None) -> list:
        """Run a statement to its first page, sending it again while the connection is busy."""
        retry: BusyRetry | None = None  # made on the first refusal: most requests never meet one
        while True:
            try:
                return await self._send(statement, params)
            except NoHostAvailable as exc:
                if not _is_busy(exc):
                    raise self._unavailable(exc) from exc
                retry = retry or BusyRetry(self.address)
                await retry.wait(exc)
            except UNAVAILABLE_ERRORS as exc:
                raise self._unavailable(exc) from exc

    async def _pages(self, statement: PreparedStatement, params: Sequence[Any], page_size: int) -> AsyncIterator[list[tuple]]:
        """Yield a paged query's pages; the next page is fetched while the caller works."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[list[tuple] | None, BaseException | None]] = asyncio.Queue()
        bound = statement.bind(params)
        bound.fetch_size = page_size  # on the bound copy: the prepared statement is shared
        response: ResponseFuture | None = None

        def fetch() -> None:
            nonlocal response
            if response is None:
                response = self._start(bound)
                # The driver calls these again for every page start_fetching_next_page fetches.
                response.add_callbacks(
                    lambda rows: loop.call_soon_threadsafe(queue.put_nowait, (rows, None)),
                    lambda exc: loop.call_soon_threadsafe(queue.put_nowait, (None, exc)),
                )
            else:
                response.start_fetching_next_page()

        retry = BusyRetry(self.address)
        first_page_seen = False
        fetch()
        while True:
            rows, exc = await queue.get()
            if exc is not None:
                if not _is_busy(exc):
                    raise self._unavailable(exc) from exc
                await retry.wait(exc)
                if not first_page_seen:
                    response = None  # the query itself never left: send it again
                fetch()
                continue
            first_page_seen = True
            retry = BusyRetry(self.address)
            assert response is not None
            more = response.has_more_pages
            if more:
                fetch()
            yield list(rows or ())
            if not more:
                return

    # --- lifecycle ----------------------------------------------------------------------

    def _connect(self) -> tuple[Cluster, Session]:
        balancing = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc))
        profile = ExecutionProfile(load_balancing_policy=balancing, consistency_level=self.consistency,
                                   request_timeout=30.0, row_factory=tuple_factory)
        cluster = Cluster(contact_points=self.hosts, port=self.port, connect_timeout=5.0,
                          execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                          auth_provider=self._auth, ssl_context=self._ssl_context)
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            raise

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"cassandra-{self.keyspace}")
        try:
            self._cluster, self._session = await self._run(self._connect)
        except Exception as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise EngineUnavailable(f"cannot connect to cassandra at {self.address}: {type(exc).__name__}: {exc}") from exc
        rows = await self._execute("SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = %s", [self.keyspace])
        if not rows:
            await self.close()
            raise EngineUnavailable(f"keyspace {self.keyspace!r} does not exist at {self.address}; create it with the replication this deployment needs")

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._cluster is not None:
            await self._run(self._cluster.shutdown)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._cluster = None
        self._session = None
        self._statements.clear()

    # --- tables and prepared statements ---------------------------------------------------

    def _table(self, app: str) -> str:
        return f"{_quote(self.keyspace)}.{_quote(check_app(app))}"

    async def _table_exists(self, app: str) -> bool:
        rows = await self._execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND table_name = %s", [self.keyspace, app])
        return bool(rows)

    def _prepare(self, app: str) -> _AppStatements:
        assert self._session is not None
        table = self._table(app)
        prepare = self._session.prepare
        statements = _AppStatements(
            write=prepare(f"INSERT INTO {table} (rk, value, deleted) VALUES (?, ?, ?) USING TIMESTAMP ?"),
            read=prepare(f"SELECT value, deleted, WRITETIME(deleted) FROM {table} WHERE rk = ?"),
            scan=prepare(f"SELECT rk, value, deleted, WRITETIME(deleted) FROM {table} WHERE token(rk) >= ? AND token(rk) <= ?"),
        )
        for statement in (statements.write, statements.read, statements.scan):
            statement.is_idempotent = True  # every write carries its own timestamp
        return statements

    async def _app_statements(self, app: str, *, create: bool) -> _AppStatements | None:
        """The app's prepared statements; ``None`` when its table does not exist and
        ``create`` is false. One coroutine per app does the DDL and the preparing."""
        if app in self._statements:
            return self._statements[app]
        lock = self._locks.setdefault(app, asyncio.Lock())
        async with lock:
            if app in self._statements:
                return self._statements[app]
            if create:
                await self._execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table(app)} (rk blob PRIMARY KEY, value blob, deleted boolean) "
                    "WITH comment = 'nxnw entities: rk = kind NUL key; a delete is deleted=true at its timestamp'")
            elif not await self._table_exists(app):
                return None
            try:
                statements = await self._run(self._prepare, app)
            except InvalidRequest as exc:
                if _is_missing_table(exc) and not create:
                    return None
                raise
            self._statements[app] = statements
            return statements

    def _forget(self, app: str) -> None:
        self._statements.pop(app, None)

    # --- the contract -----------------------------------------------------------------------

    def _replica_groups(self, writes: Sequence[_Write]) -> Iterable[Sequence[_Write]]:
        """Writes grouped by the replicas that own their keys, so that a batch's coordinator
        (the token-aware policy picks a replica of its first key) owns every key in it."""
        cluster = self._cluster
        token_map = cluster.metadata.token_map if cluster is not None else None
        if token_map is None or len(cluster.metadata.all_hosts()) < 2:
            return [writes]
        groups: dict[tuple, list[_Write]] = {}
        for write in writes:
            replicas = token_map.get_replicas(self.keyspace, token_map.token_class.from_key(write[0]))
            groups.setdefault(tuple(sorted(str(h.endpoint) for h in replicas)), []).append(write)
        return groups.values()

    def _requests(self, statement: PreparedStatement, writes: Sequence[_Write]) -> Iterator[tuple[Statement, int]]:
        """The requests for ``writes`` with their size in bytes: unlogged batches under the
        byte budget, and single statements for a lone write or one larger than the budget."""
        for group in self._replica_groups(writes) if len(writes) > 1 and self.batch_bytes else [writes]:
            batch: list[tuple] = []
            size = 0
            for params in group:
                row_key, value = params[0], params[1]
                cost = len(row_key) + (len(value) if value is not None else 0) + ENTITY_OVERHEAD_BYTES
                if cost > self.batch_bytes:
                    yield statement.bind(params), cost
                    continue
                if batch and (size + cost > self.batch_bytes or len(batch) >= MAX_BATCH_ENTITIES):
                    yield self._batch(statement, batch), size
                    batch, size = [], 0
                batch.append(params)
                size += cost
            if batch:
                yield self._batch(statement, batch), size

    @staticmethod
    def _batch(statement: PreparedStatement, rows: list[tuple]) -> Statement:
        if len(rows) == 1:
            return statement.bind(rows[0])
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for params in rows:
            batch.add(statement, params)
        batch.is_idempotent = True
        return batch

    async def _write_all(self, statement: PreparedStatement, writes: Sequence[_Write]) -> None:
        """Send every write, bounded by ``MAX_IN_FLIGHT`` requests and ``MAX_IN_FLIGHT_BYTES``;
        on a failure, stop starting new requests, let the ones in flight finish, and raise
        the first error (the others are retrieved, and each names the same address)."""
        pending: dict[asyncio.Future, int] = {}
        in_flight = 0
        errors: list[BaseException] = []

        async def settle(return_when: str) -> None:
            nonlocal in_flight
            done, _ = await asyncio.wait(pending, return_when=return_when)
            for fut in done:
                in_flight -= pending.pop(fut)
                if fut.exception() is not None:
                    errors.append(fut.exception())

        for request, cost in self._requests(statement, writes):
            while pending and (len(pending) >= MAX_IN_FLIGHT or in_flight + cost > MAX_IN_FLIGHT_BYTES):
                await settle(asyncio.FIRST_COMPLETED)
            if errors:
                break
            pending[asyncio.ensure_future(self._execute(request))] = cost
            in_flight += cost
        if pending:
            await settle(asyncio.ALL_COMPLETED)
        if errors:
            raise errors[0]

    async def _write_one(self, entity: Entity) -> None:
        """The proxy's write: one entity, one request awaited in place (no task, no window of
        requests in flight, no grouping by replica)."""
        params = (entity.row_key, entity.value, entity.value is None, entity.ts)
        statements = await self._app_statements(entity.app, create=True)
        assert statements is not None
        try:
            await self._execute(statements.write, params)
        except InvalidRequest as exc:
            if not _is_missing_table(exc):
                raise
            self._forget(entity.app)  # dropped since we prepared: see _write_batch
            statements = await self._app_statements(entity.app, create=True)
            assert statements is not None
            await self._execute(statements.write, params)

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        if len(entities) == 1:
            await self._write_one(entities[0])
            return
        by_app: dict[str, list[_Write]] = {}
        for entity in entities:
            by_app.setdefault(entity.app, []).append((entity.row_key, entity.value, entity.value is None, entity.ts))
        for app, writes in by_app.items():
            await self._write_app(app, writes)

    async def _write_rows(self, app: str, rows: Sequence[Row]) -> None:
        """A snapshot's batch: each row becomes its statement's parameters as it is."""
        if len(rows) == 1:
            await super()._write_rows(app, rows)
            return
        await self._write_app(app, [(row_key, value, value is None, ts) for row_key, value, ts in rows])

    async def _write_app(self, app: str, writes: Sequence[_Write]) -> None:
        statements = await self._app_statements(app, create=True)
        assert statements is not None
        try:
            await self._write_all(statements.write, writes)
        except InvalidRequest as exc:
            if not _is_missing_table(exc):
                raise
            # The table was dropped since we prepared (drop_app elsewhere): recreate it
            # and write again; every write is idempotent by its timestamp.
            self._forget(app)
            statements = await self._app_statements(app, create=True)
            assert statements is not None
            await self._write_all(statements.write, writes)

    def _entity(self, app: str, row_key: bytes, value: bytes | None, deleted: bool | None, ts: int | None) -> Entity:
        if deleted is None or ts is None or (value is None and not deleted):
            # Every write sets both columns at one timestamp, so this is damage, not data.
            raise ValueError(f"row {row_key!r} of {self.address}.{app} is neither a value nor a tombstone: "
                             f"value={'null' if value is None else f'{len(value)} bytes'}, deleted={deleted}, writetime={ts}")
        return Entity.from_row(app, row_key, None if deleted else value, ts)

    async def read(self, ref: EntityRef) -> Entity | None:
        statements = await self._app_statements(ref.app, create=False)
        if statements is None:
            return None
        try:
            rows = await self._execute(statements.read, (ref.row_key,))
        except InvalidRequest as exc:
            if _is_missing_table(exc):
                self._forget(ref.app)
                return None
            raise
        if not rows:
            return None
        value, deleted, ts = rows[0]
        return self._entity(ref.app, ref.row_key, value, deleted, ts)

    async def _scan_pages(self, app: str, key_range: KeyRange, page_size: int) -> AsyncIterator[list[tuple]]:
        """The range's rows as the scan statement returns them: ``(rk, value, deleted, writetime)``."""
        lo, hi = token_bounds(key_range)
        if lo > hi:
            return
        statements = await self._app_statements(app, create=False)
        if statements is None:
            return
        try:
            async for rows in self._pages(statements.scan, (lo, hi), page_size):
                yield rows
        except InvalidRequest as exc:
            if not _is_missing_table(exc):
                raise
            self._forget(app)

    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        async for rows in self._scan_pages(app, key_range, page_size):
            page = [self._entity(app, rk, value, deleted, ts) for rk, value, deleted, ts in rows
                    if tombstones or not deleted]
            if page:
                yield page

    async def scan_rows(self, app: str, key_range: KeyRange, *, page_size: int = 1000) -> AsyncIterator[list[Row]]:
        async for rows in self._scan_pages(app, key_range, page_size):
            page: list[Row] = []
            for rk, value, deleted, ts in rows:
                if deleted is None or ts is None or (value is None and not deleted):
                    self._entity(app, rk, value, deleted, ts)  # raises, naming the damage
                page.append((rk, None if deleted else value, ts))
            if page:
                yield page

    async def _ring_tokens(self) -> list[int]:
        tokens: list[int] = []
        for query in ("SELECT tokens FROM system.local", "SELECT tokens FROM system.peers"):
            for (row_tokens,) in await self._execute(query):
                tokens.extend(int(t) for t in row_tokens or ())
        return tokens

    async def ranges(self, app: str, *, at_least: int = 1) -> list[KeyRange]:
        check_app(app)
        return split_token_ring(await self._ring_tokens(), max(1, at_least))

    async def apps(self) -> list[str]:
        rows = await self._execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [self.keyspace])
        return sorted(name for (name,) in rows if APP_PATTERN.fullmatch(name))

    async def drop_app(self, app: str) -> None:
        self._forget(app)
        await self._execute(f"DROP TABLE IF EXISTS {self._table(app)}")
        self._forget(app)
