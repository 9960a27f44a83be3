"""The HBase engine: one table per app, reached through HBase's Thrift1 interface.

URL: ``hbase://host:port/table_prefix``; app ``a`` lives in table ``<table_prefix>a``, one
column family ``e``, one row per entity (row key = ``Entity.row_key``).

How last-write-wins is kept, and why tombstones are explicit cells. Every write is a cell
whose HBase timestamp *is* the entity's µs timestamp; HBase never assigns one. A deletion is
a cell in ``e:d`` (empty value) at the delete's timestamp. A value lives in a column of its
own, ``e:v<digest>`` (``value_column``: 16 hex digits of the value's BLAKE2b), so two
different values written at one timestamp are two cells, both kept, and the reader decides
between them by ``Entity.wins_over``'s rule (the tombstone on a tie, else the greater
value), in any arrival order, in one call or several. In one column HBase would keep the
value that arrived *last* at an equal timestamp, where Cassandra keeps the greater one, and
an N1 and an N2 on the two engines would keep different values for good. The same value written twice
is the same cell. The stored entity is the winner among the cells at the newest
timestamp, so an older write arriving late is an older cell that never shows.

Every write also places a DeleteFamily marker at its timestamp minus one: it masks every
cell the write supersedes (older values in other columns, an older tombstone, a late older
write arriving after it), so reads see only the cells at the newest timestamp and
compactions reclaim the rest. Correctness never depends on the marker being there (the
reader already takes the newest cell): a call that failed between the write and its marker,
or a marker purged by a major compaction, only costs space. It does depend on a marker never
landing without its write, which would hide the older value and read as no value at all:
both write paths below send the write first and the marker only once it succeeded. HBase's delete markers alone would not do
for deletes: a marker is invisible to reads (no tombstone to export, verify or read back
with its timestamp), Thrift1 cannot ask for a raw scan, and a major compaction purges it
(KEEP_DELETED_CELLS cannot be set through Thrift1), after which a late older put would
resurrect the key. The explicit ``e:d`` cell has none of these problems. Rows written
before values had a column each hold their value in ``e:v``, which reads as a value too.

Which server, and the two write paths. Any server that speaks HBase's Thrift1 ``Hbase``
service (happybase's ``Hbase.thrift``) will do: HBase's own Thrift server, or nxnw's gateway
(``nxnw/services/hbase_gateway``), which speaks ``NxnwHbase`` (``GATEWAY_IDL``): ``Hbase`` plus
``mutateRowsTsEach``, a ``mutateRowsTs`` whose rows each carry their own timestamp. ``open``
asks once (``has_extension``: an empty ``mutateRowsTsEach``, a no-op on the gateway, an
UNKNOWN_METHOD answer from a stock server) and logs which path it takes:

* gateway: an ``apply`` is one ``mutateRowsTsEach`` per ``BATCH_ROWS`` entities whatever their
  timestamps, each entity's write and marker in the same call (the gateway sends a call's
  puts before its deletes), the calls in parallel on the pool;
* stock Thrift1: a ``mutateRowsTs`` carries one timestamp, so the writes go as one call per
  distinct timestamp (the rows of that timestamp together, cut at ``BATCH_ROWS``), then, once
  every write has succeeded, the markers as one call per distinct timestamp minus one (a
  ``Mutation`` deleting family ``e``, which stock ``mutateRowsTs`` turns into a DeleteFamily at
  the call's timestamp). Calls of a phase run in parallel on the pool. A snapshot load, whose
  rows all have different timestamps, costs two calls per entity here; the rule
  (last-write-wins, the tie rule) is the same on both paths.

The client is thriftpy2's, connected as happybase connects (buffered transport, binary
protocol). HBase's Thrift2 ``putMultiple`` (per-cell timestamps) is not used: it is a
different service on a different port, and a Thrift1 URL cannot name it.

Other costs of Thrift1: scans cannot be bounded in bytes, so pages are fetched in slices of
``SCAN_SLICE`` rows. (A snapshot's scan, ``scan_rows``, picks each row's winning cell as a
row, with no ``Entity`` built; verify reads every row of the table that way.) Cell timestamps in µs look ~1000 years ahead to HBase, which reads them
as ms: fine with the family's TTL "forever" (the default here), wrong with any TTL or
time-based compaction policy, so the tables must never be given one.

Ranges are the table's regions, cut further at sampled row keys (a keys-only scan) when
the caller asks for more ranges than there are regions; empty ranges pad the list when the
table has too few keys. Ranges are hex row keys, start inclusive, end exclusive.

Blocking calls (thriftpy2) run only on this engine's bounded thread pool, one Thrift
connection per pool thread; never on the event loop. Every call is idempotent (puts
and tombstones carry their timestamps), so one that failed on a broken connection is retried
once on a fresh connection; a second failure is ``EngineUnavailable`` naming the server.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import logging
import re
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import thriftpy2
from thriftpy2.protocol import TBinaryProtocol
from thriftpy2.thrift import TApplicationException, TClient
from thriftpy2.transport import TBufferedTransport, TSocket, TTransportException

from datastore.engine import Engine, EngineUnavailable, KeyRange
from datastore.model import APP_PATTERN, Entity, EntityRef, Row, check_app

T = TypeVar("T")

log = logging.getLogger("nxnw.engines.hbase")

#: The gateway's service. It lives with the gateway's source, which nxnw/services/hbase.py
#: compiles with it; the engine only reads it, as the contract of the gateway it talks to.
GATEWAY_IDL = Path(__file__).resolve().parent / "nxnw_hbase.thrift"
#: ``Hbase.thrift``, which ``GATEWAY_IDL`` includes: the copy happybase ships.
HBASE_IDL = Path(str(importlib.resources.files("happybase") / "Hbase.thrift"))
GATEWAY = thriftpy2.load(str(GATEWAY_IDL), include_dirs=[str(HBASE_IDL.parent)])
AlreadyExists = GATEWAY.Hbase.AlreadyExists
BatchMutation = GATEWAY.Hbase.BatchMutation
ColumnDescriptor = GATEWAY.Hbase.ColumnDescriptor
HBaseIOError = GATEWAY.Hbase.IOError
Mutation = GATEWAY.Hbase.Mutation
TScan = GATEWAY.Hbase.TScan
BatchMutationTs = GATEWAY.BatchMutationTs

FAMILY = b"e"
#: A value's column is this prefix and a digest of the value (``value_column``).
VALUE_PREFIX = b"e:v"
TOMBSTONE_COLUMN = b"e:d"

DEFAULT_PORT = 9090
POOL_SIZE = 8
SOCKET_TIMEOUT_MS = 60_000
#: A write call carries the writes of at most this many entities (a ``mutateRowsTsEach`` has
#: two rows each: the write and its marker) and this many value bytes.
BATCH_ROWS = 500
BATCH_BYTES = 4 * 1024 * 1024
#: Rows fetched per ``scannerGetList``: values may be 1 MiB each.
SCAN_SLICE = 64
#: Cap on the keys read to cut a table into more ranges than it has regions.
SAMPLE_KEYS_MAX = 1_000_000
KEYS_ONLY_FILTER = b"KeyOnlyFilter() AND FirstKeyOnlyFilter()"
TABLE_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{0,64}")

#: Failures of the connection itself (the call may not have reached HBase): retried once.
_TRANSPORT_ERRORS = (TTransportException, OSError, EOFError)


def _message(exc: HBaseIOError | TApplicationException) -> str:
    """The exception's message as text (thriftpy2 hands Thrift strings over as bytes)."""
    message = exc.message or ""
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)


