"""``nxnw demo``: a whole live migration on this machine, checked by a history checker.

It starts the local services, seeds N1 (entities and ZooKeeper nodes), puts two proxy
instances in front — one on N1's address (127.0.0.11), one on N2's (127.0.0.12) — and
runs a steady workload whose clients find the data endpoint through a real DNS name on
the local BIND, re-resolving per TTL. Then it migrates: every phase, the DNS hand-off
included, with the orchestrator in this process or (``orchestrator_kills``) in a child
process that is killed with SIGKILL in the named phases and started again. At the end
the history checker compares every acknowledged operation with what N2 holds.

The report has one ``name: value`` line per figure; ``run_demo`` returns it, and the
exit status is 0 only when nothing was lost, nothing resurrected and no read was stale.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from datastore import Entity, open_engine
from dns_handoff.provider import RecordSet
from dns_handoff.rfc2136 import Rfc2136Provider
from nxnw import services
from nxnw.config import Plan, parse_plan
from nxnw.history import History, check
from nxnw.orchestrator import Orchestrator
from nxnw.services.base import REPO_ROOT
from nxnw.services.endpoints import (BIND_DNS, BIND_TSIG_ALGORITHM, BIND_TSIG_NAME, BIND_TSIG_SECRET, BIND_ZONE,
                                     HOST, MEMCACHED, ZOOKEEPER, engine_url)
from nxnw.status_page import render_report, status_app
from nxnw.workload import Endpoint, Workload
from nxnw.zk import zk_session
from proxy.config import ProxyConfig
from proxy.server import ProxyServer
from sync.aio import run_blocking
from sync.state import CheckpointStore, MigrationStateStore

N1_ADDRESS = "127.0.0.11"
N2_ADDRESS = "127.0.0.12"
ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"]}


@dataclass
class DemoOptions:
    source: str = "sqlite"
    target: str = "sqlite"
    seed_entities: int = 5000
    value_bytes: int = 1024
    clients: int = 4
    keys: int = 200
    ttl: int = 2
    settle_seconds: float = 1.0
    orchestrator_kills: list[str] = field(default_factory=list)
    status_port: int | None = None
    workdir: Path | None = None


def _free_port(*addresses: str) -> int:
    """A TCP port free on every address (the two proxies listen on the same port)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no TCP port free on all of {addresses}")


