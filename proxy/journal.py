"""The repair journal: keys whose write reached one side but not the other.

Entries live in N1's ZooKeeper under the plan's ``journal/<target>`` (``sync.layout``), so
that they survive a crash of the proxy that wrote them, every proxy instance sees one
journal per plan, and the orchestrator can wait for it to be empty before the plan's mode
changes (DESIGN invariant 2). Each plan has its own two journals: its apps' writes are
journalled there and checked against its own mode znode. An
entry names a key, never a value: replay reads the key's current state on the source side
(tombstone included) and applies it to the target last-write-wins, so a replay can never
undo a newer write, and replaying twice is harmless.

Bounded: one entry per key, then range marks
--------------------------------------------
The journal needs the key, not every write, so an entry's znode name is a hash of (app,
kind, key) (``entry_name``): a second failed write of the same key finds the entry and
*bumps* it (a ``set_data`` that raises its version) instead of adding one. The bump is what
makes coalescing safe against a replay in progress: replay reads an entry's version
*before* it reads the source, and deletes the entry only at that version. A write recorded
after replay read the version bumped it, so the delete fails and the entry stays for the
next pass; a write recorded before was on the source (the record follows the source's
write) before replay read it.

The journal holds at most ``bound`` entries (counted by the parent's ``numChildren``).
Beyond it, a key without an entry is recorded as a **range mark** instead: a znode
``r-<app>-<bucket>-<buckets>`` that says "some keys of this app whose row key hashes to this
bucket (``proxy.range_repair.bucket_of``) may be missing on the target". Marks coalesce
and bump the same way, so a journal never holds more than ``bound`` entries plus one mark
per app and bucket (``MARK_BUCKETS``), however long the target is down and however many
writes fail. The replayer resolves a mark with a range verify + repair of its app's dirty
buckets (``proxy/range_repair.py``: scan the source, copy what is newer than the target's
copy) and deletes the mark at the version it read before the scan — so a write marked
during the repair keeps the mark. Nothing is lost by the switch, only precision: the
repair costs a scan of the app. The switch is logged (once per episode, with the bound)
and counted (``nxnw_journal_keys_marked_total``), as is every resolution
(``nxnw_journal_range_repairs_total``, ``nxnw_journal_range_repaired_keys_total``). The
bound is checked before each record, so records of several instances at the same moment
can overshoot it by the entries they carry; the depth the orchestrator waits on
(``proxy.control.journal_depth``) counts entries and marks alike: 0 means nothing is left.

Recording is fenced by the mode (DESIGN invariants 2 and 3). ``record`` is a ZooKeeper
transaction (one per ``TRANSACTION_OPS`` keys): a *check* of the mode znode's version the
request was admitted under, plus the creates and bumps. Once the mode changed, a record
from a request of the old mode fails with ``ModeChanged`` — so after ``switch_mode`` saw
every instance acknowledge the new mode and then found the journal empty, no checked
entry can appear any more. The caller (the dual-write route) then records the keys
*unchecked* (``record_late``) and answers the client 503: the write is not acknowledged.
That late entry is safe: replay reads the key's current state on the source side and
applies it last-write-wins, so it can only carry a write that exists on the source to the
target (as if that unacknowledged write had landed late); it never undoes a newer one.

Error handling: when ZooKeeper does not take an entry (no session, timeout), the keys are
*held* in memory (``held``; bounded like the journal: past ``bound`` keys, a key is held as
its range mark, ``held_marks``) and ``JournalReplayer`` records them as soon as ZooKeeper
answers again; the request is answered 503 with the reason and counted
(``nxnw_journal_record_failures_total``), so N1 is never ahead silently. An instance
acknowledges a mode only after ``flush_held`` emptied what it holds, so a held key cannot
hide from the switch's journal check. A held key is lost only if the process dies before
ZooKeeper answers again; the two sides then differ on that unacknowledged key and
verify (which gates ``proxy``) finds and repairs it. Whether a key's entry or mark exists
is read before the transaction; when another instance created or removed it in between,
the transaction fails as a whole and is planned again (``RACE_ATTEMPTS`` times). A lost
reply to a transaction that had committed makes the retry bump what it created: harmless.
Replay keeps an entry or mark until the target has taken the write; a target that is still
down leaves it for the next pass. Every ZooKeeper call runs off the event loop, and every
operation (a record, a depth read, a replay pass's reads and deletes) gives up after
``DEADLINE_S``, each wait for an answer included: kazoo queues a call made while it
reconnects until it is connected again, however long ZooKeeper stays out of reach, and the
client of a write whose N2 leg failed would wait that long for its answer.

Every instance's replayer works on the one journal: two resolving the same entry or mark
at once is harmless (last-write-wins, deletes at the version read), only repeated work.

Must never: delete an entry or mark at a version other than the one read before the
source was read; hold more than ``bound`` entries (but for the overshoot above), in
ZooKeeper or in memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import (BadVersionError, NodeExistsError, NoNodeError, RolledBackError,
                              RuntimeInconsistency)
from prometheus_client import Counter, Gauge

from datastore import Engine, Entity, EntityRef
from proxy.range_repair import READ_CONCURRENCY, bucket_of, repair_buckets
from sync.aio import run_blocking
from sync import layout
from sync._zk import answer, bounded_retry

log = logging.getLogger("nxnw.proxy.journal")

#: Entries (one per key) the journal holds before new keys are recorded as range marks.
DEFAULT_BOUND = 10_000
#: Buckets per app for range marks: at most this many marks per app.
MARK_BUCKETS = 256
#: Keys (creates and bumps) per ZooKeeper transaction; keeps a transaction far below
#: ZooKeeper's 1 MB request limit (an entry is at most ~1.6 KB: a 1 KB key in base64).
TRANSACTION_OPS = 200
#: How many times a record is planned again after another instance created or removed
#: one of its entries between the existence reads and the transaction.
RACE_ATTEMPTS = 8
#: How long one journal operation may wait for ZooKeeper, retries included; a record that
#: runs out holds its keys and the write is answered 503 (see the module docstring).
DEADLINE_S = 10.0
ENTRY_PREFIX = "k-"
MARK_PREFIX = "r-"

JOURNAL_DEPTH = Gauge("nxnw_repair_journal_depth", "Keys and range marks waiting in the repair journal", ["plan", "target"])
RECORD_FAILURES = Counter("nxnw_journal_record_failures_total",
                          "Journal records ZooKeeper did not take (keys held in memory until it does)", ["plan", "target"])
JOURNAL_HELD = Gauge("nxnw_journal_held_keys",
                     "Keys (and range marks) held in memory until ZooKeeper takes their journal entry", ["plan", "target"])
KEYS_MARKED = Counter("nxnw_journal_keys_marked_total",
                      "Keys recorded as a range mark (journal at its bound) instead of an entry of their own",
                      ["plan", "target"])
RANGE_REPAIRS = Counter("nxnw_journal_range_repairs_total",
                        "Range marks resolved by a range verify + repair", ["plan", "target"])
RANGE_REPAIRED_KEYS = Counter("nxnw_journal_range_repaired_keys_total",
                              "Keys a range repair found newer on the source and copied to the target", ["plan", "target"])


class ModeChanged(RuntimeError):
    """The mode znode is no longer at the version the request was admitted under."""


class _Raced(Exception):
    """An entry or mark appeared or vanished between the existence reads and the transaction."""


T = TypeVar("T")


def _within(end: float, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args, end)`` retried on connection loss until monotonic time ``end``; ``fn``
    bounds each wait for an answer by ``end`` too (``sync._zk.answer``)."""
    return bounded_retry(max(end - time.monotonic(), 0.01))(fn, *args, end)


