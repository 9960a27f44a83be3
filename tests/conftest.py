"""Session fixtures: the real services, started by the project's own code.

A service that cannot be started fails the session with its name, port and log tail;
nothing is skipped because a server is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from datastore import Engine, open_engine
from nxnw import services
from nxnw.services.endpoints import engine_url

#: ``hbase-stock`` is the same HBase through the gateway's stock port, which answers as HBase's
#: own Thrift server (no ``mutateRowsTsEach``): the engine's stock Thrift1 write path.
ENGINES = ["sqlite", "cassandra", "hbase", "hbase-stock"]


ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"], "hbase-stock": ["hbase"]}
_started: set[str] = set()


def require(*names: str) -> None:
    """Start the named services once per session (already-running ones are reused).

    A service that will not start fails the test with its name, port and log tail.
    """
    missing = [n for n in names if n not in _started]
    if missing:
        services.up(missing)
        _started.update(missing)


def run_nxnw(*argv: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m nxnw.cli ARGV`` as an operator runs it, output captured; ``env`` is added
    to this process's environment (a wide ``COLUMNS``, so that rich wraps no line)."""
    return subprocess.run([sys.executable, "-m", "nxnw.cli", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="session")
def sqlite_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("sqlite"))


@pytest.fixture
def app_name() -> str:
    """A fresh app (table) per test, so tests never see each other's rows."""
    return f"t_{uuid.uuid4().hex[:12]}"


async def _open(engine: str, deployment: str, sqlite_dir: str) -> Engine:
    eng = open_engine(engine_url(engine, deployment, sqlite_dir))
    await eng.open()
    return eng


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest, sqlite_dir: str, app_name: str) -> AsyncIterator[Engine]:
    require(*ENGINE_SERVICES[request.param])
    eng = await _open(request.param, "n1", sqlite_dir)
    yield eng
    await eng.drop_app(app_name)
    await eng.close()


@pytest.fixture
async def all_engines(sqlite_dir: str, app_name: str) -> AsyncIterator[dict[str, Engine]]:
    require("cassandra", "hbase")
    engines = {name: await _open(name, "n1", sqlite_dir) for name in ENGINES}
    yield engines
    for eng in engines.values():
        await eng.drop_app(app_name)
        await eng.close()


def pytest_report_header(config: pytest.Config) -> str:
    return f"nxnw services state dir: {os.environ.get('NXNW_STATE_DIR', '.cache/services')}"


PAIRS = [("sqlite", "sqlite"), ("cassandra", "hbase"), ("hbase", "cassandra"), ("sqlite", "cassandra")]


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
async def n1_n2(request: pytest.FixtureRequest, sqlite_dir: str, app_name: str) -> AsyncIterator[tuple[Engine, Engine]]:
    """N1 and N2 on the given engines, each an independent deployment."""
    first, second = request.param
    require(*ENGINE_SERVICES[first], *ENGINE_SERVICES[second])
    n1 = await _open(first, "n1", sqlite_dir)
    n2 = await _open(second, "n2", sqlite_dir)
    yield n1, n2
    for eng in (n1, n2):
        await eng.drop_app(app_name)
        await eng.close()


# --- DNS hand-off (tests/test_dns_*.py) ---------------------------------------------------


@pytest.fixture
def bind_dns():
    """An RFC 2136 provider for the real BIND's zone, signed with the test TSIG key."""
    from dns_handoff import Rfc2136Provider
    from nxnw.services import endpoints as ep

    require("bind")
    return Rfc2136Provider(
        ep.BIND_ZONE, f"{ep.HOST}:{ep.BIND_DNS}", ep.BIND_TSIG_NAME, ep.BIND_TSIG_SECRET, ep.BIND_TSIG_ALGORITHM
    )


