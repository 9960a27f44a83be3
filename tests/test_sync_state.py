"""Migration-state znode and checkpoint store against the real N1 ZooKeeper."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from kazoo.client import KazooClient, TransactionRequest

from nxnw.partition import Partition
from sync.aio import run_blocking
from sync.state import CorruptDocument, MigrationStateStore, PlanRegistry, StateConflict, TaskRecordStore
from tests.conftest import require
from tests.proxy_harness import zk_chroot
from tests.zk_harness import client_behind_partition, gives_up, until_dropped


def test_phases_advance_by_compare_and_set_only(zk_connect, zk_root):
    a = MigrationStateStore(zk_connect("n1"), path=f"{zk_root}/state")
    b = MigrationStateStore(zk_connect("n1"), path=f"{zk_root}/state")
    assert a.get() is None
    first = a.create("prepare", {"plan": "cassandra->hbase"})
    with pytest.raises(StateConflict, match="expected it to be absent"):
        b.create()

    moved = b.update(first.version, phase="sync-zk", data={"root": "/nxnw"})
    with pytest.raises(StateConflict, match=r"is at version 1 \(phase 'sync-zk'\), not 0"):
        a.update(first.version, phase="cow")

    now = a.get()
    assert now == moved
    assert (now.phase, now.data, now.phases["prepare"]) == ("sync-zk", {"root": "/nxnw"}, {"plan": "cassandra->hbase"})
    assert now.started_at == first.started_at <= now.phase_started_at
    progress = a.update(now.version, data={"root": "/nxnw", "synced": True})
    assert progress.phase_started_at == now.phase_started_at and progress.version == 2


def test_unknown_phase_and_corrupt_state_are_refused(zk_connect, zk_root):
    client = zk_connect("n1")
    store = MigrationStateStore(client, path=f"{zk_root}/state")
    with pytest.raises(ValueError, match="'copy'.*prepare, sync-zk, cow"):
        store.create("copy")
    client.create(f"{zk_root}/state", b"[1, 2]", makepath=True)
    with pytest.raises(CorruptDocument, match=f"{zk_root}/state does not hold a JSON object"):
        store.get()


def test_checkpoints_put_get_list_clear(zk_connect, zk_root):
    store = TaskRecordStore(zk_connect("n1"), root=f"{zk_root}/checkpoints")
    ranges = {"(-9223372036854775808, 0]": {"rows": 10}, "row/a:b": {"rows": 3}, ".": {"rows": 1}}
    for range_id, value in ranges.items():
        store.put("load-users", range_id, value)
    store.put("load-users", "row/a:b", {"rows": 4})  # overwrite

    assert store.get("load-users", "row/a:b") == {"rows": 4}
    assert store.get("load-users", "missing") is None
    assert store.list("load-users") == {**ranges, "row/a:b": {"rows": 4}}
    store.clear("load-users", "row/a:b")
    assert set(store.list("load-users")) == {"(-9223372036854775808, 0]", "."}
    store.clear("load-users")
    assert store.list("load-users") == {}
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.put("load-users", "r", {"x": object()})


class _ReplyLostAtCommit(KazooClient):
    """A client whose next transaction, once ``armed``, goes into a cut partition: ``cut``
    (set by the test) returns once the relay holds everything, before the commit is sent,
    so ZooKeeper's answer (if it ever commits it) cannot come back on that connection."""

    cut: Callable[[], None]
    armed = False

    def transaction(self) -> TransactionRequest:
        request = super().transaction()
        if self.armed:
            self.armed = False
            send = request.commit_async

            def commit_async():
                self.cut()
                return send()

            request.commit_async = commit_async  # type: ignore[method-assign]
        return request


async def test_a_plan_release_whose_commit_went_unanswered_is_retried_and_completes() -> None:
    """The connection goes dark with a plan's release committing (the orchestrator's last
    step of ``complete``, and of a rollback). The retry committed the same TransactionRequest
    again, which kazoo refuses ("Transaction already committed": a ValueError out of the
    release, the apps' claims left held), and that retry could wait as long as the partition
    lasted. Each attempt is a fresh transaction answered within the deadline now; the
    release completes once ZooKeeper is back, whether the first attempt committed or not."""
    require("zookeeper-n1")
    loop = asyncio.get_running_loop()

    with zk_chroot() as (zk_hosts, zk):
        async with client_behind_partition(zk_hosts[zk_hosts.index("/"):],
                                           client_class=_ReplyLostAtCommit) as (client, relay):
            # from the release's thread: returns once the relay's loop has cut
            client.cut = lambda: asyncio.run_coroutine_threadsafe(_cut(relay), loop).result(5)
            registry = PlanRegistry(client, deadline=30)
            await run_blocking(registry.register, "lost", ["w_lost"], {"w_lost": "lost:"})
            client.armed = True
            heal = loop.call_later(6, relay.heal)
            started = time.monotonic()
            await asyncio.wait_for(run_blocking(registry.release, "lost"), 40)
            assert time.monotonic() - started >= 5, "the release did not wait for ZooKeeper to come back"
            heal.cancel()
        seen = PlanRegistry(zk)
        assert not seen.get("lost").live
        assert seen.holder("w_lost") is None, "the app's claim is still held"


async def _cut(relay: Partition) -> None:
    relay.cut()


async def test_a_checkpoint_written_or_listed_while_kazoo_reconnects_gives_up_at_its_deadline() -> None:
    """A range's checkpoint (the loader's, a Dask worker's) and the list a resumed load reads
    were kazoo's blocking calls inside the bounded retry: one made while kazoo reconnected
    to a ZooKeeper out of reach waited for as long as that lasted, and the load with it.
    Each call is answered within the store's deadline now."""
    require("zookeeper-n1")
    with zk_chroot() as (zk_hosts, _):
        async with client_behind_partition(zk_hosts[zk_hosts.index("/"):]) as (client, relay):
            store = TaskRecordStore(client, root="/checkpoints", deadline=3)
            await run_blocking(store.put, "load", "r1", {"done": False})
            relay.cut()
            await until_dropped(client)
            await gives_up(lambda: run_blocking(store.put, "load", "r1", {"done": True}), within=10)
            await gives_up(lambda: run_blocking(store.list, "load"), within=10)