def _table_missing(exc: HBaseIOError) -> bool:
    message = _message(exc)
    return "TableNotFoundException" in message or "does not exist" in message


def _first_line(exc: HBaseIOError, limit: int = 400) -> str:
    text = _message(exc).strip()
    return text.splitlines()[0][:limit] if text else "(no message)"


def value_column(value: bytes) -> bytes:
    """The column that holds ``value``: one per distinct value, so that values tied on
    timestamp are separate cells (a 64-bit digest: only values of one key written at one
    timestamp could ever collide)."""
    return VALUE_PREFIX + hashlib.blake2b(value, digest_size=8).hexdigest().encode()


def _entity_from(app: str, row: Any) -> Entity | None:
    """The entity a row holds: the winner (``Entity.wins_over``) among its newest cells."""
    best: Entity | None = None
    for column, cell in (row.columns or {}).items():
        if column == TOMBSTONE_COLUMN:
            entity = Entity.from_row(app, row.row, None, cell.timestamp)
        elif column.startswith(VALUE_PREFIX):
            entity = Entity.from_row(app, row.row, cell.value, cell.timestamp)
        else:
            continue
        if entity.wins_over(best):
            best = entity
    return best


def _row_from(row: Any) -> Row | None:
    """``_entity_from`` as a ``Row``, with no ``Entity`` built: the cell that wins by
    ``Entity.wins_over``'s rule (the newer timestamp; at a tie the tombstone, then the
    greater value) is the greatest by ``(timestamp, is tombstone, value)``."""
    best: tuple[int, bool, bytes] | None = None
    for column, cell in (row.columns or {}).items():
        if column == TOMBSTONE_COLUMN:
            candidate = (cell.timestamp, True, b"")
        elif column.startswith(VALUE_PREFIX):
            candidate = (cell.timestamp, False, cell.value)
        else:
            continue
        if best is None or candidate > best:
            best = candidate
    if best is None:
        return None
    ts, deleted, value = best
    return row.row, None if deleted else value, ts


