"""The orchestrator's gates, against real ZooKeepers, engines and memcached (no proxies).

Each test gets its own ZooKeeper chroot on N1 and N2, its own app and its own memcached
for N2 (``prepare`` flushes N2's memcached; the shared one serves other tests). With no
proxy registered, a mode switch is acknowledged at once, so a whole migration runs here
in seconds: what is checked is the orchestrator's decisions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.security import make_acl

from datastore import Engine, Entity, EntityRef, open_engine
from nxnw.config import Plan, parse_plan
from nxnw.orchestrator import MigrationFailed, Orchestrator
from dns_handoff import RecordSet, Rfc2136Provider, answer
from nxnw.services.endpoints import (BIND_DNS, BIND_TSIG_ALGORITHM, BIND_TSIG_NAME, BIND_TSIG_SECRET, BIND_ZONE, HOST,
                                     MEMCACHED, ZOOKEEPER, engine_url)
from proxy.control import switch_mode
from sync import layout
from sync.mode import load_verified_epoch, mark_load_verified, read_mode
from sync.state import MigrationStateStore
from tests.conftest import ENGINE_SERVICES, require, run_nxnw
from tests.memcached_harness import memcached_process


@dataclass
class Setting:
    """One test's deployments: the plan (as a file too), N1's and N2's engines and ZooKeepers."""

    plan: Plan
    plan_path: Path
    app: str
    n1: Engine
    n2: Engine
    zk1: KazooClient
    zk2: KazooClient
    make_plan: Callable[..., Plan]


def _plan_text(name: str, app: str, n1_url: str, n2_url: str, chroot: str, memcached_n2: str, **extra: object) -> str:
    """The plan as TOML; ``extra`` adds top-level settings, ``thresholds`` and ``dns_name``
    (a hand-off of that name on the local BIND, N1 127.0.0.11 -> N2 127.0.0.12)."""
    top = "".join(f"{key} = {str(value).lower() if isinstance(value, bool) else value}\n" for key, value in extra.items()
                  if key not in ("thresholds", "dns_name"))
    thresholds = extra.get("thresholds", {"journal_drain_seconds": 2})
    dns = "" if "dns_name" not in extra else (
        f'[dns]\nprovider = "rfc2136"\nname = "{extra["dns_name"]}"\nn1_values = ["127.0.0.11"]\n'
        f'n2_values = ["127.0.0.12"]\nttl = 1\n\n[dns.rfc2136]\nserver = "{HOST}:{BIND_DNS}"\nzone = "{BIND_ZONE}"\n'
        f'key_name = "{BIND_TSIG_NAME}"\nkey_secret = "{BIND_TSIG_SECRET}"\nkey_algorithm = "{BIND_TSIG_ALGORITHM}"\n\n')
    return (f'name = "{name}"\napps = ["{app}"]\nsync_paths = ["/apps/{app}"]\n{top}\n'
            f'[n1]\nengine = "{n1_url}"\nzookeeper = "{HOST}:{ZOOKEEPER["n1"]}{chroot}"\n'
            f'memcached = "{HOST}:{MEMCACHED["n1"]}"\n\n'
            f'[n2]\nengine = "{n2_url}"\nzookeeper = "{HOST}:{ZOOKEEPER["n2"]}{chroot}"\nmemcached = "{memcached_n2}"\n\n'
            + dns + "[thresholds]\n" + "".join(f"{k} = {v}\n" for k, v in thresholds.items()))


@pytest.fixture
def private_memcached() -> Iterator[str]:
    """A memcached of this test's own (``prepare`` flushes N2's)."""
    require("memcached-n1")  # the memcached binary
    with memcached_process() as (host, port):
        yield f"{host}:{port}"


