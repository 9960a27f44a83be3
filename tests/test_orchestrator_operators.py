"""The operator's view of a migration, against real ZooKeepers, engines, memcached and BIND:
``status --json`` and ``verify --json`` carry the facts of the text, ``migrate --dry-run``
changes nothing, a failed migration exits 1, and the orchestrator's metrics say where it is.

The deployments come from tests/test_orchestrator_gates.py's ``setting`` fixture (a
ZooKeeper chroot per test, an app of its own, a private memcached for N2).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aiohttp
from aiohttp import web
from prometheus_client import REGISTRY
from pymemcache.client.base import Client as MemcacheClient

from datastore import Entity
from dns_handoff import RecordSet, Rfc2136Provider, answer
from nxnw.migration_metrics import mount_metrics
from nxnw.orchestrator import Orchestrator
from nxnw.services.endpoints import BIND_DNS, BIND_ZONE, HOST
from sync import layout
from sync.mode import read_mode
from sync.state import MigrationStateStore, TaskRecordStore
from tests.conftest import run_nxnw
from tests.test_orchestrator_gates import (Setting, phase, private_memcached, run_orchestrator, seed_n1,
                                           setting)

__all__ = ["private_memcached", "setting"]  # fixtures used by name


def _n2_cache(s: Setting) -> MemcacheClient:
    host, _, port = s.plan.n2.memcached.rpartition(":")
    return MemcacheClient((host, int(port)), connect_timeout=5, timeout=5)


async def test_dry_run_prints_the_graph_and_the_preflight_and_changes_nothing(setting: Setting,
                                                                            bind_dns: Rfc2136Provider) -> None:
    s = setting
    name = f"dry-{uuid.uuid4().hex[:10]}.{BIND_ZONE}"
    bind_dns.wait_in_sync(bind_dns.upsert([RecordSet(name, "A", 1, ("127.0.0.11",))]), timeout=10)
    try:
        await seed_n1(s, 20)
        plan = s.make_plan(dns_name=name)
        cache = _n2_cache(s)
        cache.set(b"kept", b"by the dry run")

        result = await asyncio.to_thread(run_nxnw, "migrate", str(s.plan_path), "--dry-run")
        assert result.returncode == 0, (result.stdout, result.stderr)
        lines = result.stdout.splitlines()
        assert lines[0] == f"migration {plan.name}: dry run, nothing changed"
        assert "the DNS zone's update rights" in lines[1]
        assert lines[2] == "state: no migration recorded; migrate would start one in phase prepare"
        assert lines[3] == "tasks (0 of 9 done):"
        assert ["pending", f"verify:{s.app}", "phase", "verify", "after", f"snapshot+load:{s.app}"] in \
            [line.split() for line in lines]
        assert ["pending", "handoff", "phase", "handoff", "after", "proxy,", "handoff:lower-ttl"] in \
            [line.split() for line in lines]
        # Nothing changed: no state, no task record, no mode, N2's cache not flushed, DNS as it was.
        assert MigrationStateStore(s.zk1, path=layout.state(s.plan.name)).get() is None
        assert TaskRecordStore(s.zk1, root=layout.checkpoints(s.plan.name)).list(f"{plan.name}._tasks") == {}
        assert read_mode(s.zk1, path=layout.mode(s.plan.name)) is None
        assert cache.get(b"kept") == b"by the dry run"
        assert answer(f"{HOST}:{BIND_DNS}", name, "A") == ["127.0.0.11"]
        assert not bind_dns.records(f"_nxnw-preflight.{name}", "TXT")

        # Resuming: what is done is shown as done, and the live mode stays where it was.
        await run_orchestrator(plan, until="cow")
        mode = read_mode(s.zk1, path=layout.mode(s.plan.name))
        result = await asyncio.to_thread(run_nxnw, "migrate", str(s.plan_path), "--dry-run", "--until", "verify")
        assert result.returncode == 0, (result.stdout, result.stderr)
        lines = result.stdout.splitlines()
        assert lines[2] == "state: phase cow; migrate would resume it"
        assert lines[3] == "tasks (3 of 5 done):"
        assert [line.split()[:2] for line in lines[4:]] == [["done", "prepare"], ["done", "sync-zk"], ["done", "cow"],
                                                            ["pending", f"snapshot+load:{s.app}"],
                                                            ["pending", f"verify:{s.app}"]]
        assert read_mode(s.zk1, path=layout.mode(s.plan.name)) == mode and phase(s) == "cow"
        assert answer(f"{HOST}:{BIND_DNS}", name, "A") == ["127.0.0.11"]
    finally:
        bind_dns.delete(bind_dns.records(name, "A"))


async def test_status_and_verify_json_carry_the_facts_of_the_text(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 30)
    await run_orchestrator(s.plan, until="proxy")

    result = await asyncio.to_thread(run_nxnw, "status", str(s.plan_path), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["plan"] == s.plan.name and status["phase"] == "proxy"
    assert status["mode"]["mode"] == "proxy" and status["load_verified_cow_epoch"] == status["mode"]["epoch"] - 1
    assert status["journal"] == {"n1": 0, "n2": 0} and status["proxies"] == {}
    done = status["tasks_done"]
    assert [t["task"] for t in done] == ["prepare", "sync-zk", "cow", f"snapshot+load:{s.app}", f"verify:{s.app}",
                                         "proxy"]
    assert done[3]["entities"] == 30 and done[3]["phase"] == "snapshot+load"

    result = await asyncio.to_thread(run_nxnw, "verify", str(s.plan_path), "--json")
    assert result.returncode == 0, result.stderr
    verified = json.loads(result.stdout)
    assert verified["ok"] is True and verified["apps"][0]["identical"] is True
    assert verified["apps"][0]["entities_n1"] == verified["apps"][0]["entities_n2"] == 30

    # A row on N1 that N2 lacks (written behind the proxies' back): exit 1, the key in the JSON.
    await s.n1.apply([Entity(s.app, "Item", b"late", b"x", 9_000_000)])
    result = await asyncio.to_thread(run_nxnw, "verify", str(s.plan_path), "--json")
    assert result.returncode == 1, result.stderr
    found = json.loads(result.stdout)["apps"][0]
    assert found["ok"] is False and found["remaining"] == [{"key": "Item/b'late'", "kind": "missing on N2",
                                                            "reason": None}]


async def test_a_failed_migration_exits_1_and_bad_input_exits_2(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 10)
    await s.n2.apply([Entity(s.app, "Item", b"k0003", b"written on N2 directly", 9_000_000)])
    s.make_plan(allow_nonempty_n2=True)

    result = await asyncio.to_thread(run_nxnw, "migrate", str(s.plan_path))
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"nxnw migrate: task verify:{s.app} (phase verify) failed: app {s.app}: 1 key(s) differ"), last
    assert "Traceback" not in result.stderr

    result = await asyncio.to_thread(run_nxnw, "migrate", str(s.plan_path), "--until", "nowhere")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("nxnw migrate: unknown phase 'nowhere'")


async def test_metrics_say_the_phase_the_load_verify_and_the_journals(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 40)
    plan = s.plan.name

    async with await Orchestrator.connect(s.plan) as orchestrator:
        await orchestrator.migrate(until="proxy")
        assert REGISTRY.get_sample_value("nxnw_migration_phase", {"plan": plan, "nxnw_migration_phase": "proxy"}) == 1
        assert REGISTRY.get_sample_value("nxnw_migration_phase", {"plan": plan, "nxnw_migration_phase": "cow"}) == 0
        assert REGISTRY.get_sample_value("nxnw_migration_phase_number", {"plan": plan}) == 6
        assert REGISTRY.get_sample_value("nxnw_migration_load_entities", {"plan": plan, "app": s.app}) == 40
        ranges = REGISTRY.get_sample_value("nxnw_migration_load_ranges_total", {"plan": plan, "app": s.app})
        assert ranges and REGISTRY.get_sample_value("nxnw_migration_load_ranges_done",
                                                    {"plan": plan, "app": s.app}) == ranges
        assert REGISTRY.get_sample_value("nxnw_migration_verify_remaining", {"plan": plan, "app": s.app}) == 0
        assert REGISTRY.get_sample_value("nxnw_migration_task_seconds",
                                         {"plan": plan, "task": "cow", "phase": "cow"}) is not None

        # /metrics beside the status page reads the journals from ZooKeeper at each scrape.
        s.zk1.create(f"{layout.journal(s.plan.name, 'n2')}/k-", b"{}", makepath=True, sequence=True)
        app = web.Application()
        mount_metrics(app, orchestrator.read_journal_depths)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            async with aiohttp.ClientSession() as http, http.get(f"http://{HOST}:{port}/metrics") as response:
                assert response.status == 200 and response.content_type == "text/plain"
                text = await response.text()
        finally:
            await runner.cleanup()
        assert f'nxnw_migration_journal_depth{{plan="{plan}",target="n2"}} 1.0' in text
        assert f'nxnw_migration_journal_depth{{plan="{plan}",target="n1"}} 0.0' in text

        await orchestrator.rollback()
    assert REGISTRY.get_sample_value("nxnw_migration_phase", {"plan": plan, "nxnw_migration_phase": "rollback"}) == 1
    assert REGISTRY.get_sample_value("nxnw_migration_phase_number", {"plan": plan}) == 0
