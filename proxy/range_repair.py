"""Range repair: bring a set of hash buckets of one app from a source engine to a target.

The repair journal (``proxy/journal.py``) names a key per entry while it is below its
bound; beyond it, a failed write marks the key's *bucket* (``bucket_of``) dirty instead.
This module resolves such marks on the engine interface alone (the proxy may not import
``snapshot``): it scans the app on the source, every range, tombstones included; keeps the
entities whose row key falls in a dirty bucket; reads each one's copy on the target and
applies the source's copy where it wins (``Entity.wins_over``, last-write-wins — the rule
every engine applies anyway, so a repair racing a newer write to the target changes
nothing).

It only ever copies what the source holds: a key the target holds and the source lacks is
left alone (it cannot come from a write the journal recorded, which reached the source
first), and nothing is ever deleted except by a newer tombstone copied from the source.

A bucket is the same whatever the engines: a hash of the row key, not an engine's range,
so N1 and N2 (different engines, ranges that do not line up) agree on it. Memory is one
scan page and its target reads, never the table; the cost is a scan of the whole app on
the source plus one target read per entity in a dirty bucket.

Must never: write to the source; copy a key the source lacks; hold more than a page.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from datastore import Engine, Entity

#: How many target reads of one page run at once.
READ_CONCURRENCY = 32


def bucket_of(row_key: bytes, buckets: int) -> int:
    """The bucket (``0 <= b < buckets``) of a row key; the same on every engine."""
    return int.from_bytes(hashlib.blake2b(row_key, digest_size=8).digest(), "big") % buckets


@dataclass
class BucketRepair:
    """What one repair of an app's dirty buckets did."""

    app: str
    buckets: frozenset[int]
    #: entities of the dirty buckets found on the source (tombstones included)
    examined: int = 0
    #: of those, how many the target lacked or held older, and received
    copied: int = 0


async def repair_buckets(source: Engine, target: Engine, app: str, buckets: frozenset[int], of: int, *,
                         page_size: int = 500) -> BucketRepair:
    """Copy to ``target`` every entity of ``app`` in ``buckets`` (out of ``of``) that the
    source holds newer than the target (see the module docstring).

    Raises whatever either engine raises (the target still down); nothing is lost then,
    the caller keeps its marks and repairs again later.
    """
    report = BucketRepair(app, buckets)
    slots = asyncio.Semaphore(READ_CONCURRENCY)

    async def stored(entity: Entity) -> Entity | None:
        async with slots:
            return await target.read(entity.ref)

    for key_range in await source.ranges(app):
        async for page in source.scan(app, key_range, page_size=page_size, tombstones=True):
            dirty = [e for e in page if bucket_of(e.row_key, of) in buckets]
            if not dirty:
                continue
            on_target = await asyncio.gather(*(stored(e) for e in dirty))
            newer = [e for e, t in zip(dirty, on_target) if e.wins_over(t)]
            if newer:
                await target.apply(newer)
            report.examined += len(dirty)
            report.copied += len(newer)
    return report