def _toml(plan: dict[str, Any]) -> str:
    """The plan as TOML (strings and lists via JSON, which TOML basic strings accept)."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict) and v is not None}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {json.dumps(v)}" for k, v in scalars.items())
        lines.append("")
        for key, value in values.items():
            if isinstance(value, dict):
                table(f"{prefix}.{key}" if prefix else key, value)

    table("", plan)
    return "\n".join(lines)


class DemoEnvironment:
    """N1, N2, their ZooKeeper namespaces, a DNS name, two proxies and a workload."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.id = f"{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
        self.app = f"demo_{self.id}"
        self.workdir = options.workdir or REPO_ROOT / ".cache" / "demo" / self.id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chroot = f"/nxnw-demo-{self.id}"
        self.dns_name = f"demo-{self.id}.{BIND_ZONE}"
        self.port = _free_port(N1_ADDRESS, N2_ADDRESS)
        self.plan_path = self.workdir / "plan.toml"
        self.history = History()
        self.proxies: list[ProxyServer] = []
        self.workload: Workload | None = None
        self.plan: Plan | None = None

    def needed_services(self) -> list[str]:
        engines = {self.options.source, self.options.target}
        return ["memcached-n1", "memcached-n2", "zookeeper-n1", "zookeeper-n2", "bind",
                *sorted({s for e in engines for s in ENGINE_SERVICES[e]})]

    def plan_dict(self) -> dict[str, Any]:
        sqlite_dir = str(self.workdir)
        return {
            "name": f"demo-{self.id}",
            "apps": [self.app],
            "sync_paths": [f"/apps/{self.app}", "/nxnw/locks"],
            "status_port": self.options.status_port,
            "n1": {"engine": engine_url(self.options.source, "n1", sqlite_dir),
                   "zookeeper": f"{HOST}:{ZOOKEEPER['n1']}{self.chroot}",
                   "memcached": f"{HOST}:{MEMCACHED['n1']}",
                   "proxies": [f"http://{N1_ADDRESS}:{self.port}"]},
            "n2": {"engine": engine_url(self.options.target, "n2", sqlite_dir),
                   "zookeeper": f"{HOST}:{ZOOKEEPER['n2']}{self.chroot}",
                   "memcached": f"{HOST}:{MEMCACHED['n2']}",
                   "proxies": [f"http://{N2_ADDRESS}:{self.port}"]},
            "dns": {"provider": "rfc2136", "name": self.dns_name, "n1_values": [N1_ADDRESS],
                    "n2_values": [N2_ADDRESS], "ttl": self.options.ttl, "resolver": f"{HOST}:{BIND_DNS}",
                    "rfc2136": {"server": f"{HOST}:{BIND_DNS}", "zone": BIND_ZONE, "key_name": BIND_TSIG_NAME,
                                "key_secret": BIND_TSIG_SECRET, "key_algorithm": BIND_TSIG_ALGORITHM}},
            "thresholds": {"shadow_rate": 0.05, "ranges_per_app": 16},
        }

    def dns(self) -> Rfc2136Provider:
        return Rfc2136Provider(BIND_ZONE, f"{HOST}:{BIND_DNS}", BIND_TSIG_NAME, BIND_TSIG_SECRET, BIND_TSIG_ALGORITHM)

    async def setup(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, services.up, self.needed_services())
        text = _toml(self.plan_dict())
        self.plan_path.write_text(text)
        self.plan = parse_plan(text, str(self.plan_path))
        for side in ("n1", "n2"):
            async with zk_session(f"{HOST}:{ZOOKEEPER[side]}", side.upper() + "'s") as zk:
                await run_blocking(zk.ensure_path, self.chroot)
                if side == "n1":
                    for name in ("config", "version"):
                        await run_blocking(zk.create, f"{self.chroot}/apps/{self.app}/{name}", b"v1", makepath=True)
                    for _ in range(3):
                        await run_blocking(zk.create, f"{self.chroot}/apps/{self.app}/txn-", b"", sequence=True)
        provider = self.dns()
        record = RecordSet(self.dns_name, "A", self.options.ttl * 2, (N1_ADDRESS,))
        await asyncio.get_running_loop().run_in_executor(None, lambda: provider.wait_in_sync(provider.upsert([record]), 30))
        await self._seed()
        for index, address in enumerate((N1_ADDRESS, N2_ADDRESS)):
            proxy = ProxyServer(self.proxy_config(index, address))
            await proxy.setup()
            await proxy.start()
            self.proxies.append(proxy)

    def proxy_config(self, index: int, address: str) -> ProxyConfig:
        assert self.plan is not None
        return ProxyConfig(instance=f"demo-p{index}", node_id=index + 1, n1_engine=self.plan.n1.engine,
                           n2_engine=self.plan.n2.engine, n1_zookeeper=self.plan.n1.zookeeper,
                           n2_zookeeper=self.plan.n2.zookeeper, n1_memcached=self.plan.n1.memcached,
                           n2_memcached=self.plan.n2.memcached, http_host=address, http_port=self.port,
                           shadow_rate=self.plan.thresholds.shadow_rate)

    async def _seed(self) -> None:
        assert self.plan is not None
        n1 = open_engine(self.plan.n1.engine)
        await n1.open()
        try:
            value = b"s" * self.options.value_bytes
            base = time.time_ns() // 1000 - 10_000_000
            batch = [Entity(self.app, "Item", b"seed-%06d" % i, value, base + i * 16) for i in range(self.options.seed_entities)]
            for start in range(0, len(batch), 1000):
                await n1.apply(batch[start:start + 1000])
        finally:
            await n1.close()

    def start_workload(self) -> None:
        endpoint = lambda cid: Endpoint(port=self.port, address=N1_ADDRESS, dns_server=f"{HOST}:{BIND_DNS}",
                                        dns_name=self.dns_name, ttl=self.options.ttl)
        self.workload = Workload(self.app, endpoint, clients=self.options.clients, keys=self.options.keys,
                                 history=self.history)
        self.workload.start()

    async def final_state(self, side: str = "n2") -> dict[str, tuple[bytes, int] | None]:
        """What N2 (or N1) holds for the workload's keys (None for a tombstone)."""
        assert self.plan is not None
        engine = open_engine(getattr(self.plan, side).engine)
        await engine.open()
        state: dict[str, tuple[bytes, int] | None] = {}
        try:
            for key_range in await engine.ranges(self.app):
                async for page in engine.scan(self.app, key_range, tombstones=True):
                    for e in page:
                        if e.key.startswith(b"key-"):
                            state[e.key.decode()] = None if e.value is None else (e.value, e.ts)
        finally:
            await engine.close()
        return state

    async def cleanup(self) -> None:
        if self.workload is not None and not self.workload._stop.is_set():
            await self.workload.stop()
        for proxy in reversed(self.proxies):
            await proxy.cleanup()
        self.proxies = []


async def _orchestrate_in_process(env: DemoEnvironment) -> dict[str, Any]:
    assert env.plan is not None
    orchestrator = Orchestrator(env.plan)
    await orchestrator.connect()
    runner = None
    if env.plan.status_port is not None:
        runner = web.AppRunner(status_app(orchestrator.status), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, env.plan.status_port).start()
        print(f"status page: http://{HOST}:{env.plan.status_port}/", flush=True)
    try:
        await orchestrator.migrate()
        (env.workdir / "report.html").write_text(render_report(orchestrator.status()))
        return await orchestrator._finished_tasks()
    finally:
        if runner is not None:
            await runner.cleanup()
        await orchestrator.close()


async def _phase(env: DemoEnvironment) -> str | None:
    assert env.plan is not None
    async with zk_session(env.plan.n1.zookeeper, "N1's") as zk:
        state = await run_blocking(MigrationStateStore(zk).get)
    return None if state is None else state.phase


async def _orchestrate_in_child(env: DemoEnvironment, kills: list[str]) -> dict[str, Any]:
    """Run ``nxnw migrate`` as a child; SIGKILL it once in each phase of ``kills``; rerun."""
    remaining = list(kills)
    log = open(env.workdir / "orchestrator.log", "ab")
    while True:
        child = subprocess.Popen([sys.executable, "-m", "nxnw.cli", "migrate", str(env.plan_path)],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while child.poll() is None:
            if remaining and await _phase(env) == remaining[0]:
                await asyncio.sleep(0.3)
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                print(f"orchestrator killed with SIGKILL in phase {remaining.pop(0)}; starting it again", flush=True)
                break
            await asyncio.sleep(0.1)
        if child.returncode == 0:
            break
        if child.returncode != -signal.SIGKILL:
            raise RuntimeError(f"nxnw migrate exited {child.returncode}; see {env.workdir / 'orchestrator.log'}")
    assert env.plan is not None
    async with zk_session(env.plan.n1.zookeeper, "N1's") as zk:
        return await run_blocking(CheckpointStore(zk).list, f"{env.plan.name}._tasks")


def _switch_over(reached: list[tuple[float, str]], switched_at: float) -> tuple[float | None, float | None]:
    """Seconds from the DNS switch until 99 % and 100 % of requests reached N2."""
    after = [(t, a) for t, a in reached if t >= switched_at]
    n1_times = [t for t, a in after if a == N1_ADDRESS]
    if not after:
        return None, None
    full = (max(n1_times) - switched_at) if n1_times else 0.0
    allowed = int(len(after) * 0.01)
    late = sorted(n1_times)
    ninety_nine = (late[len(late) - allowed - 1] - switched_at) if len(late) > allowed else 0.0
    return ninety_nine, full


def _ratio(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


async def run_demo(options: DemoOptions) -> tuple[dict[str, Any], bool]:
    env = DemoEnvironment(options)
    print(f"demo {env.id}: {options.source} N1 -> {options.target} N2, app {env.app}, work dir {env.workdir}", flush=True)
    try:
        await env.setup()
        print(f"N1 seeded with {options.seed_entities} entities; proxies on {N1_ADDRESS}:{env.port} and "
              f"{N2_ADDRESS}:{env.port}; clients resolve {env.dns_name} on 127.0.0.1:{BIND_DNS}", flush=True)
        env.start_workload()
        await asyncio.sleep(options.settle_seconds)
        started = time.monotonic()
        if options.orchestrator_kills:
            tasks = await _orchestrate_in_child(env, options.orchestrator_kills)
        else:
            tasks = await _orchestrate_in_process(env)
        migration_seconds = time.monotonic() - started
        await asyncio.sleep(options.ttl + 2.0)
        assert env.workload is not None
        await env.workload.stop()
        report = check(env.history, await env.final_state())
        handoff = tasks.get("handoff", {})
        load = tasks.get(f"snapshot+load:{env.app}", {})
        p99, p100 = _switch_over(env.workload.stats.reached, handoff.get("switched_at", time.time()))
        failed_in_switch = env.workload.stats.failed
        figures: dict[str, Any] = {
            "acknowledged writes": report.counts().get("acknowledged_writes", 0),
            "acknowledged deletes": report.counts().get("acknowledged_deletes", 0),
            "reads": report.counts().get("reads", 0),
            "lost writes": report.counts().get("lost_writes", 0),
            "resurrected deletes": report.counts().get("resurrected_deletes", 0),
            "stale reads": report.counts().get("stale_reads", 0),
            "unknown writes": report.counts().get("unknown_writes", 0),
            "failed requests": failed_in_switch,
            "switch-over 99% (seconds)": None if p99 is None else round(p99, 2),
            "switch-over (seconds)": None if p100 is None else round(p100, 2),
            "dns ttl (seconds)": options.ttl,
            "N2 cache hit ratio after cutover": _ratio(env.workload.stats.cache_hit_ratio(
                N2_ADDRESS, handoff.get("switched_at", time.time()), options.ttl + 5.0)),
            "load rate (entities/s)": load.get("rate"),
            "entities loaded": load.get("entities"),
            "migration (seconds)": round(migration_seconds, 1),
            "orchestrator kills": len(options.orchestrator_kills),
            "final phase": await _phase(env),
        }
        ok = report.ok and figures["final phase"] == "complete"
        (env.workdir / "history.jsonl").write_text("")
        env.history.save(env.workdir / "history.jsonl")
        if not ok:
            print(report.summary(), flush=True)
        return figures, ok
    finally:
        await env.cleanup()
