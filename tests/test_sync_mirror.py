"""TreeMirror against the real N1 and N2 ZooKeepers: copy, follow, sequence counters, ephemerals, expiry."""

from __future__ import annotations

import time

import pytest
from kazoo.security import make_acl, make_digest_acl
from prometheus_client import REGISTRY

from kazoo.client import KazooClient

from sync.mirror import MirrorError, TreeMirror, ephemeral_copies, next_sequence_suffix

AUTH = [("digest", "mirror:secret")]


def tree(client, root: str) -> dict[str, tuple[bytes, list]]:
    """Every node under ``root``: path -> (data, sorted ACL)."""
    out, stack = {}, [root]
    while stack:
        path = stack.pop()
        data, _ = client.get(path)
        acl, _ = client.get_acls(path)
        out[path] = (data, sorted(acl))
        stack.extend(f"{path}/{child}" for child in client.get_children(path))
    return out


def eventually(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def mirror_of(zk_hosts):
    """``mirror_of(root, **kw)`` -> a started TreeMirror N1 -> N2 (digest-authenticated); stopped after.

    ``src``/``dst`` in ``kw`` replace N1's/N2's connection string (e.g. with a client factory)."""
    started = []

    def make(root: str, **kwargs) -> TreeMirror:
        mirror = TreeMirror(kwargs.pop("src", zk_hosts["n1"]), kwargs.pop("dst", zk_hosts["n2"]), root,
                            **{"src_auth": AUTH, "dst_auth": AUTH, "op_deadline": 5.0, **kwargs})
        mirror.start()
        started.append(mirror)
        return mirror

    yield make
    for mirror in started:
        mirror.stop()


def seed(n1, root: str) -> None:
    n1.create(root, b"root", makepath=True)
    n1.create(f"{root}/a", b"alpha")
    n1.create(f"{root}/a/b/c", b"deep", makepath=True)
    n1.create(f"{root}/empty")
    n1.create(f"{root}/locked", b"only mirror may write",
              acl=[make_digest_acl("mirror", "secret", all=True), make_acl("world", "anyone", read=True)])
    n1.create(f"{root}/q")
    for _ in range(25):  # churn: N1's counter for /q moves past its children's count
        n1.create(f"{root}/q/tmp")
        n1.delete(f"{root}/q/tmp")
    for _ in range(3):
        n1.create(f"{root}/q/job-", b"job", sequence=True)


def test_initial_copy_keeps_data_acls_and_sequential_names(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)

    mirror = mirror_of(zk_root)
    mirror.wait_synced(10)

    assert tree(n2, zk_root) == tree(n1, zk_root)
    assert sorted(n2.get_children(f"{zk_root}/q")) == ["job-0000000025", "job-0000000026", "job-0000000027"]
    assert mirror.lag == 0.0


def test_n2_follows_creates_changes_and_deletes_on_n1(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)
    mirror = mirror_of(zk_root)
    mirror.wait_synced(10)

    n1.create(f"{zk_root}/new/x/y", b"made later", makepath=True)
    n1.set(f"{zk_root}/a", b"alpha v2")
    n1.delete(f"{zk_root}/a/b", recursive=True)
    n1.create(f"{zk_root}/q/job-", b"job", sequence=True)
    # Without relying on wait_synced: N2 follows within a bounded wait.
    eventually(lambda: _assert_equal(n2.exists(f"{zk_root}/new/x/y") and n2.get(f"{zk_root}/new/x/y")[0], b"made later"))
    eventually(lambda: _assert_equal(n2.exists(f"{zk_root}/a/b"), None))

    # An ACL change fires no watch: it travels with the node's next change.
    n1.set_acls(f"{zk_root}/empty", [make_digest_acl("mirror", "secret", all=True)])
    n1.set(f"{zk_root}/empty", b"now with data")
    mirror.wait_synced(10)
    assert tree(n2, zk_root) == tree(n1, zk_root)
    assert mirror.stats.full_syncs == 1  # everything after the initial copy came from watches


def _assert_equal(actual, expected):
    assert actual == expected


def test_n2_hands_out_sequence_numbers_above_every_copied_suffix(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)
    mirror = mirror_of(zk_root)
    mirror.wait_synced(10)
    q = f"{zk_root}/q"

    # N2's next suffix is at least N1's, above every copied one.
    assert next_sequence_suffix(n2.exists(q)) >= next_sequence_suffix(n1.exists(q)) == 28
    probe = n2.create(f"{q}/probe-", ephemeral=True, sequence=True)  # N2's own ephemerals are left alone
    assert int(probe[-10:]) > max(int(c[-10:]) for c in n1.get_children(q))
    n2.delete(probe)

    # Live: more churn on N1, then a sequential child; N2 keeps up.
    for _ in range(40):
        n1.create(f"{q}/tmp")
        n1.delete(f"{q}/tmp")
    latest = n1.create(f"{q}/job-", sequence=True)
    mirror.wait_synced(10)
    assert n2.exists(latest) is not None
    probe = n2.create(f"{q}/probe-", ephemeral=True, sequence=True)
    assert int(probe[-10:]) > int(latest[-10:])


@pytest.mark.parametrize("when", ["initial-copy", "live"])
def test_an_n2_contender_arriving_while_children_are_copied_gets_no_suffix_n1_issued(zk_hosts, zk_connect, zk_root,
                                                                                      mirror_of, when):
    n1 = zk_connect("n1", auth_data=AUTH)
    contender = zk_connect("n2", auth_data=AUTH)
    q = f"{zk_root}/q"
    n1.create(q, makepath=True)
    for _ in range(25):  # N1's counter for /q moves past its children's count
        n1.create(f"{q}/tmp")
        n1.delete(f"{q}/tmp")
    taken: list[str] = []
    issued_by_n1: list[int] = []  # N1's next suffix when the contender took its node
    armed = [when == "initial-copy"]

    class ContenderArrivesBeforeTheFirstCopy(KazooClient):
        """N2's client for the mirror: the moment the mirror creates the first of /q's
        children on N2, an N2 client takes a sequential lock node under /q."""

        def create_async(self, path, *args, **kwargs):
            if armed[0] and path.startswith(q + "/") and not path.endswith(".nxnw-seq-bump") and not taken:
                taken.append(contender.create(f"{q}/job-", b"n2 contender", ephemeral=True, sequence=True))
                issued_by_n1.append(next_sequence_suffix(n1.exists(q)))
            return super().create_async(path, *args, **kwargs)

    def add_jobs() -> None:
        tx = n1.transaction()  # one change, one watch event: the mirror sees the three together
        for _ in range(3):
            tx.create(f"{q}/job-", b"job", sequence=True)
        assert not [r for r in tx.commit() if isinstance(r, Exception)]

    if when == "initial-copy":
        add_jobs()  # N1 has issued suffixes 0..27; job-25..27 remain
    mirror = mirror_of(zk_root, dst=lambda: ContenderArrivesBeforeTheFirstCopy(hosts=zk_hosts["n2"], auth_data=AUTH))
    mirror.wait_synced(10)
    if when == "live":
        armed[0] = True
        add_jobs()  # copied by the mirror following N1's child watch
        mirror.wait_synced(10)

    assert taken, "the mirror never copied /q's children"
    assert int(taken[0][-10:]) >= issued_by_n1[0] == 28, f"N2 handed out {taken[0]}, a suffix N1 already issued"
    assert set(n1.get_children(q)) <= set(contender.get_children(q))


def test_finish_syncs_once_more_before_stopping_so_n2_equals_n1(zk_hosts, zk_connect, zk_root):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)
    mirror = TreeMirror(zk_hosts["n1"], zk_hosts["n2"], zk_root, src_auth=AUTH, dst_auth=AUTH, op_deadline=5.0)
    mirror.start()
    try:
        mirror.wait_synced(10)
        restricted = [make_digest_acl("mirror", "secret", all=True), make_acl("world", "anyone", read=True)]
        n1.set_acls(f"{zk_root}/a", restricted)  # fires no watch: only a full sync carries it
        n1.set(f"{zk_root}/a/b", b"changed last")
        mirror.finish(10)
    finally:
        mirror.stop()
    assert tree(n2, zk_root) == tree(n1, zk_root)
    n1.set(f"{zk_root}/a", b"after the mirror stopped")
    assert n2.get(f"{zk_root}/a")[0] == b"alpha"