#: The marker placed just below every write (see the module docstring). Only ever serialized.
_SUPERSEDE = [Mutation(isDelete=True, column=FAMILY)]


def _cell(value: bytes | None) -> Any:
    """A write's one cell: a tombstone (``None``) in ``e:d``, or the value in its own column."""
    if value is None:
        return Mutation(isDelete=False, column=TOMBSTONE_COLUMN, value=b"")
    return Mutation(isDelete=False, column=value_column(value), value=value)


def _rows(row_key: bytes, value: bytes | None, ts: int) -> list[Any]:
    """A write as rows of a ``mutateRowsTsEach`` call: its cell at its timestamp, and the
    family marker one below, which masks everything it supersedes."""
    return [BatchMutationTs(row=row_key, mutations=[_cell(value)], timestamp=ts),
            BatchMutationTs(row=row_key, mutations=_SUPERSEDE, timestamp=ts - 1)]


@dataclass
class TsCall:
    """One stock ``mutateRowsTs`` call: rows whose mutations all apply at ``ts``."""

    ts: int
    rows: list[Any] = field(default_factory=list)
    size: int = 0


def _add(calls: dict[int, list[TsCall]], ts: int, row: Any, size: int) -> None:
    group = calls[ts]
    if not group or len(group[-1].rows) >= BATCH_ROWS or group[-1].size >= BATCH_BYTES:
        group.append(TsCall(ts))
    group[-1].rows.append(row)
    group[-1].size += size


def stock_calls(rows: Sequence[Row]) -> tuple[list[TsCall], list[TsCall]]:
    """The ``mutateRowsTs`` calls that write ``rows`` through stock Thrift1: the writes, one
    call per distinct timestamp, and the markers, one call per distinct timestamp minus one
    (each cut at ``BATCH_ROWS`` rows or ``BATCH_BYTES``). The markers must go only after every
    write has succeeded (see the module docstring)."""
    writes: dict[int, list[TsCall]] = defaultdict(list)
    markers: dict[int, list[TsCall]] = defaultdict(list)
    for row_key, value, ts in rows:
        _add(writes, ts, BatchMutation(row=row_key, mutations=[_cell(value)]), len(row_key) + len(value or b""))
        _add(markers, ts - 1, BatchMutation(row=row_key, mutations=_SUPERSEDE), len(row_key))
    return ([call for group in writes.values() for call in group],
            [call for group in markers.values() for call in group])


