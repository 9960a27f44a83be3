"""Verify and repair: an fsck for a migration, comparing N1 and N2 by content.

N1 and N2 may run different engines whose native ranges (token ranges, regions, rowids)
do not line up, so the comparison uses ranges of its own: buckets of the hash of the row
key. Pass one scans both sides at once (each in its own ranges, ``workers`` at a time)
and sums per-row digests per bucket; equal buckets are done. It works on the rows the
engines hand over (``Engine.scan_rows``) and builds no ``Entity``: the digest is one hash
call per row, the bucket a CRC of the key. Pass two rescans both sides, keeps only the
rows in buckets that differ, builds entities for those alone and compares key by key.
Memory is bounded by the bucket count plus the differing buckets' keys, never by the table.

Repair is last-write-wins, and it only ever copies what N1 wrote — a migration never
invents data on N1:

* N1's copy wins (N2 lacks the key, or holds an older copy): N1's copy is applied to N2.
* N2 holds a key N1 has never held (no row, no tombstone): never copied to N1. Nothing the
  migration does puts such a row on N2 first (``cow`` writes N1, then N2 with the same
  timestamp), so it is a foreign row: someone wrote to N2 behind the proxy's back, or an
  earlier attempt left it. It stays a difference that stops the migration.
* N2's copy is newer than N1's: copied to N1 only when ``n2_primary`` — in ``proxy`` mode
  the proxies write N2 first and N1 after, so a newer N2 copy is a write N1 has yet to
  receive. Before ``proxy`` it cannot come from the migration and stays a difference.
  (A newer N2 copy cannot be repaired toward N2 either: last-write-wins keeps it.)

Applying through ``Engine.apply`` means a repair racing a live ``cow`` write can never
undo that write. After a repair, every differing key is read again on both sides (a few
looks, ``LOOK_AGAIN_PAUSES`` apart, so a write in flight settles): what still differs is
``remaining``, the verdict that gates ``proxy``. This module never deletes anything that it has not seen a newer
tombstone for, and never writes to N1 a key N1 has never held.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from datastore import Checksum, Engine, Entity, KeyRange, Row
from datastore.engine import entity_digest, row_digests

BUCKET_BITS = 10
BUCKETS = 1 << BUCKET_BITS
#: Rows per read of each side (one engine call per page).
SCAN_PAGE_ROWS = 2000
#: Ranges of each side read at once. The event loop digests every row, and with more pages
#: in flight it waits less for the next one: 50,000 x 1 KB, sqlite vs sqlite, three pairs
#: back to back on the loaded test machine, 43,850-49,555 entities/s at 4, 49,565-60,447 at 8.
VERIFY_WORKERS = 8
_DIGEST_MOD = 1 << 128


def bucket_of(row_key: bytes) -> int:
    """The row key's bucket: the top bits of its CRC-32, the same on every engine and in every
    process. Only the spread matters here (the digests find differences), and CRC-32 is a
    quarter of the cost of a cryptographic hash for a key, which verify pays per row."""
    return zlib.crc32(row_key) >> (32 - BUCKET_BITS)


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

    @property
    def label(self) -> str:
        """The key as an operator reads it: ``Kind/key`` (the key's bytes shown as Python shows them)."""
        kind, _, key = self.row_key.partition(b"\x00")
        return f"{kind.decode(errors='replace')}/{key!r}"

    def repair_target(self, n2_primary: bool) -> str | None:
        """The side a repair writes the winner to ("n1" or "n2"), or None when it must not."""
        if self.winner is self.n1:
            return "n2"
        if self.n1 is None or not n2_primary:
            return None  # a row N1 never held, or newer on N2 before N2 serves: not from the migration
        return "n1"

    def unrepairable_reason(self, n2_primary: bool) -> str:
        """Why ``repair_target(n2_primary)`` is None for this difference."""
        if self.n1 is None and n2_primary:
            return ("on N2 only: verify never copies to N1 a key N1 never held; a write made in proxy mode "
                    "reaches N1 through the repair journal toward N1")
        if self.n1 is None:
            return "on N2 only: N1 never held it, so it did not come from the migration"
        return "newer on N2 than on N1 before N2 serves: not written by the migration"


@dataclass
class VerifyReport:
    app: str
    n1: Checksum = field(default_factory=Checksum)
    n2: Checksum = field(default_factory=Checksum)
    differences: list[Difference] = field(default_factory=list)
    repaired: int = 0
    #: keys that differed between the scans but agreed on a second look (writes in flight)
    settled: int = 0
    #: what still differs after the last look (and, with repair, after the repair)
    remaining: list[Difference] = field(default_factory=list)
    #: a reason per remaining key (its label), when the repair left it alone on purpose
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        """N1 and N2 held the same data when verify first compared them."""
        return not self.differences

    @property
    def ok(self) -> bool:
        """Nothing differs any more (identical, or every difference repaired)."""
        return not self.remaining

    def remaining_keys(self, limit: int = 10) -> str:
        """The first ``limit`` keys that still differ, each with its kind of difference and reason."""
        shown = [f"{d.label} ({d.kind}{'; ' + self.reasons[d.label] if d.label in self.reasons else ''})"
                 for d in self.remaining[:limit]]
        more = f" and {len(self.remaining) - limit} more" if len(self.remaining) > limit else ""
        return ", ".join(shown) + more

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
        line = f"app {self.app}: {len(self.differences)} keys differ ({parts}); repaired {self.repaired}{settled}"
        if self.remaining:
            line += f"; {len(self.remaining)} still differ: {self.remaining_keys()}"
        elif self.repaired:
            line += "; N1 and N2 identical after repair"
        return line


async def _scan_all(engine: Engine, app: str, workers: int, visit: Callable[[list[Row]], None]) -> None:
    """Call ``visit`` on every page of ``app``'s rows, tombstones included, ``workers`` ranges at a time."""
    slots = asyncio.Semaphore(workers)

    async def scan(key_range: KeyRange) -> None:
        async with slots:
            async for page in engine.scan_rows(app, key_range, page_size=SCAN_PAGE_ROWS):
                visit(page)

    await asyncio.gather(*(scan(r) for r in await engine.ranges(app, at_least=workers)))


def add_to_buckets(app: str, rows: Sequence[Row], counts: list[int], digests: list[int]) -> None:
    """Count and sum the digests of ``rows`` into their buckets: pass one's work per row,
    done on rows as the engine hands them over, with no ``Entity`` built."""
    crc32, shift = zlib.crc32, 32 - BUCKET_BITS  # bucket_of, without a call per row
    for (row_key, _, _), digest in zip(rows, row_digests(app, rows)):
        b = crc32(row_key) >> shift
        counts[b] += 1
        digests[b] += digest


def bucket_checksums(counts: Sequence[int], digests: Sequence[int]) -> tuple[list[Checksum], Checksum]:
    """Per-bucket checksums and the table's, from pass one's counts and digest sums."""
    sums = [Checksum(c, d % _DIGEST_MOD) for c, d in zip(counts, digests)]
    return sums, Checksum(sum(counts), sum(digests) % _DIGEST_MOD)


async def _bucket_sums(engine: Engine, app: str, workers: int) -> tuple[list[Checksum], Checksum]:
    counts = [0] * BUCKETS
    digests = [0] * BUCKETS
    await _scan_all(engine, app, workers, lambda page: add_to_buckets(app, page, counts, digests))
    return bucket_checksums(counts, digests)


def rows_in(rows: Sequence[Row], buckets: Collection[int]) -> list[Row]:
    """The rows that fall in ``buckets`` (pass two keeps only those)."""
    return [row for row in rows if bucket_of(row[0]) in buckets]


async def _entities_in(engine: Engine, app: str, buckets: set[int], workers: int) -> dict[bytes, Entity]:
    """The entities of the differing ``buckets``: the only ones verify builds as objects."""
    found: dict[bytes, Entity] = {}

    def keep(page: list[Row]) -> None:
        for row_key, value, ts in rows_in(page, buckets):
            found[row_key] = Entity.from_row(app, row_key, value, ts)

    await _scan_all(engine, app, workers, keep)
    return found


def _same(e1: Entity | None, e2: Entity | None) -> bool:
    return e1 is not None and e2 is not None and entity_digest(e1) == entity_digest(e2)


async def _apply_in_batches(engine: Engine, entities: list[Entity], size: int = 500) -> None:
    for start in range(0, len(entities), size):
        await engine.apply(entities[start:start + size])


async def _look_again(n1: Engine, n2: Engine, diff: Difference) -> Difference | None:
    """Read the key on both sides again: None if they now agree, else the difference as seen now."""
    ref = (diff.n1 or diff.n2).ref  # type: ignore[union-attr]
    e1, e2 = await asyncio.gather(n1.read(ref), n2.read(ref))
    if _same(e1, e2) or (e1 is None and e2 is None):
        return None
    return Difference(diff.row_key, e1, e2)


#: Pauses before each look at what a repair left: a cow write in flight (its two legs run
#: in parallel) can show as a difference for a moment; a difference that survives every
#: look is real. One pause per round for all keys, so many real differences cost no more.
LOOK_AGAIN_PAUSES = (0.0, 0.1, 0.5, 1.0)


async def _still_differing(n1: Engine, n2: Engine, diffs: list[Difference], workers: int) -> list[Difference]:
    slots = asyncio.Semaphore(workers * 8)

    async def look(diff: Difference) -> Difference | None:
        async with slots:
            return await _look_again(n1, n2, diff)

    for pause in LOOK_AGAIN_PAUSES:
        if not diffs:
            break
        await asyncio.sleep(pause)
        diffs = [d for d in await asyncio.gather(*(look(d) for d in diffs)) if d is not None]
    return diffs


async def verify_app(n1: Engine, n2: Engine, app: str, *, repair: bool = False, n2_primary: bool = False,
                     workers: int = VERIFY_WORKERS,
                     on_difference: Callable[[Difference], None] | None = None) -> VerifyReport:
    """Compare ``app`` on N1 and N2; with ``repair``, copy what N1 wrote (see the module
    docstring; ``n2_primary`` when the proxies serve from N2) and look again.

    ``report.remaining`` is what still differs; ``report.ok`` is the verdict."""
    (sums1, total1), (sums2, total2) = await asyncio.gather(_bucket_sums(n1, app, workers), _bucket_sums(n2, app, workers))
    report = VerifyReport(app, total1, total2)
    differing = {b for b in range(BUCKETS) if sums1[b] != sums2[b]}
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
    if not repair:
        report.remaining = await _still_differing(n1, n2, report.differences, workers)
        return report
    to_n1 = [d.winner for d in report.differences if d.repair_target(n2_primary) == "n1"]
    to_n2 = [d.winner for d in report.differences if d.repair_target(n2_primary) == "n2"]
    await asyncio.gather(_apply_in_batches(n1, to_n1), _apply_in_batches(n2, to_n2))
    report.repaired = len(to_n1) + len(to_n2)
    report.remaining = await _still_differing(n1, n2, report.differences, workers)
    report.reasons = {d.label: d.unrepairable_reason(n2_primary) for d in report.remaining
                      if d.repair_target(n2_primary) is None}
    return report