def entry_name(ref: EntityRef) -> str:
    """The one znode name a key's entry has (so a second record of the key finds it)."""
    digest = hashlib.blake2b(ref.app.encode() + b"\x00" + ref.row_key, digest_size=16).hexdigest()
    return f"{ENTRY_PREFIX}{digest}"


def mark_name(app: str, bucket: int, buckets: int = MARK_BUCKETS) -> str:
    """The znode name of a range mark (app names never contain '-')."""
    return f"{MARK_PREFIX}{app}-{bucket}-{buckets}"


@dataclass(frozen=True)
class RangeMark:
    """A recorded "range dirty" mark, with the version read before its repair started."""

    name: str
    app: str
    bucket: int
    buckets: int
    version: int


class RepairJournal:
    """A durable, bounded list of keys (and key ranges) of plan ``plan``'s apps that
    ``target`` ("n1" or "n2") still has to receive."""

    def __init__(self, zk: KazooClient, target: str, *, plan: str, bound: int = DEFAULT_BOUND) -> None:
        if target not in ("n1", "n2"):
            raise ValueError(f"journal target {target!r} must be 'n1' or 'n2'")
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise ValueError(f"journal bound {bound!r} must be a positive number of entries")
        self.zk = zk
        self.target = target
        self.plan = plan
        self.bound = bound
        self.path = layout.journal(plan, target)
        self.mode_path = layout.mode(plan)
        #: keys whose entry ZooKeeper did not take yet (see the module docstring), at most ``bound``
        self.held: dict[EntityRef, str] = {}
        #: past ``bound`` held keys, the (app, bucket) range marks held instead
        self.held_marks: dict[tuple[str, int], str] = {}
        #: whether this instance's last record found the journal at its bound (logged once)
        self._at_bound = False
        self.zk.ensure_path(self.path)

    # --- recording ------------------------------------------------------------------------

    def _entry(self, ref: EntityRef, reason: str) -> bytes:
        return json.dumps({"app": ref.app, "kind": ref.kind, "key": base64.b64encode(ref.key).decode(),
                           "reason": reason[:200]}).encode()

    def _mark(self, app: str, bucket: int, reason: str) -> bytes:
        return json.dumps({"app": app, "bucket": bucket, "buckets": MARK_BUCKETS, "reason": reason[:200]}).encode()

    def _plan(self, refs: Sequence[EntityRef], reason: str,
              marks: Sequence[tuple[str, int]], end: float) -> tuple[dict[str, tuple[bytes, bool]], int, int]:
        """What to write for ``refs`` and the (app, bucket) ``marks``: {znode path: (data,
        exists)}, the keys marked, and the depth seen."""
        zk = self.zk
        parent = zk.exists_async(self.path)
        entries = {ref: zk.exists_async(f"{self.path}/{entry_name(ref)}") for ref in refs}
        stat = answer(zk, parent, end, "a journal read")
        if stat is None:
            raise NoNodeError(f"the journal znode {self.path} is gone")
        depth = stat.numChildren
        plan: dict[str, tuple[bytes, bool]] = {}
        marked = {f"{self.path}/{mark_name(app, bucket)}": self._mark(app, bucket, reason) for app, bucket in marks}
        keys_marked = 0
        for ref, found in entries.items():
            path = f"{self.path}/{entry_name(ref)}"
            if answer(zk, found, end, "a journal read") is not None:
                plan[path] = (self._entry(ref, reason), True)
            elif depth < self.bound:
                plan[path] = (self._entry(ref, reason), False)
                depth += 1
            else:
                bucket = bucket_of(ref.row_key, MARK_BUCKETS)
                marked[f"{self.path}/{mark_name(ref.app, bucket)}"] = self._mark(ref.app, bucket, reason)
                keys_marked += 1
        mark_checks = {path: zk.exists_async(path) for path in marked}
        for path, found in mark_checks.items():
            plan[path] = (marked[path], answer(zk, found, end, "a journal read") is not None)
        return plan, keys_marked, depth

    def _commit(self, plan: dict[str, tuple[bytes, bool]], mode_version: int | None, end: float) -> None:
        items = list(plan.items())
        for start in range(0, len(items), TRANSACTION_OPS):
            transaction = self.zk.transaction()
            if mode_version is not None:
                transaction.check(self.mode_path, mode_version)
            for path, (data, exists) in items[start:start + TRANSACTION_OPS]:
                if exists:
                    transaction.set_data(path, data)  # the bump: see the module docstring
                else:
                    transaction.create(path, data)
            results = answer(self.zk, transaction.commit_async(), end, "the journal transaction")
            failed = [r for r in results if isinstance(r, Exception)
                      and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
            if not failed:
                continue
            if mode_version is not None and isinstance(results[0], (BadVersionError, NoNodeError)):
                raise ModeChanged(f"the mode changed since this request was admitted (mode znode version "
                                  f"{mode_version}); its journal entry toward {self.target} was refused")
            if isinstance(failed[0], (NodeExistsError, NoNodeError)):
                raise _Raced(str(failed[0]))
            raise failed[0]

    def _record(self, refs: Sequence[EntityRef], reason: str, mode_version: int | None,
                marks: Sequence[tuple[str, int]] = ()) -> int:
        """Create or bump each key's entry (or its range mark) and each of ``marks``; returns
        the keys marked."""
        unique = list(dict.fromkeys(refs))
        end = time.monotonic() + DEADLINE_S
        for _ in range(RACE_ATTEMPTS):
            plan, keys_marked, depth = _within(end, self._plan, unique, reason, marks)
            try:
                _within(end, self._commit, plan, mode_version)
            except _Raced:
                continue
            self._note_bound(keys_marked, depth)
            return keys_marked
        raise RuntimeError(f"the journal toward {self.target} kept changing under {len(unique)} key(s) for "
                           f"{RACE_ATTEMPTS} attempts; not recorded")

    def _note_bound(self, keys_marked: int, depth: int) -> None:
        if keys_marked:
            KEYS_MARKED.labels(self.plan, self.target).inc(keys_marked)
            if not self._at_bound:
                self._at_bound = True
                log.warning("the repair journal toward %s holds %d entries, its bound: new keys are recorded as "
                            "range marks (app and hash bucket), which the replayer resolves with a range verify + "
                            "repair; nothing is lost", self.target, depth)
        elif self._at_bound and depth < self.bound:
            self._at_bound = False
            log.info("the repair journal toward %s is below its bound of %d entries again: keys get entries of "
                     "their own", self.target, self.bound)

    async def record(self, refs: Sequence[EntityRef], reason: str, *, mode_version: int) -> None:
        """Journal ``refs`` if the mode is still at ``mode_version`` (ModeChanged if not).

        Raises whatever ZooKeeper raised if it did not take the entry; call ``hold`` then.
        """
        marked = await run_blocking(self._record, list(refs), reason, mode_version)
        log.warning("journalled %d key(s) for %s%s: %s", len(refs), self.target,
                    f" ({marked} as range marks)" if marked else "", reason)

    async def record_late(self, refs: Sequence[EntityRef], reason: str) -> None:
        """Journal ``refs`` whatever the mode: for an unacknowledged write (module docstring)."""
        await run_blocking(self._record, list(refs), reason, None)
        log.warning("journalled %d key(s) for %s after a mode change (not acknowledged): %s", len(refs),
                    self.target, reason)

    def hold(self, refs: Sequence[EntityRef], reason: str, error: BaseException) -> None:
        """Keep ``refs`` until ZooKeeper takes their entry (``flush_held``); counted and logged.

        Bounded like the journal: past ``bound`` held keys, a new key is held as its range
        mark (app, bucket) instead, recorded as such by ``flush_held``.
        """
        RECORD_FAILURES.labels(self.plan, self.target).inc()
        marked = 0
        for ref in refs:
            if ref in self.held or len(self.held) < self.bound:
                self.held[ref] = reason
            else:
                self.held_marks[(ref.app, bucket_of(ref.row_key, MARK_BUCKETS))] = reason
                marked += 1
        if marked:
            KEYS_MARKED.labels(self.plan, self.target).inc(marked)
        JOURNAL_HELD.labels(self.plan, self.target).set(len(self.held) + len(self.held_marks))
        log.error("could not journal %d key(s) for %s (%s: %s); holding them until ZooKeeper answers%s", len(refs),
                  self.target, type(error).__name__, error,
                  f" ({marked} as range marks: {self.bound} keys are held already)" if marked else "")

    async def flush_held(self) -> int:
        """Record every held key and range mark (unchecked: their writes were answered 503);
        returns how many.

        Raises if ZooKeeper still does not take them; what was not recorded stays held.
        """
        flushed = 0
        for held, is_mark in ((self.held, False), (self.held_marks, True)):
            by_reason: dict[str, list] = {}
            for item, reason in held.items():
                by_reason.setdefault(reason, []).append(item)
            for reason, items in by_reason.items():
                for start in range(0, len(items), TRANSACTION_OPS):
                    chunk = items[start:start + TRANSACTION_OPS]
                    if is_mark:
                        await run_blocking(self._record, [], reason, None, chunk)
                    else:
                        await run_blocking(self._record, chunk, reason, None)
                    for item in chunk:  # unless held again, with a new reason, meanwhile
                        if held.get(item) == reason:
                            del held[item]
                    flushed += len(chunk)
        JOURNAL_HELD.labels(self.plan, self.target).set(len(self.held) + len(self.held_marks))
        return flushed

    # --- depth ----------------------------------------------------------------------------

    def _depth(self) -> int:
        stat = bounded_retry(DEADLINE_S)(self.zk.exists, self.path)
        depth = stat.numChildren if stat is not None else 0
        JOURNAL_DEPTH.labels(self.plan, self.target).set(depth)
        return depth

    async def depth(self) -> int:
        """Entries and range marks waiting (0: the target has received everything journalled)."""
        return await run_blocking(self._depth)

    # --- replay ---------------------------------------------------------------------------

    def _read_children(self, names: list[str], end: float) -> list[tuple[str, bytes, int]]:
        """(name, data, version) of each child still there, read in one pipelined round."""
        pending = [(name, self.zk.get_async(f"{self.path}/{name}")) for name in names]
        out = []
        for name, result in pending:
            try:
                data, stat = answer(self.zk, result, end, "a journal read")
            except NoNodeError:
                continue  # another instance replayed it
            out.append((name, data, stat.version))
        return out

    def _entries(self, limit: int) -> list[tuple[str, int, EntityRef]]:
        # Any child but a mark is a key entry, whatever its name (older proxies named them
        # with a sequence suffix; they replay the same way).
        end = time.monotonic() + DEADLINE_S
        names = [n for n in bounded_retry(DEADLINE_S)(self.zk.get_children, self.path)
                 if not n.startswith(MARK_PREFIX)][:limit]
        out = []
        for name, data, version in _within(end, self._read_children, names):
            entry = json.loads(data)
            out.append((name, version, EntityRef(entry["app"], entry["kind"], base64.b64decode(entry["key"]))))
        return out

    def _marks(self) -> list[RangeMark]:
        end = time.monotonic() + DEADLINE_S
        names = [n for n in bounded_retry(DEADLINE_S)(self.zk.get_children, self.path) if n.startswith(MARK_PREFIX)]
        out = []
        for name, data, version in _within(end, self._read_children, names):
            mark = json.loads(data)
            out.append(RangeMark(name, mark["app"], int(mark["bucket"]), int(mark["buckets"]), version))
        return out

    def _remove(self, settled: list[tuple[str, int]]) -> int:
        """Delete each (name, version) still at that version; returns how many went."""
        end = time.monotonic() + DEADLINE_S
        pending = [self.zk.delete_async(f"{self.path}/{name}", version=version) for name, version in settled]
        removed = 0
        for result in pending:
            try:
                answer(self.zk, result, end, "a journal delete")
                removed += 1
            except NoNodeError:
                removed += 1  # another instance settled it
            except BadVersionError:
                pass  # recorded again since it was read: the next pass replays it
        return removed

    async def replay(self, source: Engine, target: Engine, limit: int = 500) -> int:
        """Copy each journalled key's current state from ``source`` to ``target``.

        Returns how many entries were settled; a failure of either side raises before any
        entry is removed (they stay) and propagates to the caller's backoff.
        """
        entries = await run_blocking(self._entries, limit)
        if not entries:
            return 0
        slots = asyncio.Semaphore(READ_CONCURRENCY)

        async def current(ref: EntityRef) -> Entity | None:
            async with slots:
                return await source.read(ref)

        found = await asyncio.gather(*(current(ref) for _, _, ref in entries))
        await target.apply([entity for entity in found if entity is not None])
        return await run_blocking(self._remove, [(name, version) for name, version, _ in entries])

    async def repair_marks(self, source: Engine, target: Engine) -> int:
        """Resolve every range mark: a range verify + repair of its app's dirty buckets from
        ``source`` to ``target``. Returns how many marks were removed; raises (marks stay)
        if either side fails."""
        marks = await run_blocking(self._marks)
        groups: dict[tuple[str, int], list[RangeMark]] = {}
        for mark in marks:
            groups.setdefault((mark.app, mark.buckets), []).append(mark)
        resolved = 0
        for (app, buckets), group in sorted(groups.items()):
            report = await repair_buckets(source, target, app, frozenset(m.bucket for m in group), buckets)
            removed = await run_blocking(self._remove, [(m.name, m.version) for m in group])
            resolved += removed
            RANGE_REPAIRS.labels(self.plan, self.target).inc(removed)
            RANGE_REPAIRED_KEYS.labels(self.plan, self.target).inc(report.copied)
            log.warning("range repair toward %s: app %s, %d of %d bucket(s) marked dirty; %d key(s) examined on the "
                        "source, %d copied (newer than the target's copy); %d mark(s) resolved, %d marked again "
                        "meanwhile and kept", self.target, app, len(group), buckets, report.examined, report.copied,
                        removed, len(group) - removed)
        return resolved


class JournalReplayer:
    """Background task: replay the journal (entries, then range marks) until stopped,
    backing off while the target is down."""

    def __init__(self, journal: RepairJournal, source: Engine, target: Engine, interval: float = 0.5) -> None:
        self.journal = journal
        self.source = source
        self.target = target
        self.interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"journal-replay-{self.journal.plan}-{self.journal.target}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self.journal.flush_held()
                settled = await self.journal.replay(self.source, self.target)
                if not settled:
                    settled = await self.journal.repair_marks(self.source, self.target)
                await self.journal.depth()
                backoff = self.interval
                if settled:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the target is still down: keep the entries, back off
                log.info("journal replay to %s paused: %s", self.journal.target, exc)
                backoff = min(backoff * 2, 5.0)
            await asyncio.sleep(backoff)