def _split(keys: list[bytes], region_starts: list[bytes], at_least: int) -> list[KeyRange]:
    """Ranges from cut points: every region start, plus sampled keys if more ranges are wanted.

    Consecutive cuts cover the key space exactly once whatever they are; a cut that equals
    the next one makes an empty range. Distinct empty ranges pad the list up to ``at_least``.
    """
    cuts = {k for k in region_starts if k}
    if keys and len(cuts) + 1 < at_least:
        for i in range(1, at_least):
            cuts.add(keys[i * len(keys) // at_least])
    edges = [b""] + sorted(cuts) + [b""]
    ranges = [KeyRange(edges[i].hex(), edges[i + 1].hex()) for i in range(len(edges) - 1)]
    pad = 1
    while len(ranges) < at_least:
        ranges.append(KeyRange("00" * pad, "00" * pad))  # [k, k): empty by definition
        pad += 1
    return ranges


class GatewayConnection:
    """One Thrift connection, opened as happybase opens its own (buffered transport, binary
    protocol, strings left as bytes). The client speaks ``NxnwHbase``, a superset of Thrift1's
    ``Hbase``: on a stock server only ``mutateRowsTsEach`` is unknown (``has_extension``)."""

    def __init__(self, host: str, port: int, timeout_ms: int) -> None:
        self._transport = TBufferedTransport(TSocket(host=host, port=port, socket_timeout=timeout_ms))
        self.client = TClient(GATEWAY.NxnwHbase, TBinaryProtocol(self._transport, decode_response=False))
        self._transport.open()

    def close(self) -> None:
        self._transport.close()


def has_extension(client: Any) -> bool:
    """Whether the server has nxnw's ``mutateRowsTsEach``: an empty call is a no-op on nxnw's
    gateway, and a stock Thrift1 server answers it as a name it does not know
    (``TApplicationException`` UNKNOWN_METHOD; the connection stays usable). Any other
    failure is raised."""
    try:
        client.mutateRowsTsEach(b"", [])
    except TApplicationException as exc:
        if exc.type == TApplicationException.UNKNOWN_METHOD:
            return False
        raise
    return True


class HBaseEngine(Engine):
    scheme = "hbase"

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE, timeout_ms: int = SOCKET_TIMEOUT_MS) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        try:
            self.port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise EngineUnavailable(f"hbase URL {url!r} has a bad port: {exc}") from exc
        self.prefix = parts.path.lstrip("/")
        if not TABLE_PREFIX_PATTERN.fullmatch(self.prefix):
            raise EngineUnavailable(
                f"hbase URL {url!r}: table prefix {self.prefix!r} must match {TABLE_PREFIX_PATTERN.pattern}")
        self.address = f"{self.host}:{self.port}"
        self.pool_size = pool_size
        self.timeout_ms = timeout_ms
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[GatewayConnection] = []
        self._connections_lock = threading.Lock()
        self._tables: set[str] = set()
        #: Whether the server has ``mutateRowsTsEach`` (asked at ``open``).
        self.extension = False

    # ---- connections and the thread pool ----

    def _table(self, app: str) -> bytes:
        return (self.prefix + check_app(app)).encode()

    def _connection(self) -> GatewayConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = GatewayConnection(self.host, self.port, self.timeout_ms)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()

    def _call(self, what: str, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        """Run ``fn(client, *args)`` on this thread's connection, retrying once on a new one."""
        for attempt in (1, 2):
            try:
                return fn(self._connection().client, *args)
            except _TRANSPORT_ERRORS as exc:
                self._drop_connection()
                if attempt == 2:
                    raise EngineUnavailable(
                        f"HBase Thrift server at {self.address} failed {what}: {type(exc).__name__}: {exc}") from exc
            except HBaseIOError as exc:
                raise EngineUnavailable(
                    f"HBase at {self.address} refused {what}: {_first_line(exc)}") from exc
            except TApplicationException as exc:
                # Its message is bytes here (responses are not decoded): str(exc) would raise.
                raise EngineUnavailable(f"HBase Thrift server at {self.address} could not run {what}: "
                                        f"TApplicationException {exc.type}: {_message(exc)}") from exc
        raise AssertionError("unreachable")

    async def _run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineUnavailable(f"hbase engine {self.url} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, what, fn, args)

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=self.pool_size, thread_name_prefix=f"hbase-{self.port}")
        try:
            self.extension = await self._run("asking for nxnw's mutateRowsTsEach", has_extension)
            names = await self._run("listing tables", lambda client: client.getTableNames())
        except BaseException:
            await self.close()
            raise
        self._tables = self._apps_in(names)
        if self.extension:
            log.info("hbase %s: nxnw's gateway (mutateRowsTsEach): one write call per %d entities, "
                     "whatever their timestamps", self.address, BATCH_ROWS)
        else:
            log.info("hbase %s: stock Thrift1 (no mutateRowsTsEach): one mutateRowsTs per distinct "
                     "timestamp, then one per distinct marker timestamp", self.address)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # ---- tables ----

    def _apps_in(self, names: list[bytes]) -> set[str]:
        prefix = self.prefix.encode()
        apps = set()
        for name in names:
            if name.startswith(prefix):
                app = name[len(prefix):].decode(errors="replace")
                if APP_PATTERN.fullmatch(app):
                    apps.add(app)
        return apps

    def _create_table(self, client: Any, table: bytes) -> None:
        family = ColumnDescriptor(name=FAMILY + b":", maxVersions=1, compression="NONE", inMemory=False,
                                  bloomFilterType="ROW", blockCacheEnabled=True, timeToLive=-1)
        try:
            client.createTable(table, [family])
        except AlreadyExists:
            pass  # another writer created it first: the same table

    async def _ensure_table(self, app: str) -> None:
        if app not in self._tables:
            await self._run(f"creating table {self._table(app)!r}", self._create_table, self._table(app))
            self._tables.add(app)

    async def apps(self) -> list[str]:
        names = await self._run("listing tables", lambda client: client.getTableNames())
        self._tables = self._apps_in(names)
        return sorted(self._tables)

    def _drop(self, client: Any, table: bytes) -> None:
        try:
            client.disableTable(table)
        except HBaseIOError as exc:
            if _table_missing(exc):
                return
            if "TableNotEnabledException" not in _message(exc):
                raise
        try:
            client.deleteTable(table)
        except HBaseIOError as exc:
            if not _table_missing(exc):
                raise

    async def drop_app(self, app: str) -> None:
        await self._run(f"dropping table {self._table(app)!r}", self._drop, self._table(app))
        self._tables.discard(app)

    # ---- writes ----

    def _mutate_each(self, client: Any, table: bytes, rows: list[Any]) -> None:
        client.mutateRowsTsEach(table, rows)

    def _mutate_ts(self, client: Any, table: bytes, calls: list[TsCall]) -> None:
        for call in calls:
            client.mutateRowsTs(table, call.rows, call.ts, {})

    async def _write(self, app: str, what: str, fn: Callable[[Any, bytes, Any], None], payload: Any) -> None:
        """``fn(client, table, payload)`` on the pool; a table dropped since it was cached (by
        another engine instance) is created again, once, and the write retried."""
        table = self._table(app)
        what = f"{what} to {table!r}"
        try:
            await self._run(what, fn, table, payload)
        except EngineUnavailable as exc:
            if not isinstance(exc.__cause__, HBaseIOError) or not _table_missing(exc.__cause__):
                raise
            self._tables.discard(app)
            await self._ensure_table(app)
            await self._run(what, fn, table, payload)

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        by_app: dict[str, list[Row]] = defaultdict(list)
        for entity in entities:
            by_app[entity.app].append((entity.row_key, entity.value, entity.ts))
        await self._write_apps(by_app)

    async def _write_rows(self, app: str, rows: Sequence[Row]) -> None:
        """A snapshot's batch: the rows become mutations as they are, with no ``Entity`` each."""
        await self._write_apps({app: rows})

    async def _write_apps(self, by_app: Mapping[str, Sequence[Row]]) -> None:
        for app in by_app:
            await self._ensure_table(app)
        if self.extension:
            await self._write_each(by_app)
        else:
            await self._write_stock(by_app)

    async def _write_each(self, by_app: Mapping[str, Sequence[Row]]) -> None:
        # Every row carries its own timestamp: group by app only, then cut by size.
        calls = []
        for app, members in by_app.items():
            rows: list[Any] = []
            size = 0
            for row_key, value, ts in members:
                rows.extend(_rows(row_key, value, ts))
                size += len(row_key) + len(value or b"")
                if len(rows) >= 2 * BATCH_ROWS or size >= BATCH_BYTES:
                    calls.append(self._write(app, f"writing {len(rows)} rows", self._mutate_each, rows))
                    rows, size = [], 0
            if rows:
                calls.append(self._write(app, f"writing {len(rows)} rows", self._mutate_each, rows))
        if len(calls) == 1:  # the proxy's write: awaited in place, no task for gather to make
            await calls[0]
        else:
            await asyncio.gather(*calls)

    async def _write_stock(self, by_app: Mapping[str, Sequence[Row]]) -> None:
        planned = {app: stock_calls(members) for app, members in by_app.items()}
        for phase, purpose in ((0, "writes"), (1, "supersede markers")):
            jobs = []
            for app, phases in planned.items():
                calls = phases[phase]
                # At most one job per pool thread; each runs its share of the calls in turn.
                for share in (calls[i::self.pool_size] for i in range(min(self.pool_size, len(calls)))):
                    what = f"{purpose}: {sum(len(c.rows) for c in share)} rows in {len(share)} mutateRowsTs calls"
                    jobs.append(self._write(app, what, self._mutate_ts, share))
            await asyncio.gather(*jobs)

    # ---- reads ----

    def _get(self, client: Any, table: bytes, row: bytes) -> list[Any]:
        try:
            return client.getRowWithColumns(table, row, [FAMILY], {})
        except HBaseIOError as exc:
            if _table_missing(exc):
                return []
            raise

    async def read(self, ref: EntityRef) -> Entity | None:
        table = self._table(ref.app)
        rows = await self._run(f"reading a row of {table!r}", self._get, table, ref.row_key)
        for row in rows:
            return _entity_from(ref.app, row)
        return None

    def _scan_rows(self, client: Any, table: bytes, start: bytes, stop: bytes, limit: int,
                   keys_only: bool = False) -> list[Any]:
        """Up to ``limit`` rows in [start, stop) in key order, through one short-lived scanner."""
        scan = TScan(startRow=start, columns=[FAMILY],
                     caching=min(limit, 10_000 if keys_only else SCAN_SLICE))
        if stop:
            scan.stopRow = stop
        if keys_only:
            scan.filterString = KEYS_ONLY_FILTER
        try:
            scanner = client.scannerOpenWithScan(table, scan, {})
        except HBaseIOError as exc:
            if _table_missing(exc):
                return []
            raise
        rows: list[Any] = []
        slice_rows = 10_000 if keys_only else SCAN_SLICE
        try:
            while len(rows) < limit:
                got = client.scannerGetList(scanner, min(limit - len(rows), slice_rows))
                if not got:
                    break
                rows.extend(got)
        except HBaseIOError as exc:
            # The gateway has already dropped a scanner whose read failed (HBase's does too).
            # The table can vanish between open and read: a missing table reads as empty.
            if _table_missing(exc):
                return []
            raise
        client.scannerClose(scanner)
        return rows

    async def _scan_pages(self, app: str, key_range: KeyRange, page_size: int) -> AsyncIterator[list[Any]]:
        """The range's stored rows (HBase ``TRowResult``), ``page_size`` at a time."""
        table = self._table(app)
        start = bytes.fromhex(key_range.start)
        stop = bytes.fromhex(key_range.end)
        if stop and start >= stop:
            return
        page_size = max(1, page_size)
        while True:
            rows = await self._run(f"scanning {table!r} {key_range}", self._scan_rows, table, start, stop, page_size)
            yield rows
            if len(rows) < page_size:
                return
            start = rows[-1].row + b"\x00"  # the smallest key after the last one read

    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        async for rows in self._scan_pages(app, key_range, page_size):
            page = [e for e in (_entity_from(app, row) for row in rows) if e is not None and (tombstones or not e.deleted)]
            if page:
                yield page

    async def scan_rows(self, app: str, key_range: KeyRange, *, page_size: int = 1000) -> AsyncIterator[list[Row]]:
        async for rows in self._scan_pages(app, key_range, page_size):
            page = [r for r in map(_row_from, rows) if r is not None]
            if page:
                yield page

    # ---- ranges ----

    def _regions(self, client: Any, table: bytes) -> list[bytes]:
        try:
            regions = client.getTableRegions(table)
        except HBaseIOError as exc:
            if _table_missing(exc):
                return []
            raise
        return sorted(r.startKey for r in regions)

    def _sample_keys(self, client: Any, table: bytes) -> list[bytes]:
        rows = self._scan_rows(client, table, b"", b"", SAMPLE_KEYS_MAX, keys_only=True)
        return [row.row for row in rows]

    async def ranges(self, app: str, *, at_least: int = 1) -> list[KeyRange]:
        table = self._table(app)
        at_least = max(1, at_least)
        starts = await self._run(f"listing the regions of {table!r}", self._regions, table)
        keys: list[bytes] = []
        if max(1, len(starts)) < at_least:
            keys = await self._run(f"sampling the keys of {table!r}", self._sample_keys, table)
        return _split(keys, starts, at_least)
