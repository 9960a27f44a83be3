"""Session fixtures: the real services, started by the project's own code.

A service that cannot be started fails the session with its name, port and log tail;
nothing is skipped because a server is missing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from datastore import Engine, open_engine
from nxnw import services
from nxnw.services.endpoints import engine_url

ENGINES = ["sqlite", "cassandra", "hbase"]


ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"]}
_started: set[str] = set()


def require(*names: str) -> None:
    """Start the named services once per session (already-running ones are reused).

    A service that will not start fails the test with its name, port and log tail.
    """
    missing = [n for n in names if n not in _started]
    if missing:
        services.up(missing)
        _started.update(missing)


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
