"""The embedded default engine: one SQLite file per deployment, WAL, a table per app.

Last-write-wins is one guarded upsert, so it holds without a read-then-write race: a row
changes only when the incoming timestamp is newer, or equal and the incoming write wins
the tie (``Entity.wins_over``: a tombstone over a value, else the greater value; SQLite
compares BLOBs with ``memcmp`` and then by length, which is that byte-wise order). Rows keep their rowid across updates, which is what makes rowid ranges cover a
table exactly once; the last range is open-ended, so rows inserted after ``ranges`` was
called still fall in exactly one range.

All SQLite calls run on one dedicated thread (SQLite connections are bound to a thread),
never on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from datastore.engine import Engine, EngineUnavailable, KeyRange
from datastore.model import Entity, EntityRef, check_app

T = TypeVar("T")


def _table(app: str) -> str:
    return f"e_{check_app(app)}"


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
        self._tables: set[str] = set()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise EngineUnavailable(f"sqlite engine {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        self._conn = conn
        self._tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'e\\_%' ESCAPE '\\'")}

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.path.name}")
        try:
            await self._run(self._connect)
        except sqlite3.Error as exc:
            raise EngineUnavailable(f"cannot open sqlite file {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._conn is not None:
            await self._run(self._conn.close)
        self._executor.shutdown(wait=True)
        self._executor = None
        self._conn = None

    def _has_table(self, table: str) -> bool:
        """Whether the app's table exists; another process on the same file may have made it."""
        if table in self._tables:
            return True
        assert self._conn is not None
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
            self._tables.add(table)
            return True
        return False

    def _ensure_table(self, table: str) -> None:
        if table in self._tables:
            return
        assert self._conn is not None
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (rid INTEGER PRIMARY KEY, rk BLOB NOT NULL UNIQUE, value BLOB, ts INTEGER NOT NULL)"
        )
        self._tables.add(table)

    def _apply(self, entities: Sequence[Entity]) -> None:
        assert self._conn is not None
        by_table: dict[str, list[tuple[bytes, bytes | None, int]]] = {}
        for e in entities:
            by_table.setdefault(_table(e.app), []).append((e.row_key, e.value, e.ts))
        conn = self._conn
        conn.execute("BEGIN")
        try:
            for table, rows in by_table.items():
                self._ensure_table(table)
                conn.executemany(
                    f"INSERT INTO {table} (rk, value, ts) VALUES (?, ?, ?) ON CONFLICT(rk) DO UPDATE "
                    f"SET value = excluded.value, ts = excluded.ts WHERE excluded.ts > {table}.ts "
                    f"OR (excluded.ts = {table}.ts AND {table}.value IS NOT NULL "
                    f"AND (excluded.value IS NULL OR excluded.value > {table}.value))",
                    rows,
                )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        await self._run(self._apply, entities)

    def _read(self, ref: EntityRef) -> Entity | None:
        assert self._conn is not None
        table = _table(ref.app)
        if not self._has_table(table):
            return None
        row = self._conn.execute(f"SELECT value, ts FROM {table} WHERE rk = ?", (ref.row_key,)).fetchone()
        if row is None:
            return None
        return Entity(ref.app, ref.kind, ref.key, row[0], row[1])

    async def read(self, ref: EntityRef) -> Entity | None:
        return await self._run(self._read, ref)

    def _page(self, app: str, after: int, hi: int | None, limit: int, tombstones: bool) -> list[tuple[int, Entity]]:
        assert self._conn is not None
        table = _table(app)
        if not self._has_table(table):
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
        return [(rid, Entity.from_row(app, rk, value, ts)) for rid, rk, value, ts in self._conn.execute(sql, args)]

    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        after = int(key_range.start) - 1 if key_range.start else 0
        hi = int(key_range.end) if key_range.end else None
        while True:
            rows = await self._run(self._page, app, after, hi, page_size, tombstones)
            if not rows:
                return
            after = rows[-1][0]
            yield [entity for _, entity in rows]
            if len(rows) < page_size:
                return

    def _rowid_bounds(self, app: str) -> tuple[int, int] | None:
        assert self._conn is not None
        table = _table(app)
        if not self._has_table(table):
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
