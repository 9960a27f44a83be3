"""The embedded default engine: one SQLite file per deployment, WAL, a table per app.

Last-write-wins is one guarded upsert, so it holds without a read-then-write race: a row
changes only when the incoming timestamp is newer, or equal and the incoming write wins
the tie (``Entity.wins_over``: a tombstone over a value, else the greater value; SQLite
compares BLOBs with ``memcmp`` and then by length, which is that byte-wise order). Rows
keep their rowid across updates, which is what makes rowid ranges cover a table exactly
once; the last range is open-ended, so rows inserted after ``ranges`` was called still
fall in exactly one range.

Where the work runs, and why small writes skip the thread hop
-------------------------------------------------------------
A small write costs SQLite 20–50 µs on a 2-core test machine; handing it to a thread and
back costs 100+ µs more there (a queue, a wake-up of the thread, ``call_soon_threadsafe``
and a wake-up of the loop: ``bench/engine_writes.py`` measures both), and the hop, not the
write, is what a ``cow`` PUT waited for twice. So the engine holds two connections to the
file:

* the **loop connection**, used only on the event loop, for writes of at most
  ``LOOP_MAX_ENTITIES`` entities and ``LOOP_MAX_BYTES`` bytes of keys and values, and for
  point reads of a value of at most ``LOOP_MAX_BYTES`` (a larger one is read again on the
  engine thread).
  Such a call runs to completion without yielding (one ``BEGIN IMMEDIATE … COMMIT``, no
  ``await`` inside), so a cancelled caller can never leave a transaction half done. It
  never waits: the connection's ``busy_timeout`` is 0, so when another connection holds
  the write lock (a large batch on the engine thread, another process on the same file)
  SQLite answers ``SQLITE_BUSY`` at once, the transaction is rolled back untouched, and
  the call goes to the engine thread like any large one. It never checkpoints
  (``wal_autocheckpoint=0``): a checkpoint syncs files, which may take milliseconds, so
  the loop counts the WAL pages its commits add and asks the engine thread for a passive
  checkpoint every ``CHECKPOINT_PAGES`` (SQLite's own autocheckpoint cadence). While that
  checkpoint runs, writes queue behind it on the engine thread, as SQLite's own
  autocheckpoint makes the next writer wait: a checkpoint only lets the WAL start over
  once it has caught up with every frame, which writes landing beside it would prevent
  for as long as they kept coming, and the WAL would grow without bound. What the loop
  can still wait for is the operating system: page-cache writes of at most
  ``LOOP_MAX_BYTES`` plus b-tree pages, and reads of b-tree pages not yet cached — the
  same bound as any small file write an aiohttp handler makes.
* the **engine thread's connection** (one thread: a connection is used by one thread at a
  time), for everything else: larger batches, scans, ranges, DDL of ``drop_app``, opening,
  closing and checkpoints. It waits up to ``BUSY_TIMEOUT_MS`` for the write lock.

Durability is the same on both paths: ``apply`` returns after ``COMMIT`` of a WAL
transaction with ``synchronous=NORMAL`` on both connections — the commit survives a crash
of the process (it is in the WAL file), and it is synced to disk by the next checkpoint,
so a power loss can lose the commits since the last one, as SQLite documents for WAL
with ``synchronous=NORMAL``.
Both paths write through the same guarded upsert, so their interleaving in any order ends
where last-write-wins says.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from datastore.engine import Engine, EngineUnavailable, KeyRange
from datastore.model import MAX_VALUE_BYTES, Entity, EntityRef, Row, check_app, check_batch

T = TypeVar("T")

#: A write of at most this many entities and bytes (keys and values) runs on the event loop;
#: above, its copying and b-tree work would hold the loop longer than a thread hop costs.
LOOP_MAX_ENTITIES = 16
LOOP_MAX_BYTES = 64 * 1024
#: WAL pages the loop's commits may add before it asks the engine thread for a passive
#: checkpoint (SQLite's default ``wal_autocheckpoint``).
CHECKPOINT_PAGES = 1000
#: WAL pages after which a snapshot's batch checkpoints (``_write_rows``); every other
#: commit keeps SQLite's default of 1000. A checkpoint syncs the WAL and the database file
#: (an fsync took 4-13 ms on the test machine), so a load of 100 MB paid ~27 checkpoints at
#: the default and pays 3 or 4 here, as SQLite's own bulk path (one transaction) pays one.
#: Measured, sqlite -> sqlite, 1 KB rows beside ``executemany`` on a loaded machine, medians
#: of 4 rounds in each of two runs: load / bulk 0.66x and 0.79x at 1000 pages, 0.89x and
#: 0.96x at 8192 (``bench/README.md``).
LOAD_CHECKPOINT_PAGES = 8192
_DEFAULT_CHECKPOINT_PAGES = 1000
#: How long the engine thread waits for another connection's write lock.
BUSY_TIMEOUT_MS = 10_000
_PAGE_BYTES = 4096
_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _TooLarge:
    """A read on the loop found a value larger than it may copy there."""


_TOO_LARGE = _TooLarge()


def _table(app: str) -> str:
    return f"e_{check_app(app)}"


@functools.cache
def _upsert(table: str) -> str:
    return (f"INSERT INTO {table} (rk, value, ts) VALUES (?, ?, ?) ON CONFLICT(rk) DO UPDATE "
            f"SET value = excluded.value, ts = excluded.ts WHERE excluded.ts > {table}.ts "
            f"OR (excluded.ts = {table}.ts AND {table}.value IS NOT NULL "
            f"AND (excluded.value IS NULL OR excluded.value > {table}.value))")


_Rows = Mapping[str, Sequence[Row]]


def _rows(entities: Sequence[Entity]) -> tuple[_Rows, int]:
    """The upsert parameters of a batch by table, and its bytes of keys and values (the
    batch has passed ``check_batch``, so its app names are table names)."""
    rows: dict[str, list[Row]] = {}
    size = 0
    for e in entities:
        row_key, value = e.row_key, e.value
        rows.setdefault("e_" + e.app, []).append((row_key, value, e.ts))
        size += len(row_key) + (len(value) if value is not None else 0)
    return rows, size


def _is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock (``SQLITE_BUSY``/``SQLITE_LOCKED``, extended codes too)."""
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _BUSY_CODES