@pytest.fixture
def route53_zone():
    """A Route 53 provider on a fresh hosted zone in moto's server; the zone is deleted afterwards."""
    import boto3

    from dns_handoff import Route53Provider
    from nxnw.services.moto import DUMMY_CREDENTIALS, ENDPOINT_URL, REGION

    require("moto")
    client = boto3.client("route53", endpoint_url=ENDPOINT_URL, region_name=REGION, **DUMMY_CREDENTIALS)
    zone = f"z{uuid.uuid4().hex[:10]}.nxnw-r53.test."
    created = client.create_hosted_zone(Name=zone, CallerReference=uuid.uuid4().hex)
    zone_id = created["HostedZone"]["Id"]
    yield Route53Provider(zone_id, endpoint_url=ENDPOINT_URL, region_name=REGION, poll_interval=0.1, **DUMMY_CREDENTIALS)
    sets = client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    changes = [{"Action": "DELETE", "ResourceRecordSet": rs} for rs in sets if rs["Type"] not in ("SOA", "NS")]
    if changes:
        client.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": changes})
    client.delete_hosted_zone(Id=zone_id)


# --- ZooKeeper, for sync/ (tests/test_sync_*.py) ---------------------------------------------


@pytest.fixture
def zk_hosts() -> dict[str, str]:
    """Connection strings of N1's and N2's ZooKeeper (``{"n1": ..., "n2": ...}``), started if needed."""
    from nxnw.services.endpoints import HOST, ZOOKEEPER

    require("zookeeper-n1", "zookeeper-n2")
    return {deployment: f"{HOST}:{port}" for deployment, port in ZOOKEEPER.items()}


@pytest.fixture
def zk_connect(zk_hosts: dict[str, str]):
    """``zk_connect("n1" | "n2", **kazoo_kwargs)`` -> a started KazooClient; all closed after the test."""
    from kazoo.client import KazooClient

    made = []

    def connect(deployment: str, **kwargs):
        client = KazooClient(hosts=zk_hosts[deployment], **{"timeout": 10.0, **kwargs})
        client.start(timeout=10)
        made.append(client)
        return client

    yield connect
    for client in made:
        try:
            client.stop()
            client.close()
        except Exception:
            pass


#: The digest identities tests may restrict ACLs to; cleanup authenticates as all of them.
ZK_TEST_AUTH = [("digest", "mirror:secret"), ("digest", "someone:else")]


@pytest.fixture
def zk_root(zk_hosts: dict[str, str]):
    """A fresh znode path for one test; deleted on N1 and N2 afterwards, mirror markers included.

    Nodes whose ACL shuts out the world must grant one of ``ZK_TEST_AUTH``'s identities.
    """
    from kazoo.client import KazooClient

    from sync.mirror import purge_ephemeral_copies

    root = f"/nxnw-tests/{uuid.uuid4().hex[:12]}"
    yield root
    for hosts in zk_hosts.values():
        client = KazooClient(hosts=hosts, auth_data=ZK_TEST_AUTH)
        client.start(timeout=10)
        try:
            purge_ephemeral_copies(client, root)
            client.delete(root, recursive=True)
        finally:
            client.stop()
            client.close()


@pytest.fixture
def expire_zk_session(zk_hosts: dict[str, str]):
    """``expire(client, "n1" | "n2", during_loss=None)``: really expire ``client``'s session.

    A second client connects with the same session id and password and closes it, so the
    server ends the session; ``client`` sees SUSPENDED, LOST, then CONNECTED on a new
    session, which ``expire`` waits for. ``during_loss`` runs when ``client`` reports LOST,
    on its kazoo connection thread: ``client`` cannot reconnect (or react) until it
    returns, so whatever it does happens while ``client`` has no session.
    """
    import threading

    from kazoo.client import KazooClient
    from kazoo.protocol.states import KazooState

    def expire(client, deployment: str, during_loss=None, timeout: float = 15.0) -> None:
        lost, back = threading.Event(), threading.Event()
        failure: list[BaseException] = []

        def listener(state):
            if state == KazooState.LOST and not lost.is_set():
                try:
                    if during_loss is not None:
                        during_loss()
                except BaseException as exc:  # re-raised in the test's thread
                    failure.append(exc)
                lost.set()
            elif state == KazooState.CONNECTED and lost.is_set():
                back.set()
                return True
            return None

        client.add_listener(listener)
        thief = KazooClient(hosts=zk_hosts[deployment], client_id=client.client_id)
        thief.start(timeout=10)
        thief.stop()
        thief.close()
        assert back.wait(timeout), f"{client.hosts}: session did not expire and come back within {timeout}s"
        if failure:
            raise failure[0]

    return expire
