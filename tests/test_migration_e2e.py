"""Whole migrations under load, checked by the history checker against what N2 holds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from kazoo.client import KazooClient

from dns_handoff.resolve import answer
from nxnw.demo import N1_ADDRESS, N2_ADDRESS, DemoEnvironment, DemoOptions, _switch_over, dns_switched_at, run_demo
from nxnw.history import check
from nxnw.orchestrator import Orchestrator
from nxnw.services.endpoints import BIND_DNS, HOST
from sync import layout
from sync.state import MigrationStateStore


@pytest.mark.parametrize(("source", "target"), [("sqlite", "sqlite"), ("cassandra", "hbase"), ("hbase", "cassandra")])
async def test_migration_under_load_loses_nothing(source: str, target: str) -> None:
    figures, ok = await run_demo(DemoOptions(source=source, target=target, seed_entities=1500, clients=3))
    assert ok, figures
    assert figures["acknowledged writes"] > 100
    assert figures["lost writes"] == figures["resurrected deletes"] == figures["stale reads"] == 0
    assert figures["failed requests"] == 0


async def test_orchestrator_killed_during_load_and_during_handoff_resumes_and_loses_nothing() -> None:
    figures, ok = await run_demo(DemoOptions(seed_entities=20000, clients=3,
                                             faults=[("kill-orchestrator", "snapshot+load"),
                                                     ("kill-orchestrator", "handoff")]))
    assert ok, figures
    assert figures["orchestrator kills"] == 2
    assert figures["lost writes"] == 0
    assert figures["final phase"] == "complete"


async def test_switch_over_after_a_resumed_handoff_is_timed_from_the_first_dns_switch() -> None:
    """The orchestrator is killed after its DNS write and before it records the hand-off;
    the resumed run writes the record set again once every client has moved. The demo's
    switch-over is timed from the first write: clients kept reaching N1 for up to a TTL
    after it, so it is not 0 s (timed from the resume, it was)."""
    env = DemoEnvironment(DemoOptions(seed_entities=300, clients=2))
    argv = [sys.executable, "-m", "nxnw.cli", "migrate", str(env.plan_path)]
    try:
        await env.setup()
        env.start_workload()
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = asyncio.get_running_loop().time() + 240
            while await asyncio.to_thread(answer, f"{HOST}:{BIND_DNS}", env.dns_name, "A") != [N2_ADDRESS]:
                assert first.poll() is None, "the migration stopped before the DNS switch"
                assert asyncio.get_running_loop().time() < deadline, "no DNS switch within 240 s"
                await asyncio.sleep(0.05)
            os.killpg(first.pid, signal.SIGKILL)  # the hand-off holds the switch for a TTL before it records
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        killed_at = time.time()
        while not any(t > killed_at + env.options.ttl + 1 and a == N2_ADDRESS for t, a in env.workload.stats.reached):
            await asyncio.sleep(0.1)  # every client has re-resolved since the switch
        resumed = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=240)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
        await env.stop_workload()
        orchestrator = await Orchestrator.connect(env.plan)
        try:
            tasks = await orchestrator._finished_tasks()
        finally:
            await orchestrator.close()
        switched_at = dns_switched_at(tasks)
        assert switched_at is not None and switched_at < killed_at < tasks["handoff"]["switched_at"]
        _, full = _switch_over(env.workload.stats.reached, switched_at)
        assert full is not None and full > 0
    finally:
        await env.cleanup()


async def test_rollback_from_proxy_mode_leaves_every_write_on_n1() -> None:
    env = DemoEnvironment(DemoOptions(seed_entities=1000, clients=3))
    try:
        await env.setup()
        env.start_workload()
        orchestrator = await Orchestrator.connect(env.plan)
        try:
            await orchestrator.migrate(until="proxy")
            assert orchestrator.state.phase == "proxy"
            shown = {p["name"]: p["state"] for p in orchestrator.status()["phases"]}
            assert shown["snapshot+load"] == shown["verify"] == shown["proxy"] == "done"
            assert shown["handoff"] == shown["complete"] == "pending"
            await asyncio.sleep(1.5)  # writes made in proxy mode go to N2 first, then N1
            await orchestrator.rollback()
            assert orchestrator.state.phase == "rollback"
        finally:
            await orchestrator.close()
        await asyncio.sleep(0.5)
        await env.workload.stop()
        report = check(env.history, await env.final_state("n1"))
        assert report.ok, report.summary()
        assert report.acknowledged_writes > 100
        assert answer(f"{HOST}:{BIND_DNS}", env.dns_name, "A") == [N1_ADDRESS]
    finally:
        await env.cleanup()


def _migrate(plan_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nxnw.cli", "migrate", str(plan_path)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace('engine = "sqlite:', 'engine = "mongodb:', 1), "n1.engine: engine 'mongodb:"),
    (lambda t: t[:t.index("[n2]")] + t[t.index("[dns]"):], "n2: missing (required)"),
    (lambda t: t.replace(":21811/", ":1/", 1), "n1.zookeeper: N1's ZooKeeper at 127.0.0.1:1/"),
    (lambda t: t.replace("bnhudy10", "AAAAAAAA", 1), "dns: "),
    (lambda t: t + '\n[scale]\nscheduler = "tcp://127.0.0.1:9"\n',
     "scale.scheduler: Dask scheduler at tcp://127.0.0.1:9 did not answer"),
])
async def test_a_bad_plan_stops_before_anything_changes_with_one_line_per_problem(tmp_path, change, expected) -> None:
    env = DemoEnvironment(DemoOptions(seed_entities=10, workdir=tmp_path))
    await env.setup()
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text(change(env.plan_path.read_text()))
        result = await asyncio.get_running_loop().run_in_executor(None, _migrate, bad)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        zk = KazooClient(hosts=env.plan.n1.zookeeper, timeout=5)
        zk.start(10)
        try:
            state = MigrationStateStore(zk, path=layout.state(env.plan.name)).get()
            assert state is None, "a migration was recorded despite the bad plan"
            mode = layout.mode(env.plan.name)
            assert zk.exists(mode) is None or zk.get(mode)[0].find(b'"passthrough"') >= 0
        finally:
            zk.stop()
            zk.close()
        assert answer(f"{HOST}:{BIND_DNS}", env.dns_name, "A") == [N1_ADDRESS]
    finally:
        await env.cleanup()
