"""The repair journal: keys whose write reached one side but not the other.

Entries live in N1's ZooKeeper as sequential znodes under ``/nxnw/journal/<target>``,
one per key, so that they survive a crash of the proxy that wrote them, every proxy
instance sees one journal, and the orchestrator can wait for it to be empty before the
mode changes (DESIGN invariant 2). An entry names a key, never a value: replay reads the
key's current state on the source side (tombstone included) and applies it to the target
last-write-wins, so a replay can never undo a newer write, and replaying twice is harmless.

Error handling: ``record`` raises when ZooKeeper does not take the entry; the caller must
then fail the client's request, since the write could otherwise be lost. A lost session
therefore stops writes (the proxy is fenced anyway). Replay keeps an entry until the
target has taken the write; a target that is still down leaves it for the next pass.
Every ZooKeeper call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Sequence

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.retry import KazooRetry
from prometheus_client import Gauge

from datastore import Engine, EntityRef

log = logging.getLogger("nxnw.proxy.journal")

JOURNAL_ROOT = "/nxnw/journal"
JOURNAL_DEPTH = Gauge("nxnw_repair_journal_depth", "Keys waiting in the repair journal", ["target"])


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
        self.zk.ensure_path(self.path)

    def _record(self, refs: Sequence[EntityRef], reason: str) -> None:
        for ref in refs:
            data = json.dumps({"app": ref.app, "kind": ref.kind, "key": base64.b64encode(ref.key).decode(),
                               "reason": reason[:200]}).encode()
            _retry()(self.zk.create, f"{self.path}/e-", data, sequence=True)

    async def record(self, refs: Sequence[EntityRef], reason: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._record, list(refs), reason)
        log.warning("journalled %d key(s) for %s: %s", len(refs), self.target, reason)

    def _depth(self) -> int:
        depth = len(_retry()(self.zk.get_children, self.path))
        JOURNAL_DEPTH.labels(self.target).set(depth)
        return depth

    async def depth(self) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self._depth)

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
