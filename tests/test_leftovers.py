"""``nxnw verify`` finds what a migration left behind: orphan lock copies, journal entries, old tombstones.

No proxy runs here: a proxy's journal replayer would settle the journal entry the test
leaves for verify to find.
"""

from __future__ import annotations

import asyncio
import time

from kazoo.client import KazooClient

from datastore import Entity
from sync.mirror import TreeMirror
from sync import layout
from sync.state import MigrationStateStore
from tests.conftest import run_nxnw
from tests.test_orchestrator_gates import Setting, private_memcached, setting  # noqa: F401 (fixtures)


async def test_verify_lists_orphan_locks_journal_entries_and_old_tombstones(setting: Setting) -> None:
    s = setting
    plan, root = s.plan, f"/apps/{s.app}"
    holder = KazooClient(hosts=plan.n1.zookeeper, timeout=5)
    holder.start(10)
    lock = holder.create(f"{root}/g1/x__lock__", b"held", ephemeral=True, sequence=True, makepath=True)
    mirror = TreeMirror(plan.n1.zookeeper, plan.n2.zookeeper, root)
    mirror.start()
    mirror.wait_synced(30)
    mirror.stop()
    holder.stop()  # its lock goes; the stopped mirror leaves N2's copy behind
    holder.close()
    s.zk1.create(f"{layout.journal(plan.name, 'n2')}/e-", b'{"app": "a", "kind": "K", "key": "YQ=="}', sequence=True, makepath=True)
    store = MigrationStateStore(s.zk1, path=layout.state(plan.name))
    state = store.create("prepare")
    store.update(state.version, phase="complete")
    await s.n1.apply([Entity(s.app, "K", b"old", None, 1000), Entity(s.app, "K", b"new", None, time.time_ns() // 1000)])
    await s.n2.apply([Entity(s.app, "K", b"old", None, 1000), Entity(s.app, "K", b"new", None, time.time_ns() // 1000)])

    def verify(*extra: str) -> str:
        return run_nxnw("verify", str(s.plan_path), *extra).stdout

    out = await asyncio.to_thread(verify)
    assert f"lock znode with no holder on N2: {lock}" in out
    assert "repair journal toward n2: 1 key(s) waiting" in out
    assert f"app {s.app}: 1 tombstone(s) older than the migration can be dropped" in out
    out = await asyncio.to_thread(verify, "--repair")
    assert f"removed lock znode with no holder on N2: {lock}" in out
    assert "no holder" not in await asyncio.to_thread(verify)
