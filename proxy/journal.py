"""The repair journal: keys whose write reached one side but not the other.

Entries live in N1's ZooKeeper as sequential znodes under ``/nxnw/journal/<target>``,
one per key, so that they survive a crash of the proxy that wrote them, every proxy
instance sees one journal, and the orchestrator can wait for it to be empty before the
mode changes (DESIGN invariant 2). An entry names a key, never a value: replay reads the
key's current state on the source side (tombstone included) and applies it to the target
last-write-wins, so a replay can never undo a newer write, and replaying twice is harmless.

Recording is fenced by the mode (DESIGN invariants 2 and 3). ``record`` is one ZooKeeper
transaction: a *check* of the mode znode's version the request was admitted under, plus
the creates. Once the mode changed, a record from a request of the old mode fails with
``ModeChanged`` — so after ``switch_mode`` saw every instance acknowledge the new mode and
then found the journal empty, no checked entry can appear any more. The caller (the
dual-write route) then records the keys *unchecked* (``record_late``) and answers the
client 503: the write is not acknowledged. That late entry is safe: replay reads the key's
current state on the source side and applies it last-write-wins, so it can only carry a
write that exists on the source to the target (as if that unacknowledged write had landed
late); it never undoes a newer one.

Error handling: when ZooKeeper does not take an entry (no session, timeout), the keys are
*held* in memory (``held``) and ``JournalReplayer`` records them as soon as ZooKeeper
answers again; the request is answered 503 with the reason and counted
(``nxnw_journal_record_failures_total``), so N1 is never ahead silently. An instance
acknowledges a mode only after ``flush_held`` emptied what it holds, so a held key cannot
hide from the switch's journal check. A held key is lost only if the process dies before
ZooKeeper answers again; the two sides then differ on that unacknowledged key and
verify (which gates ``proxy``) finds and repairs it. A lost reply to a transaction that
had committed makes the retry journal the keys twice: replaying a key twice is harmless.
Replay keeps an entry until the target has taken the write; a target that is still down
leaves it for the next pass. Every ZooKeeper call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Sequence

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError, RolledBackError
from kazoo.retry import KazooRetry
from prometheus_client import Counter, Gauge

from datastore import Engine, EntityRef
from sync.aio import run_blocking
from sync.mode import MODE_PATH

log = logging.getLogger("nxnw.proxy.journal")

JOURNAL_ROOT = "/nxnw/journal"
JOURNAL_DEPTH = Gauge("nxnw_repair_journal_depth", "Keys waiting in the repair journal", ["target"])
RECORD_FAILURES = Counter("nxnw_journal_record_failures_total",
                          "Journal records ZooKeeper did not take (keys held in memory until it does)", ["target"])
JOURNAL_HELD = Gauge("nxnw_journal_held_keys", "Keys held in memory until ZooKeeper takes their journal entry",
                     ["target"])


class ModeChanged(RuntimeError):
    """The mode znode is no longer at the version the request was admitted under."""


def _retry() -> KazooRetry:
    return KazooRetry(max_tries=5, delay=0.05, max_delay=1.0, deadline=10.0, ignore_expire=False)


class RepairJournal:
    """A durable list of keys that ``target`` ("n1" or "n2") still has to receive."""

    def __init__(self, zk: KazooClient, target: str) -> None:
        if target not in ("n1", "n2"):
            raise ValueError(f"journal target {target!r} must be 'n1' or 'n2'")
        self.zk = zk
        self.target = target
        self.path = f"{JOURNAL_ROOT}/{target}"
        #: keys whose entry ZooKeeper did not take yet (see the module docstring)
        self.held: dict[EntityRef, str] = {}
        self.zk.ensure_path(self.path)

    def _entry(self, ref: EntityRef, reason: str) -> bytes:
        return json.dumps({"app": ref.app, "kind": ref.kind, "key": base64.b64encode(ref.key).decode(),
                           "reason": reason[:200]}).encode()

    def _record(self, refs: Sequence[EntityRef], reason: str, mode_version: int | None) -> None:
        def commit() -> None:
            transaction = self.zk.transaction()
            if mode_version is not None:
                transaction.check(MODE_PATH, mode_version)
            for ref in refs:
                transaction.create(f"{self.path}/e-", self._entry(ref, reason), sequence=True)
            results = transaction.commit()
            failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
            if failed and isinstance(failed[0], (BadVersionError, NoNodeError)) and mode_version is not None:
                raise ModeChanged(f"the mode changed since this request was admitted (mode znode version "
                                  f"{mode_version}); its journal entry toward {self.target} was refused")
            if failed:
                raise failed[0]

        _retry()(commit)

    async def record(self, refs: Sequence[EntityRef], reason: str, *, mode_version: int) -> None:
        """Journal ``refs`` if the mode is still at ``mode_version`` (ModeChanged if not).

        Raises whatever ZooKeeper raised if it did not take the entry; call ``hold`` then.
        """
        await run_blocking(self._record, list(refs), reason, mode_version)
        log.warning("journalled %d key(s) for %s: %s", len(refs), self.target, reason)

    async def record_late(self, refs: Sequence[EntityRef], reason: str) -> None:
        """Journal ``refs`` whatever the mode: for an unacknowledged write (module docstring)."""
        await run_blocking(self._record, list(refs), reason, None)
        log.warning("journalled %d key(s) for %s after a mode change (not acknowledged): %s", len(refs),
                    self.target, reason)

    def hold(self, refs: Sequence[EntityRef], reason: str, error: BaseException) -> None:
        """Keep ``refs`` until ZooKeeper takes their entry (``flush_held``); counted and logged."""
        RECORD_FAILURES.labels(self.target).inc()
        for ref in refs:
            self.held[ref] = reason
        JOURNAL_HELD.labels(self.target).set(len(self.held))
        log.error("could not journal %d key(s) for %s (%s: %s); holding them until ZooKeeper answers", len(refs),
                  self.target, type(error).__name__, error)

    async def flush_held(self) -> int:
        """Record every held key (unchecked: their writes were answered 503); returns how many.

        Raises if ZooKeeper still does not take them; the keys stay held.
        """
        held = dict(self.held)
        for ref, reason in held.items():
            await run_blocking(self._record, [ref], reason, None)
            if self.held.get(ref) == reason:
                del self.held[ref]
        JOURNAL_HELD.labels(self.target).set(len(self.held))
        return len(held)

    def _depth(self) -> int:
        depth = len(_retry()(self.zk.get_children, self.path))
        JOURNAL_DEPTH.labels(self.target).set(depth)
        return depth

    async def depth(self) -> int:
        return await run_blocking(self._depth)

    def _entries(self, limit: int) -> list[tuple[str, EntityRef]]:
        names = sorted(_retry()(self.zk.get_children, self.path))[:limit]
        out = []
        for name in names:
            try:
                data, _ = self.zk.get(f"{self.path}/{name}")
            except NoNodeError:
                continue  # another instance replayed it
            entry = json.loads(data)
            out.append((name, EntityRef(entry["app"], entry["kind"], base64.b64decode(entry["key"]))))
        return out

    def _remove(self, name: str) -> None:
        try:
            _retry()(self.zk.delete, f"{self.path}/{name}")
        except NoNodeError:
            pass

    async def replay(self, source: Engine, target: Engine, limit: int = 500) -> int:
        """Copy each journalled key's current state from ``source`` to ``target``.

        Returns how many entries were settled; stops at the first failure of the target
        (its entry stays) and lets the exception propagate to the caller's backoff.
        """
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, self._entries, limit)
        settled = 0
        for name, ref in entries:
            entity = await source.read(ref)
            if entity is not None:
                await target.apply([entity])
            await loop.run_in_executor(None, self._remove, name)
            settled += 1
        return settled


class JournalReplayer:
    """Background task: replay the journal until stopped, backing off while the target is down."""

    def __init__(self, journal: RepairJournal, source: Engine, target: Engine, interval: float = 0.5) -> None:
        self.journal = journal
        self.source = source
        self.target = target
        self.interval = interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"journal-replay-{self.journal.target}")

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