def test_ephemeral_nodes_are_marked_persistent_copies_removed_when_they_vanish(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1"), zk_connect("n2")
    owner = zk_connect("n1")
    n1.create(f"{zk_root}/members", makepath=True)
    member = owner.create(f"{zk_root}/members/m-", b"10.0.0.7", ephemeral=True, sequence=True)
    mirror = mirror_of(zk_root, src_auth=None, dst_auth=None)
    mirror.wait_synced(10)

    data, stat = n2.get(member)
    assert data == b"10.0.0.7" and stat.ephemeralOwner == 0
    assert ephemeral_copies(n2, zk_root) == [member]
    native = n2.create(f"{zk_root}/members/native", ephemeral=True)  # an N2 client's own node

    owner.stop()  # the session ends: N1 deletes the ephemeral
    mirror.wait_synced(10)

    assert n2.exists(member) is None
    assert ephemeral_copies(n2, zk_root) == []
    assert n2.exists(native) is not None


def test_resync_after_n1_session_expiry_applies_changes_made_meanwhile(zk_connect, zk_root, mirror_of,
                                                                       expire_zk_session):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)
    mirror = mirror_of(zk_root)
    mirror.wait_synced(10)

    def while_mirror_has_no_n1_session():  # no watch can report these
        n1.create(f"{zk_root}/added", b"during expiry")
        n1.set(f"{zk_root}/a/b/c", b"changed during expiry")
        n1.delete(f"{zk_root}/empty")

    expire_zk_session(mirror.src_client, "n1", during_loss=while_mirror_has_no_n1_session)
    mirror.wait_synced(15)

    assert tree(n2, zk_root) == tree(n1, zk_root)
    assert mirror.stats.full_syncs >= 2
    n1.set(f"{zk_root}/a", b"after")  # and its watches are back
    mirror.wait_synced(10)
    assert n2.get(f"{zk_root}/a")[0] == b"after"


