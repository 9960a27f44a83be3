"""What a migration can leave behind, found by ``nxnw verify`` beside the data comparison.

* **Lock znodes with no holder**: N2 copies of N1 ephemeral nodes (lock contenders) whose
  original is gone from N1 — left when mirroring stopped before the mirror could delete
  them. They would block N2's lock of that entity group forever. ``--repair`` removes them.
* **Repair-journal entries**: keys still waiting to reach N1 or N2; the mode cannot move
  on while they wait, and they mean a side is or was unreachable.
* **Old tombstones**: deletes older than the migration's start that both sides hold. They
  keep deleted keys from coming back while snapshots and repairs run; once the migration
  is complete they can be dropped. They are counted, never dropped here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kazoo.client import KazooClient

from datastore import Engine
from nxnw.config import Plan
from nxnw.zk import zk_session
from proxy.control import journal_depth
from sync import layout
from sync.aio import run_blocking
from sync.mirror import ephemeral_copies, purge_ephemeral_copies
from sync.state import MigrationStateStore


@dataclass
class Leftovers:
    orphan_locks: list[str] = field(default_factory=list)
    journal: dict[str, int] = field(default_factory=dict)
    old_tombstones: dict[str, int] = field(default_factory=dict)
    removed_locks: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"lock znode with no holder on N2: {path}" for path in self.orphan_locks]
        out += [f"removed lock znode with no holder on N2: {path}" for path in self.removed_locks]
        out += [f"repair journal toward {side}: {depth} key(s) waiting" for side, depth in self.journal.items() if depth]
        out += [f"app {app}: {count} tombstone(s) older than the migration can be dropped"
                for app, count in self.old_tombstones.items() if count]
        return out or ["no leftovers"]


def _orphans(n1: KazooClient, n2: KazooClient, roots: list[str]) -> list[str]:
    return [path for root in roots for path in ephemeral_copies(n2, root) if n1.exists(path) is None]


async def find_leftovers(plan: Plan, n2_engine: Engine, *, repair: bool = False) -> Leftovers:
    found = Leftovers()
    async with zk_session(plan.n1.zookeeper, "N1's", plan.n1.zookeeper_security) as n1, \
            zk_session(plan.n2.zookeeper, "N2's", plan.n2.zookeeper_security) as n2:
        found.orphan_locks = await run_blocking(_orphans, n1, n2, plan.sync_paths)
        state = await run_blocking(MigrationStateStore(n1, path=layout.state(plan.name)).get)
        mirroring = state is not None and state.phase not in ("complete", "rollback")
        if repair and found.orphan_locks and not mirroring:
            for root in plan.sync_paths:
                found.removed_locks += await run_blocking(purge_ephemeral_copies, n2, root)
            found.orphan_locks = []
        for side in ("n1", "n2"):
            found.journal[side] = await run_blocking(journal_depth, n1, plan.name, side)
        if state is not None:
            started_us = int(state.started_at * 1_000_000)
            for app in plan.apps:
                count = 0
                for key_range in await n2_engine.ranges(app):
                    async for page in n2_engine.scan(app, key_range, tombstones=True):
                        count += sum(1 for e in page if e.deleted and e.ts < started_us)
                found.old_tombstones[app] = count
    return found