def _connect(path: Path, busy_timeout_ms: int, autocheckpoint: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _wal(conn)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        if not autocheckpoint:
            conn.execute("PRAGMA wal_autocheckpoint=0")
    except BaseException:
        conn.close()
        raise
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """Put the file in WAL mode, retried while another connection holds it, for up to
    ``BUSY_TIMEOUT_MS``. Needed when several processes open a new file at once: each reads
    it, then asks for the exclusive lock the change takes, and SQLite answers "database is
    locked" at once instead of waiting (a wait there could deadlock), so the busy timeout
    does not apply."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SqliteEngine(Engine):
    scheme = "sqlite"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        path = urlsplit(url).path
        if not path:
            raise EngineUnavailable(f"sqlite URL {url!r} names no file; use sqlite:///path/to/file.db")
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._loop_conn: sqlite3.Connection | None = None
        self._tables: set[str] = set()
        self._wal_pages = 0
        self._checkpoint: asyncio.Future[None] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineUnavailable(f"sqlite engine {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- lifecycle (on the engine thread) ---------------------------------------------------

    def _open_connections(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self.path, BUSY_TIMEOUT_MS, autocheckpoint=True)
        try:
            self._tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'e\\_%' ESCAPE '\\'")}
            self._loop_conn = _connect(self.path, 0, autocheckpoint=False)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _close_connections(self, loop_conn: sqlite3.Connection | None) -> None:
        # The last connection to close checkpoints the WAL into the file (a sync), which is
        # why the loop connection is closed here and not on the loop.
        for conn in (loop_conn, self._conn):
            if conn is not None:
                conn.close()
        self._conn = None

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.path.name}")
        try:
            await self._run(self._open_connections)
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise EngineUnavailable(f"cannot open sqlite file {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        loop_conn, self._loop_conn = self._loop_conn, None  # no new call starts on it
        await self._run(self._close_connections, loop_conn)
        self._executor.shutdown(wait=True)
        self._executor = None

    # --- tables -------------------------------------------------------------------------------

    def _has_table(self, conn: sqlite3.Connection, table: str) -> bool:
        """Whether the app's table exists; another process on the same file may have made it."""
        if table in self._tables:
            return True
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            self._tables.add(table)
            return True
        return False

    # --- writes -------------------------------------------------------------------------------

    def _apply(self, conn: sqlite3.Connection, rows: _Rows, size: int) -> int:
        """One transaction with every row, on whichever connection the caller owns; the WAL
        pages it likely added (for the loop's checkpoint cadence) are returned."""
        try:
            self._transaction(conn, rows)
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith("no such table"):
                raise
            # A table this engine knew was dropped since (``drop_app`` here or in another
            # process): nothing was written, so forget what we knew and write again.
            self._tables.clear()
            self._transaction(conn, rows)
        # Each table's row b-tree and key index gain a leaf page, large values their bytes.
        return 2 * len(rows) + size // _PAGE_BYTES

    def _transaction(self, conn: sqlite3.Connection, rows: _Rows) -> None:
        if conn is self._loop_conn and len(rows) == 1:
            ((table, table_rows),) = rows.items()
            if len(table_rows) == 1 and table in self._tables:
                # One row of a known table (the proxy's PUT): one statement is its own
                # transaction, as atomic and durable as BEGIN … COMMIT, two statements fewer.
                # Busy is answered at once as for BEGIN IMMEDIATE, and nothing is written.
                conn.execute(_upsert(table), table_rows[0])
                return
        created: list[str] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, table_rows in rows.items():
                if table not in self._tables:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {table} "
                                 "(rid INTEGER PRIMARY KEY, rk BLOB NOT NULL UNIQUE, value BLOB, ts INTEGER NOT NULL)")
                    created.append(table)
                if len(table_rows) == 1:
                    conn.execute(_upsert(table), table_rows[0])
                else:
                    conn.executemany(_upsert(table), table_rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._tables.update(created)

    def _apply_on_thread(self, entities: Sequence[Entity]) -> None:
        assert self._conn is not None
        self._apply(self._conn, *_rows(entities))

    def _pages_written(self, pages: int) -> None:
        """Count the loop's WAL pages; past ``CHECKPOINT_PAGES``, one passive checkpoint on the
        engine thread (a failed one is asked for again at the next write)."""
        self._wal_pages += pages
        if self._wal_pages < CHECKPOINT_PAGES or self._checkpoint is not None:
            return
        self._wal_pages = 0
        self._checkpoint = asyncio.ensure_future(self._run(self._checkpoint_wal))
        self._checkpoint.add_done_callback(self._checkpoint_done)

    def _checkpoint_wal(self) -> None:
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _checkpoint_done(self, fut: asyncio.Future[None]) -> None:
        self._checkpoint = None
        if not fut.cancelled() and fut.exception() is not None:
            self._wal_pages = CHECKPOINT_PAGES  # ask again at the next write

    def _apply_rows_on_thread(self, table: str, rows: Sequence[Row]) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute(f"PRAGMA wal_autocheckpoint={LOAD_CHECKPOINT_PAGES}")
        try:
            self._apply(conn, {table: rows}, 0)
        finally:
            conn.execute(f"PRAGMA wal_autocheckpoint={_DEFAULT_CHECKPOINT_PAGES}")

    async def _write_rows(self, app: str, rows: Sequence[Row]) -> None:
        """A snapshot's batch: the rows go to ``executemany`` as they are, in one transaction
        on the engine thread (the guarded upsert, as every write), checkpointing every
        ``LOAD_CHECKPOINT_PAGES`` rather than 1000. Durability is SQLite's for WAL with
        ``synchronous=NORMAL`` as for every write; only the loaded rows a power loss could
        take back grow to the last 32 MiB, and verify, which follows every load, finds and
        repairs them. A batch small enough for the loop takes ``_write_batch``'s path,
        bounds and fallback included."""
        if len(rows) <= LOOP_MAX_ENTITIES:
            await super()._write_rows(app, rows)
            return
        await self._run(self._apply_rows_on_thread, _table(app), rows)

    def apply_in_place(self, entities: Sequence[Entity]) -> bool:
        """``apply`` on the loop connection, when the batch is within the loop's bounds, no
        checkpoint runs and no other connection holds the write lock; else False, nothing
        written (see the module docstring)."""
        check_batch(entities)
        return not entities or self._write_in_place(entities)

    def _write_in_place(self, entities: Sequence[Entity]) -> bool:
        conn = self._loop_conn
        if conn is None:
            raise EngineUnavailable(f"sqlite engine {self.path} is not open")
        if self._checkpoint is not None or len(entities) > LOOP_MAX_ENTITIES:
            return False
        rows, size = _rows(entities)
        if size > LOOP_MAX_BYTES:
            return False
        try:
            pages = self._apply(conn, rows, size)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return False
        self._pages_written(pages)
        return True

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        if not self._write_in_place(entities):
            await self._run(self._apply_on_thread, entities)

    # --- reads --------------------------------------------------------------------------------

    def _read(self, conn: sqlite3.Connection, ref: EntityRef, max_bytes: int) -> Entity | None | _TooLarge:
        """The stored entity; ``_TOO_LARGE`` instead when its value is over ``max_bytes``.

        SQLite answers ``typeof`` and ``length`` of a blob from the record's header, but
        ``ts`` is stored after the value, so reading it walks the value's whole chain of
        overflow pages (~1 ms for 1 MiB when they are not cached): it is read only for a
        value within the bound."""
        table = _table(ref.app)
        if not self._has_table(conn, table):
            return None
        try:
            row = conn.execute(f"SELECT CASE WHEN length(value) > ?1 THEN NULL ELSE ts END, typeof(value) = 'null', "
                               f"CASE WHEN length(value) > ?1 THEN NULL ELSE value END "
                               f"FROM {table} WHERE rk = ?2", (max_bytes, ref.row_key)).fetchone()
        except sqlite3.OperationalError as exc:
            if not str(exc).startswith("no such table"):
                raise
            self._tables.discard(table)  # dropped since we saw it
            return None
        if row is None:
            return None
        ts, deleted, value = row
        if ts is None:  # a stored ts is never NULL: the value is over the bound
            return _TOO_LARGE
        return Entity(ref.app, ref.kind, ref.key, None if deleted else value, ts)

    def _read_on_thread(self, ref: EntityRef) -> Entity | None:
        assert self._conn is not None
        entity = self._read(self._conn, ref, MAX_VALUE_BYTES)
        assert entity is not _TOO_LARGE
        return entity

    async def read(self, ref: EntityRef) -> Entity | None:
        """A point read on the loop connection when the value is at most ``LOOP_MAX_BYTES``,
        else on the engine thread. A WAL reader takes no lock a writer holds; it is busy only
        while another connection recovers the WAL, and then it too goes to the thread."""
        conn = self._loop_conn
        if conn is None:
            raise EngineUnavailable(f"sqlite engine {self.path} is not open")
        try:
            entity = self._read(conn, ref, LOOP_MAX_BYTES)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        else:
            if entity is not _TOO_LARGE:
                return entity
        return await self._run(self._read_on_thread, ref)

    # --- scans, ranges, apps (on the engine thread) -----------------------------------------

    def _page(self, app: str, after: int, hi: int | None, limit: int, tombstones: bool) -> list[tuple[int, bytes, bytes | None, int]]:
        """Up to ``limit`` rows ``(rid, rk, value, ts)`` after rowid ``after`` (and below ``hi``), in rowid order."""
        assert self._conn is not None
        table = _table(app)
        if not self._has_table(self._conn, table):
            return []
        sql = f"SELECT rid, rk, value, ts FROM {table} WHERE rid > ?"
        args: list[int] = [after]
        if hi is not None:
            sql += " AND rid < ?"
            args.append(hi)
        if not tombstones:
            sql += " AND value IS NOT NULL"
        sql += " ORDER BY rid LIMIT ?"
        args.append(limit)
        return self._conn.execute(sql, args).fetchall()

    async def _pages(self, app: str, key_range: KeyRange, page_size: int,
                     tombstones: bool) -> AsyncIterator[list[tuple[int, bytes, bytes | None, int]]]:
        after = int(key_range.start) - 1 if key_range.start else 0
        hi = int(key_range.end) if key_range.end else None
        while True:
            rows = await self._run(self._page, app, after, hi, page_size, tombstones)
            if not rows:
                return
            after = rows[-1][0]
            yield rows
            if len(rows) < page_size:
                return

    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        async for rows in self._pages(app, key_range, page_size, tombstones):
            yield [Entity.from_row(app, rk, value, ts) for _, rk, value, ts in rows]

    async def scan_rows(self, app: str, key_range: KeyRange, *, page_size: int = 1000) -> AsyncIterator[list[Row]]:
        async for rows in self._pages(app, key_range, page_size, True):
            yield [(rk, value, ts) for _, rk, value, ts in rows]

    def _rowid_bounds(self, app: str) -> tuple[int, int] | None:
        assert self._conn is not None
        table = _table(app)
        if not self._has_table(self._conn, table):
            return None
        lo, hi = self._conn.execute(f"SELECT min(rid), max(rid) FROM {table}").fetchone()
        return None if lo is None else (lo, hi)

    async def ranges(self, app: str, *, at_least: int = 1) -> list[KeyRange]:
        lo, hi = await self._run(self._rowid_bounds, app) or (1, 1)
        step = max(1, -(-(hi - lo + 1) // max(1, at_least)))
        edges = [""] + [str(lo + step * i) for i in range(1, max(1, at_least))] + [""]
        return [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]

    def _apps(self) -> list[str]:
        assert self._conn is not None
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'e\\_%' ESCAPE '\\'")
        return sorted(row[0][2:] for row in rows)

    async def apps(self) -> list[str]:
        return await self._run(self._apps)

    def _drop(self, app: str) -> None:
        assert self._conn is not None
        table = _table(app)
        self._conn.execute(f"DROP TABLE IF EXISTS {table}")
        self._tables.discard(table)

    async def drop_app(self, app: str) -> None:
        await self._run(self._drop, app)
