"""The one engine interface that every phase speaks.

The proxy, the snapshot loader and the verifier only ever see this interface; only the
modules in ``datastore/engines/`` know an engine. Each app is its own table, so a
migration can move one app (one tenant) at a time.

Contract every engine keeps (the conformance suite in ``tests/`` checks each one):

* **Last-write-wins by timestamp, deletes included.** ``apply`` of an entity changes the
  stored state only when ``Entity.wins_over`` the stored one: a newer timestamp wins; at
  an equal timestamp a tombstone wins over a value, and of two values the greater
  (byte-wise) wins, in any arrival order, in one batch or several. An older put after a
  newer put or delete changes nothing. The engine reaches this with its own mechanism
  (Cassandra ``USING TIMESTAMP``, HBase cell timestamps with a column per value, SQLite a
  guarded upsert), never with a read-then-write race.
* **Tombstones are rows.** A delete is stored with its timestamp and is returned by
  ``scan(..., tombstones=True)`` and ``read``, so exports carry deletes and verify can
  repair by timestamp. ``get`` hides them.
* **Ranges cover a table exactly once.** ``ranges`` returns ranges such that every row of
  the app, including rows written after the call, is in exactly one of them. A
  ``KeyRange`` is opaque outside the engine that made it (Cassandra token ranges, HBase
  region boundaries, SQLite rowid ranges) but is plain strings, so it can be
  checkpointed in ZooKeeper and handed back to the same engine later.
* **Rows are entities without the objects.** ``scan_rows`` and ``apply_rows`` are ``scan``
  (tombstones included) and ``apply`` for one app's ``Row`` tuples, the snapshot's bulk
  paths; an engine that overrides them (SQLite does) skips an ``Entity`` per row on each
  side of a copy, and verify digests rows it never turns into entities.
* **Checksums are engine-independent.** ``checksum`` of equal content is equal on every
  engine, whatever the ranges: it is an order-independent sum of per-entity digests.
* **The event loop never waits.** A network round trip, a lock wait or large I/O never
  runs on the event loop: a driver's own asynchronous API, or a thread the engine owns,
  does it. An engine's blocking calls leave the loop through one method, its ``_run``, on
  the engine's own bounded executor (not nxnw's pools of ``sync.aio``: ``datastore/``
  imports nothing of nxnw's, and a connection may belong to the thread that made it, as
  SQLite's does). Work that is small and bounded may run on the loop when handing it to a
  thread would cost more than doing it — SQLite's small writes and point reads, whose
  bounds and fallback its module states.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from xxhash import xxh3_128_intdigest

from datastore.model import Entity, EntityRef, Row, check_app, check_batch, check_rows

_DIGEST_MOD = 1 << 128


@dataclass(frozen=True, slots=True)
class KeyRange:
    """A slice of one app's table, in the terms of the engine that produced it.

    ``start`` is inclusive and ``end`` exclusive; an empty string means unbounded.
    """

    start: str
    end: str

    def __str__(self) -> str:
        return f"[{self.start or '-inf'}, {self.end or '+inf'})"


#: What follows the row key in a digested write: NUL, the timestamp, then ``\x01V`` and the
#: value's length before the value, or ``\x00D`` for a tombstone.
_VALUE_HEAD = struct.Struct(">xQ2sI")
_TOMBSTONE_HEAD = struct.Struct(">xQ2s")


def row_digests(app: str, rows: Iterable[Row]) -> list[int]:
    """The 128-bit digest of each row of ``app``: of everything that makes two copies of a
    write equal (app, row key, timestamp, value or tombstone).

    One hash call per row over the joined bytes: verify digests every row of both sides on
    its event loop, so the hash is most of verify's cost per row. XXH3-128: the digest must
    tell accidental differences apart (a lost or stale write), not resist an adversary who
    would write colliding values, and for a 1 KB row it costs 0.17 µs against SHA-256's
    1.4 µs and BLAKE2b's 1.9 µs on the test machine."""
    prefix = app.encode() + b"\x00"
    digest, value_head, tombstone_head = xxh3_128_intdigest, _VALUE_HEAD.pack, _TOMBSTONE_HEAD.pack
    return [digest(b"".join((prefix, row_key, value_head(ts, b"\x01V", len(value)), value))
                   if value is not None else prefix + row_key + tombstone_head(ts, b"\x00D"))
            for row_key, value, ts in rows]


def entity_digest(entity: Entity) -> int:
    """A 128-bit digest of everything that makes two copies of an entity equal (``row_digests``)."""
    return row_digests(entity.app, [(entity.row_key, entity.value, entity.ts)])[0]


