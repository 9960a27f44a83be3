"""Verify and repair: an fsck for a migration, comparing N1 and N2 by content.

N1 and N2 may run different engines whose native ranges (token ranges, regions, rowids)
do not line up, so the comparison uses ranges of its own: buckets of the hash of the row
key. Pass one scans both sides (each in its own ranges, in parallel) and sums per-entity
digests per bucket; equal buckets are done. Pass two rescans only for the keys in
buckets that differ and compares key by key. Memory is bounded by the bucket count plus
the differing buckets' keys, never by the table.

Repair is last-write-wins: for each differing key the entity that wins (newer timestamp;
a tombstone at an equal one) is applied to the side that lacks it. Applying it through
``Engine.apply`` means a repair racing a live ``cow`` write can never undo that write.
This module never deletes anything that it has not seen a newer tombstone for.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from datastore import Checksum, Engine, Entity, KeyRange
from datastore.engine import entity_digest

BUCKET_BITS = 10
BUCKETS = 1 << BUCKET_BITS


def bucket_of(row_key: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(row_key, digest_size=4).digest(), "big") >> (32 - BUCKET_BITS)


@dataclass
class Difference:
    """One key whose copies differ: what each side holds and which side was repaired."""

    row_key: bytes
    n1: Entity | None
    n2: Entity | None

    @property
    def winner(self) -> Entity:
        if self.n1 is None:
            assert self.n2 is not None
            return self.n2
        return self.n1 if self.n1.wins_over(self.n2) else self.n2  # type: ignore[return-value]

    @property
    def kind(self) -> str:
        if self.n2 is None:
            return "missing on N2"
        if self.n1 is None:
            return "missing on N1"
        return "stale on N2" if self.winner is self.n1 else "stale on N1"


@dataclass
class VerifyReport:
    app: str
    n1: Checksum = field(default_factory=Checksum)
    n2: Checksum = field(default_factory=Checksum)
    buckets_differing: int = 0
    differences: list[Difference] = field(default_factory=list)
    repaired: int = 0
    #: keys that differed between the scans but agreed on a second look (writes in flight)
    settled: int = 0

    @property
    def identical(self) -> bool:
        return not self.differences

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for diff in self.differences:
            out[diff.kind] = out.get(diff.kind, 0) + 1
        return out

    def summary(self) -> str:
        settled = f"; {self.settled} in-flight writes agreed on a second look" if self.settled else ""
        if self.identical:
            return f"app {self.app}: N1 and N2 identical ({self.n1}){settled}"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        return f"app {self.app}: {len(self.differences)} keys differ ({parts}); repaired {self.repaired}{settled}"


async def _scan_all(engine: Engine, app: str, workers: int, visit: Callable[[Entity], None]) -> None:
    """Call ``visit`` on every entity of ``app``, tombstones included, ``workers`` ranges at a time."""
    slots = asyncio.Semaphore(workers)

    async def scan(key_range: KeyRange) -> None:
        async with slots:
            async for page in engine.scan(app, key_range, tombstones=True):
                for entity in page:
                    visit(entity)

    await asyncio.gather(*(scan(r) for r in await engine.ranges(app, at_least=workers)))


async def _bucket_sums(engine: Engine, app: str, workers: int) -> tuple[list[Checksum], Checksum]:
    counts = [0] * BUCKETS
    digests = [0] * BUCKETS

    def add(entity: Entity) -> None:
        b = bucket_of(entity.row_key)
        counts[b] += 1
        digests[b] += entity_digest(entity)

    await _scan_all(engine, app, workers, add)
    sums = [Checksum(c, d % (1 << 128)) for c, d in zip(counts, digests)]
    total = Checksum()
    for s in sums:
        total = total + s
    return sums, total


async def _entities_in(engine: Engine, app: str, buckets: set[int], workers: int) -> dict[bytes, Entity]:
    found: dict[bytes, Entity] = {}

    def keep(entity: Entity) -> None:
        if bucket_of(entity.row_key) in buckets:
            found[entity.row_key] = entity

    await _scan_all(engine, app, workers, keep)
    return found


def _same(e1: Entity | None, e2: Entity | None) -> bool:
    return e1 is not None and e2 is not None and entity_digest(e1) == entity_digest(e2)


async def _apply_in_batches(engine: Engine, entities: list[Entity], size: int = 500) -> None:
    for start in range(0, len(entities), size):
        await engine.apply(entities[start:start + size])


async def verify_app(n1: Engine, n2: Engine, app: str, *, repair: bool = False, workers: int = 4,
                     on_difference: Callable[[Difference], None] | None = None) -> VerifyReport:
    """Compare ``app`` on N1 and N2; with ``repair``, make both hold the winning copy."""
    (sums1, total1), (sums2, total2) = await asyncio.gather(_bucket_sums(n1, app, workers), _bucket_sums(n2, app, workers))
    report = VerifyReport(app, total1, total2)
    differing = {b for b in range(BUCKETS) if sums1[b] != sums2[b]}
    report.buckets_differing = len(differing)
    if not differing:
        return report
    side1, side2 = await asyncio.gather(_entities_in(n1, app, differing, workers), _entities_in(n2, app, differing, workers))
    for row_key in sorted(side1.keys() | side2.keys()):
        e1, e2 = side1.get(row_key), side2.get(row_key)
        if _same(e1, e2):
            continue
        # The two scans did not see both sides at one instant: a write in flight (cow writes
        # both sides) shows up as a difference. A second look at just this key settles it.
        ref = (e1 or e2).ref  # type: ignore[union-attr]
        e1, e2 = await asyncio.gather(n1.read(ref), n2.read(ref))
        if _same(e1, e2) or (e1 is None and e2 is None):
            report.settled += 1
            continue
        diff = Difference(row_key, e1, e2)
        report.differences.append(diff)
        if on_difference is not None:
            on_difference(diff)
    if repair:
        to_n1 = [d.winner for d in report.differences if d.winner is not d.n1]
        to_n2 = [d.winner for d in report.differences if d.winner is not d.n2]
        await asyncio.gather(_apply_in_batches(n1, to_n1), _apply_in_batches(n2, to_n2))
        report.repaired = len(to_n1) + len(to_n2)
    return report