@pytest.fixture(params=[("sqlite", "sqlite")], ids=lambda p: f"{p[0]}-to-{p[1]}")
async def setting(request: pytest.FixtureRequest, tmp_path: Path, private_memcached: str) -> AsyncIterator[Setting]:
    source, target = request.param
    require("zookeeper-n1", "zookeeper-n2", *ENGINE_SERVICES[source], *ENGINE_SERVICES[target])
    tag = uuid.uuid4().hex[:10]
    app, chroot = f"g_{tag}", f"/nxnw-gates-{tag}"
    n1_url, n2_url = engine_url(source, "n1", str(tmp_path)), engine_url(target, "n2", str(tmp_path))
    admins = []
    for side in ("n1", "n2"):
        admin = KazooClient(hosts=f"{HOST}:{ZOOKEEPER[side]}", timeout=10)
        admin.start(10)
        admin.ensure_path(chroot)
        admins.append(admin)
    zk1 = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}{chroot}", timeout=10)
    zk2 = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n2']}{chroot}", timeout=10)
    zk1.start(10)
    zk2.start(10)
    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()

    def make_plan(**extra: object) -> Plan:
        text = _plan_text(f"gates-{tag}", app, n1_url, n2_url, chroot, private_memcached, **extra)
        (tmp_path / "plan.toml").write_text(text)
        return parse_plan(text, "plan.toml")

    try:
        yield Setting(make_plan(), tmp_path / "plan.toml", app, n1, n2, zk1, zk2, make_plan)
    finally:
        for engine in (n1, n2):
            await engine.drop_app(app)
            await engine.close()
        for client in (zk1, zk2):
            client.stop()
            client.close()
        for admin in admins:
            admin.delete(chroot, recursive=True)
            admin.stop()
            admin.close()


async def seed_n1(s: Setting, count: int = 200) -> None:
    await s.n1.apply([Entity(s.app, "Item", b"k%04d" % i, b"v%d" % i, 1_000_000 + i) for i in range(count)])


async def run_orchestrator(plan: Plan, action: str = "migrate", **kwargs) -> Orchestrator:
    async with await Orchestrator.connect(plan) as orchestrator:
        await getattr(orchestrator, action)(**kwargs)
    return orchestrator


def phase(s: Setting) -> str | None:
    state = MigrationStateStore(s.zk1, path=layout.state(s.plan.name)).get()
    return None if state is None else state.phase


# --- prepare: N2 must start empty --------------------------------------------------------------------------------


async def test_prepare_refuses_an_n2_table_that_holds_rows_naming_app_count_and_keys(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 10)
    await s.n2.apply([Entity(s.app, "Item", b"left-over", b"from somewhere", 5), Entity(s.app, "Item", b"gone", None, 6)])

    with pytest.raises(MigrationFailed) as refused:
        await run_orchestrator(s.plan)
    message = str(refused.value)
    assert f"app {s.app}: 2 row(s) on N2" in message and "Item/b'gone'" in message, message
    assert "allow_nonempty_n2" in message
    mode = read_mode(s.zk1, path=layout.mode(s.plan.name))
    assert (mode.mode, mode.epoch) == ("passthrough", 0), "prepare failed, yet the plan's mode was moved"

    # The plan may say these rows are known (an earlier attempt's copies of N1's data).
    await run_orchestrator(s.make_plan(allow_nonempty_n2=True), until="prepare")
    assert phase(s) == "prepare"


# --- verify gates proxy --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", [("sqlite", "sqlite"), ("sqlite", "cassandra")], indirect=True,
                         ids=["sqlite-to-sqlite", "sqlite-to-cassandra"])