@dataclass(frozen=True, slots=True)
class Checksum:
    """Count and digest sum of a set of entities; checksums of disjoint sets add up."""

    count: int = 0
    digest: int = 0

    def __add__(self, other: "Checksum") -> "Checksum":
        return Checksum(self.count + other.count, (self.digest + other.digest) % _DIGEST_MOD)

    @classmethod
    def of(cls, entities: Iterable[Entity]) -> "Checksum":
        count = 0
        total = 0
        for entity in entities:
            count += 1
            total += entity_digest(entity)
        return cls(count, total % _DIGEST_MOD)

    @classmethod
    def of_rows(cls, app: str, rows: Sequence[Row]) -> "Checksum":
        return cls(len(rows), sum(row_digests(app, rows)) % _DIGEST_MOD)

    def __str__(self) -> str:
        return f"{self.count} entities, digest {self.digest:032x}"


class Engine(ABC):
    """An open connection to one deployment's datastore (N1's or N2's).

    Engines are opened with ``await engine.open()`` and closed with ``await
    engine.close()`` (or ``async with``). ``url`` is what ``datastore.open_engine`` parsed.
    """

    scheme: ClassVar[str]

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> "Engine":
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect; raise ``EngineUnavailable`` with the address when it cannot."""

    @abstractmethod
    async def close(self) -> None: ...

    async def apply(self, entities: Sequence[Entity]) -> None:
        """Apply puts and tombstones, each last-write-wins against what is stored.

        Entities may belong to different apps; a batch is not atomic across entities. The
        whole batch is checked first (``check_batch``): one bad entity refuses the batch
        with ``InvalidEntity`` before anything of it reaches the engine.
        """
        check_batch(entities)
        if entities:
            await self._write_batch(entities)

    def apply_in_place(self, entities: Sequence[Entity]) -> bool:
        """``apply`` done now, without awaiting, if this engine can do it on the event loop
        without waiting (see "The event loop never waits" above): True when it is applied,
        exactly as ``apply`` would have; False when nothing of it was done and ``apply`` must
        be awaited. Raises what ``apply`` raises. It saves a caller that runs two writes at
        once (a ``cow`` write) a task for a leg that has nothing to wait for. The default
        never can."""
        return False

    @abstractmethod
    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        """``apply`` for a non-empty batch that ``check_batch`` has passed."""

    async def apply_rows(self, app: str, rows: Sequence[Row]) -> None:
        """``apply`` for rows of one app: the bulk path of a snapshot load. Same
        last-write-wins, same check of the whole batch first (``check_rows``), but no
        ``Entity`` is built for an engine that takes rows as they are."""
        check_rows(app, rows)
        if rows:
            await self._write_rows(app, rows)

    async def _write_rows(self, app: str, rows: Sequence[Row]) -> None:
        """``apply_rows`` for a non-empty batch that ``check_rows`` has passed; through
        ``_write_batch`` unless the engine has a faster way."""
        await self._write_batch([Entity.from_row(app, *row) for row in rows])

    @abstractmethod
    async def read(self, ref: EntityRef) -> Entity | None:
        """The stored entity, tombstone included; ``None`` when the key was never written."""

    @abstractmethod
    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        """Yield the range's entities page by page (order within a range is the engine's)."""
        yield []  # pragma: no cover - the signature of an async generator

    async def scan_rows(self, app: str, key_range: KeyRange, *, page_size: int = 1000) -> AsyncIterator[list[Row]]:
        """``scan(..., tombstones=True)`` as rows: what export and verify read. Through
        ``scan`` unless the engine can hand rows over without an ``Entity`` each."""
        async for page in self.scan(app, key_range, page_size=page_size, tombstones=True):
            yield [(e.row_key, e.value, e.ts) for e in page]

    @abstractmethod
    async def ranges(self, app: str, *, at_least: int = 1) -> list[KeyRange]:
        """Ranges that cover the app's table exactly once; at least ``at_least`` of them (some
        may be empty), so a snapshot can spread even a small table over its workers."""

    @abstractmethod
    async def apps(self) -> list[str]:
        """The apps that have a table on this deployment."""

    @abstractmethod
    async def drop_app(self, app: str) -> None:
        """Remove an app's table and every row in it (tests and rollback of N2 only)."""

    async def get(self, ref: EntityRef) -> Entity | None:
        """The live entity, or ``None`` when it is absent or deleted."""
        entity = await self.read(ref)
        return None if entity is None or entity.deleted else entity

    async def put(self, entity: Entity) -> None:
        await self.apply([entity])

    async def delete(self, ref: EntityRef, ts: int) -> None:
        await self.apply([Entity(ref.app, ref.kind, ref.key, None, ts)])

    async def write_time(self, ref: EntityRef) -> int | None:
        """The timestamp of the last write or delete that won, or ``None``."""
        entity = await self.read(ref)
        return None if entity is None else entity.ts

    async def checksum(self, app: str, key_range: KeyRange) -> Checksum:
        """Checksum of a range, tombstones included (they are content: a delete must match)."""
        check_app(app)
        total = Checksum()
        async for page in self.scan_rows(app, key_range):
            total = total + Checksum.of_rows(app, page)
        return total

    async def table_checksum(self, app: str) -> Checksum:
        total = Checksum()
        for key_range in await self.ranges(app):
            total = total + await self.checksum(app, key_range)
        return total


class EngineUnavailable(ConnectionError):
    """The engine did not answer; the message names the address."""