def test_resync_after_n2_session_expiry_repairs_n2_and_reports_lag(zk_connect, zk_root, mirror_of,
                                                                   expire_zk_session):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    seed(n1, zk_root)
    mirror = mirror_of(zk_root)
    mirror.wait_synced(10)
    lags = []

    def while_mirror_has_no_n2_session():
        n1.create(f"{zk_root}/added", b"during expiry")
        n1.set(f"{zk_root}/a", b"changed during expiry")
        n2.delete(f"{zk_root}/empty")            # N2 drifts: a node goes missing,
        n2.set(f"{zk_root}/a/b/c", b"garbage")   # one differs,
        n2.create(f"{zk_root}/extra")            # one is extra
        deadline = time.monotonic() + 5
        while mirror.lag < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        lags.append(REGISTRY.get_sample_value("nxnw_zk_mirror_lag_seconds", {"root": zk_root}))

    expire_zk_session(mirror.dst_client, "n2", during_loss=while_mirror_has_no_n2_session)
    mirror.wait_synced(15)

    assert lags[0] >= 0.3
    assert tree(n2, zk_root) == tree(n1, zk_root)
    assert REGISTRY.get_sample_value("nxnw_zk_mirror_lag_seconds", {"root": zk_root}) == 0.0


def test_root_deleted_and_recreated_on_n1_follows_on_n2(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1"), zk_connect("n2")
    n1.create(f"{zk_root}/x", b"1", makepath=True)
    mirror = mirror_of(zk_root, src_auth=None, dst_auth=None)
    mirror.wait_synced(10)

    n1.delete(zk_root, recursive=True)
    mirror.wait_synced(10)
    assert n2.exists(zk_root) is None

    n1.create(f"{zk_root}/y", b"2", makepath=True)
    mirror.wait_synced(10)
    assert n2.get(f"{zk_root}/y")[0] == b"2" and n2.exists(f"{zk_root}/x") is None


def test_node_the_mirror_cannot_read_is_reported_and_the_rest_is_copied(zk_connect, zk_root, mirror_of):
    n1 = zk_connect("n1", auth_data=[("digest", "someone:else")])
    n2 = zk_connect("n2")
    n1.create(f"{zk_root}/open", b"ok", makepath=True)
    n1.create(f"{zk_root}/private", b"no", acl=[make_digest_acl("someone", "else", all=True)])

    mirror = mirror_of(zk_root, src_auth=None, dst_auth=None)
    with pytest.raises(MirrorError, match=f"{zk_root}/private.*NoAuth"):
        mirror.wait_synced(10)
    assert n2.get(f"{zk_root}/open")[0] == b"ok"


def test_periodic_verifying_resync_carries_acl_only_changes_and_repairs_n2_drift(zk_connect, zk_root, mirror_of):
    n1, n2 = zk_connect("n1", auth_data=AUTH), zk_connect("n2", auth_data=AUTH)
    n1.create(f"{zk_root}/node", b"v1", makepath=True)
    mirror = mirror_of(zk_root, resync_interval=0.5)
    mirror.wait_synced(10)

    restricted = [make_digest_acl("mirror", "secret", all=True), make_acl("world", "anyone", read=True)]
    n1.set_acls(f"{zk_root}/node", restricted)  # fires no watch
    n2.set(f"{zk_root}/node", b"drifted")        # nor does anything on N2

    eventually(lambda: _assert_equal(n2.get(f"{zk_root}/node")[0], b"v1"), timeout=5)
    eventually(lambda: _assert_equal(sorted(n2.get_acls(f"{zk_root}/node")[0]), sorted(restricted)), timeout=5)
    assert mirror.stats.full_syncs >= 2
