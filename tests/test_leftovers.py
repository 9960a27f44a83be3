"""``nxnw verify`` finds what a migration left behind: orphan lock copies, journal entries, old tombstones."""

from __future__ import annotations

import subprocess
import sys
import time

from kazoo.client import KazooClient

from datastore import Entity, open_engine
from nxnw.demo import DemoEnvironment, DemoOptions
from sync.mirror import TreeMirror
from sync.state import MigrationStateStore


async def test_verify_lists_orphan_locks_journal_entries_and_old_tombstones(tmp_path) -> None:
    env = DemoEnvironment(DemoOptions(seed_entities=10, workdir=tmp_path))
    await env.setup()
    try:
        plan = env.plan
        n1 = KazooClient(hosts=plan.n1.zookeeper, timeout=5)
        n1.start(10)
        holder = KazooClient(hosts=plan.n1.zookeeper, timeout=5)
        holder.start(10)
        lock = holder.create("/nxnw/locks/app1/g1/x__lock__", b"held", ephemeral=True, sequence=True, makepath=True)
        mirror = TreeMirror(plan.n1.zookeeper, plan.n2.zookeeper, "/nxnw/locks")
        mirror.start()
        mirror.wait_synced(30)
        mirror.stop()
        holder.stop()  # its lock goes; the stopped mirror leaves N2's copy behind
        holder.close()
        n1.create("/nxnw/journal/n2/e-", b'{"app": "a", "kind": "K", "key": "YQ=="}', sequence=True, makepath=True)
        store = MigrationStateStore(n1)
        state = store.create("prepare")
        store.update(state.version, phase="complete")
        n2 = open_engine(plan.n2.engine)
        await n2.open()
        await n2.apply([Entity(env.app, "K", b"old", None, 1000), Entity(env.app, "K", b"new", None, time.time_ns())])
        await n2.close()
        n1.stop()
        n1.close()

        def verify(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "nxnw.cli", "verify", str(env.plan_path), *extra],
                                  capture_output=True, text=True, timeout=120)

        out = verify().stdout
        assert f"lock znode with no holder on N2: {lock}" in out
        assert "repair journal toward n2: 1 key(s) waiting" in out
        assert f"app {env.app}: 1 tombstone(s) older than the migration can be dropped" in out
        out = verify("--repair").stdout
        assert f"removed lock znode with no holder on N2: {lock}" in out
        assert "no holder" not in verify().stdout
    finally:
        await env.cleanup()
