"""Migration-state znode and checkpoint store against the real N1 ZooKeeper."""

from __future__ import annotations

import pytest

from sync.state import TaskRecordStore, CorruptDocument, MigrationStateStore, StateConflict


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