async def test_a_difference_repair_cannot_close_stops_the_migration_before_proxy_naming_the_key(
        setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    # Written on N2 behind the proxy's back, newer than N1's copy: the load keeps it (last
    # write wins) and repair must not copy it to N1 while N1 is primary.
    await s.n2.apply([Entity(s.app, "Item", b"k0007", b"written on N2 directly", 9_000_000)])
    plan = s.make_plan(allow_nonempty_n2=True)

    with pytest.raises(MigrationFailed) as stopped:
        await run_orchestrator(plan)
    assert f"app {s.app}: 1 key(s) differ" in str(stopped.value) and "Item/b'k0007'" in str(stopped.value)
    assert phase(s) == "verify"
    mode = read_mode(s.zk1, path=layout.mode(s.plan.name))
    assert mode is not None and mode.mode == "cow", mode
    assert load_verified_epoch(s.zk1, path=layout.mode(s.plan.name)) is None, "the load was recorded as verified"
    assert (await s.n1.get(EntityRef(s.app, "Item", b"k0007"))).value == b"v7"

    # The operator's verify says the same, with exit status 1 and the key.
    result = await asyncio.to_thread(run_nxnw, "verify", str(s.plan_path), "--repair")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"differs: app {s.app} key Item/b'k0007': stale on N1" in result.stdout
    assert "Traceback" not in result.stderr


async def test_verify_repair_exits_0_once_the_repair_converged(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 50)
    await s.n2.apply([Entity(s.app, "Item", b"k0003", b"older", 10)])  # N1's copy wins: repairable
    result = await asyncio.to_thread(run_nxnw, "verify", str(s.plan_path))
    assert result.returncode == 1 and "missing on N2" in result.stdout, result.stdout
    result = await asyncio.to_thread(run_nxnw, "verify", str(s.plan_path), "--repair")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "identical after repair" in result.stdout


# --- resume trusts the live mode -----------------------------------------------------------------------------------


async def test_resume_after_the_proxies_were_put_back_in_passthrough_stops_instead_of_completing(
        setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    await run_orchestrator(s.plan, until="proxy")
    assert phase(s) == "proxy" and read_mode(s.zk1, path=layout.mode(s.plan.name)).mode == "proxy"

    await asyncio.to_thread(switch_mode, s.zk1, s.plan.name, "passthrough")  # a rollback that stopped half-way, or an admin

    with pytest.raises(MigrationFailed) as stopped:
        await run_orchestrator(s.plan)
    message = str(stopped.value)
    assert "the proxies are in mode passthrough" in message and "left them in mode proxy" in message, message
    assert "not running complete" in message
    assert phase(s) == "proxy"
    status = await asyncio.to_thread(run_nxnw, "status", str(s.plan_path))
    assert status.returncode == 0 and "passthrough (epoch 3); load verified in cow epoch 1" in status.stdout, status


async def test_resume_never_hands_dns_to_n2_with_the_proxies_back_in_passthrough(setting: Setting,
                                                                                 bind_dns: Rfc2136Provider) -> None:
    s = setting
    name = f"gates-{uuid.uuid4().hex[:10]}.{BIND_ZONE}"
    bind_dns.wait_in_sync(bind_dns.upsert([RecordSet(name, "A", 1, ("127.0.0.11",))]), timeout=10)
    try:
        await seed_n1(s)
        plan = s.make_plan(dns_name=name)
        await run_orchestrator(plan, until="proxy")
        await asyncio.to_thread(switch_mode, s.zk1, s.plan.name, "passthrough")

        with pytest.raises(MigrationFailed, match="not running handoff"):
            await run_orchestrator(plan)
        assert answer(f"{HOST}:{BIND_DNS}", name, "A") == ["127.0.0.11"]
        assert phase(s) == "proxy"
    finally:
        bind_dns.delete(bind_dns.records(name, "A"))


async def test_resume_in_a_new_cow_period_stops_before_verifying_a_load_that_missed_writes(setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    await run_orchestrator(s.plan, until="snapshot+load")
    cow = read_mode(s.zk1, path=layout.mode(s.plan.name))
    # cow -> passthrough -> cow: writes made in between never reached N2.
    await asyncio.to_thread(switch_mode, s.zk1, s.plan.name, "passthrough")
    await asyncio.to_thread(switch_mode, s.zk1, s.plan.name, "cow")

    with pytest.raises(MigrationFailed) as stopped:
        await run_orchestrator(s.plan)
    assert f"left them in mode cow (epoch {cow.epoch})" in str(stopped.value)
    assert load_verified_epoch(s.zk1, path=layout.mode(s.plan.name)) is None


# --- complete and rollback: journals, the last ZooKeeper sync ------------------------------------------------------


async def test_complete_requires_both_journals_empty_and_syncs_zookeeper_once_more(setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    s.zk1.create(f"/apps/{s.app}/config", b"v1", makepath=True)
    orchestrator = await Orchestrator.connect(s.plan)
    try:
        await orchestrator.migrate(until="proxy")
        assert s.zk2.get(f"/apps/{s.app}/config")[0] == b"v1"

        entry = s.zk1.create(f"{layout.journal(s.plan.name, 'n1')}/k-", b"{}", makepath=True, sequence=True)
        with pytest.raises(MigrationFailed) as stopped:
            await orchestrator.migrate()
        assert "journal toward N1: 1" in str(stopped.value), stopped.value
        assert phase(s) == "proxy"

        s.zk1.delete(entry)
        # An ACL change fires no ZooKeeper watch: only a last full sync carries it to N2.
        narrower = [make_acl("world", "anyone", read=True, write=True, create=True, delete=True)]
        s.zk1.set_acls(f"/apps/{s.app}/config", narrower)
        await orchestrator.migrate()
    finally:
        await orchestrator.close()
    assert phase(s) == "complete"
    assert s.zk2.get_acls(f"/apps/{s.app}/config")[0] == narrower


async def test_rollback_requires_the_n1_journal_empty_and_reports_the_n2_one(setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    await run_orchestrator(s.plan, until="cow")
    to_n1 = s.zk1.create(f"{layout.journal(s.plan.name, 'n1')}/k-", b"{}", makepath=True, sequence=True)
    s.zk1.create(f"{layout.journal(s.plan.name, 'n2')}/k-", b"{}", makepath=True, sequence=True)

    with pytest.raises((MigrationFailed, RuntimeError), match="toward n1"):
        await run_orchestrator(s.plan, "rollback")
    assert read_mode(s.zk1, path=layout.mode(s.plan.name)).mode == "cow" and phase(s) == "cow"

    s.zk1.delete(to_n1)
    await run_orchestrator(s.plan, "rollback")
    state = MigrationStateStore(s.zk1, path=layout.state(s.plan.name)).get()
    assert state.phase == "rollback" and state.data["n2_journal"] == 1
    assert read_mode(s.zk1, path=layout.mode(s.plan.name)).mode == "passthrough"


async def test_rollback_goes_back_to_n1_even_when_n2s_zookeeper_is_unreachable(setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    await run_orchestrator(s.plan, until="cow")
    n2_gone = s.plan.model_copy(update={"n2": s.plan.n2.model_copy(update={"zookeeper": f"{HOST}:1/gone"})})

    orchestrator = await run_orchestrator(n2_gone, "rollback")
    assert phase(s) == "rollback" and read_mode(s.zk1, path=layout.mode(s.plan.name)).mode == "passthrough"
    assert any("`nxnw verify --repair` removes them" in line for line in orchestrator.progress.events)


async def test_resume_after_a_kill_between_the_proxy_switch_and_its_record_finishes_the_migration(
        setting: Setting) -> None:
    s = setting
    await seed_n1(s)
    await run_orchestrator(s.plan, until="verify")
    cow = read_mode(s.zk1, path=layout.mode(s.plan.name))
    # What the proxy task does before it records itself done; then the orchestrator is killed.
    mark_load_verified(s.zk1, cow.epoch, path=layout.mode(s.plan.name))
    await asyncio.to_thread(switch_mode, s.zk1, s.plan.name, "proxy")

    await run_orchestrator(s.plan)
    assert phase(s) == "complete"
