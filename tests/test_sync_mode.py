"""The mode znode against the real N1 ZooKeeper: CAS writes, watchers on several clients, fencing."""

from __future__ import annotations

import pytest

from sync.aio import run_blocking
from sync.mode import MODES, ModeConflict, ModeWatcher, ensure_mode, read_mode, set_mode
from tests.zk_harness import client_behind_partition, gives_up, until_dropped


@pytest.fixture
def mode_path(zk_root: str) -> str:
    return f"{zk_root}/mode"


@pytest.fixture
def watchers():
    made = []

    def watch(client, path: str) -> ModeWatcher:
        watcher = ModeWatcher(client, path=path)
        made.append(watcher)
        return watcher

    yield watch
    for watcher in made:
        watcher.close()


def test_unknown_mode_is_refused_naming_the_allowed_ones(zk_connect, mode_path):
    client = zk_connect("n1")
    with pytest.raises(ValueError, match="'copy-on-write'.*passthrough, cow, proxy"):
        set_mode(client, "copy-on-write", None, path=mode_path)
    assert client.exists(mode_path) is None
    assert MODES == ("passthrough", "cow", "proxy")


def test_every_watcher_on_every_client_sees_each_change(zk_connect, mode_path, watchers):
    writer = zk_connect("n1")
    state = ensure_mode(writer, path=mode_path)
    assert (state.mode, state.epoch, state.version) == ("passthrough", 0, 0)
    fleet = [watchers(zk_connect("n1"), mode_path) for _ in range(3)]
    for watcher in fleet:
        assert watcher.wait_for("passthrough", 5).epoch == 0

    state = set_mode(writer, "cow", state.version, path=mode_path)
    for watcher in fleet:
        assert watcher.wait_for("cow", 5) == state
    state = set_mode(writer, "proxy", state.version, path=mode_path)
    for watcher in fleet:
        assert watcher.wait_for("proxy", 5).epoch == 2


def test_set_mode_with_a_stale_version_fails_and_changes_nothing(zk_connect, mode_path):
    a, b = zk_connect("n1"), zk_connect("n1")
    seen_by_a = ensure_mode(a, path=mode_path)
    seen_by_b = read_mode(b, path=mode_path)
    set_mode(b, "cow", seen_by_b.version, path=mode_path)

    with pytest.raises(ModeConflict, match="is at version 1 .*'cow'.*expected it at version 0"):
        set_mode(a, "proxy", seen_by_a.version, path=mode_path)
    with pytest.raises(ModeConflict, match="expected it to be absent"):
        set_mode(a, "proxy", None, path=mode_path)
    assert read_mode(a, path=mode_path).mode == "cow"


def test_watcher_reports_none_while_its_session_is_lost_then_rereads(zk_connect, mode_path, watchers,
                                                                     expire_zk_session):
    writer, proxy_client = zk_connect("n1"), zk_connect("n1")
    state = ensure_mode(writer, path=mode_path)
    watcher = watchers(proxy_client, mode_path)
    watcher.wait_for("passthrough", 5)
    seen = []
    watcher.add_callback(seen.append)
    during = []

    def while_watcher_has_no_session():
        during.append(watcher.current)
        set_mode(writer, "cow", state.version, path=mode_path)  # no watch of the watcher can see this

    expire_zk_session(proxy_client, "n1", during_loss=while_watcher_has_no_session)

    assert during == [None]  # fenced: the proxy refuses writes
    assert watcher.wait_for("cow", 5).epoch == 1
    assert None in seen and seen[-1].mode == "cow"
    set_mode(writer, "proxy", 1, path=mode_path)  # and its watch is armed again
    watcher.wait_for("proxy", 5)


def test_garbage_in_the_mode_znode_fences_instead_of_guessing(zk_connect, mode_path, watchers):
    client = zk_connect("n1")
    ensure_mode(client, path=mode_path)
    watcher = watchers(client, mode_path)
    watcher.wait_for("passthrough", 5)

    client.set(mode_path, b'{"mode": "turbo", "epoch": 1}')
    watcher.wait_until(lambda s: s is None, 5)
    client.set(mode_path, b"not json at all")
    set_mode(client, "cow", 2, path=mode_path)
    assert watcher.wait_for("cow", 5).version == 3


def test_transition_table_allows_only_the_four_changes_and_names_the_reason() -> None:
    from sync.mode import ModeState, TransitionRefused, transition

    def at(mode: str, epoch: int = 4) -> ModeState:
        return ModeState(mode, epoch, epoch, 0.0)

    assert transition(at("passthrough"), "cow", None).journal_empty is None
    assert transition(at("cow"), "proxy", 4).journal_empty == "n2"
    assert transition(at("proxy"), "passthrough", None).journal_empty == "n1"
    assert transition(at("cow"), "passthrough", None).journal_empty == "n1"
    assert transition(at("proxy"), "proxy", None).purpose == "re-acknowledge"
    for source, target in (("passthrough", "proxy"), ("proxy", "cow")):
        with pytest.raises(TransitionRefused, match=f"{source} \\(epoch 4\\) cannot change to {target}"):
            transition(at(source), target, 4)
    with pytest.raises(TransitionRefused, match="no verification is recorded"):
        transition(at("cow"), "proxy", None)
    with pytest.raises(TransitionRefused, match="verification is of cow epoch 2"):
        transition(at("cow"), "proxy", 2)


def test_load_verification_is_recorded_next_to_the_mode_znode(zk_connect, mode_path):
    from sync.mode import load_verified_epoch, mark_load_verified

    client = zk_connect("n1")
    assert load_verified_epoch(client, path=mode_path) is None
    mark_load_verified(client, 3, path=mode_path)
    assert load_verified_epoch(client, path=mode_path) == 3
    mark_load_verified(client, 5, path=mode_path)
    assert load_verified_epoch(client, path=mode_path) == 5
    with pytest.raises(ValueError, match="cow_epoch"):
        mark_load_verified(client, -1, path=mode_path)


async def test_a_mode_read_while_zookeeper_is_out_of_reach_gives_up_at_its_deadline(mode_path) -> None:
    """The orchestrator reads and writes the mode through ``bounded_retry``, whose deadline
    bounded only the gaps between attempts: kazoo queues a call made while it reconnects
    until it is connected again, so with ZooKeeper out of reach (the connection dark, not
    closed) a read waited for as long as that lasted. It gives up at its deadline now."""
    async with client_behind_partition() as (client, relay):
        await run_blocking(set_mode, client, "passthrough", None, path=mode_path)
        relay.cut()
        await gives_up(lambda: run_blocking(read_mode, client, path=mode_path, deadline=3), within=10)


async def test_a_verified_load_recorded_while_kazoo_reconnects_gives_up_at_its_deadline(mode_path) -> None:
    """``mark_load_verified`` (the orchestrator's verify step) writes through ``put``, whose
    set and create ran as kazoo's blocking calls inside the bounded retry: one made while
    kazoo reconnected to a ZooKeeper out of reach waited for as long as that lasted. Each of
    them is answered within the retry's deadline now."""
    from sync.mode import mark_load_verified

    async with client_behind_partition() as (client, relay):
        await run_blocking(set_mode, client, "cow", None, path=mode_path)
        relay.cut()
        await until_dropped(client)
        await gives_up(lambda: run_blocking(mark_load_verified, client, 0, path=mode_path, deadline=3), within=10)
