"""``nxnw demo``: a whole live migration on this machine, under faults, checked by a history checker.

It starts the local services, seeds N1 (entities and ZooKeeper nodes) and puts a fleet of
two proxy instances in front — real ``nxnw proxy serve`` processes, one on N1's address
(127.0.0.11) and one on N2's (127.0.0.12), each with its HTTP and memcache ports — with
N2's memcached a process of the run's own. A steady workload's clients find the data
endpoint through a real DNS name on the local BIND (re-resolving per TTL) and fail over
to the other instance when theirs does not answer. The orchestrator runs as a child
process (``nxnw migrate``) through every phase, the DNS hand-off included.

Faults (``nxnw/faults.py``, ``--fault NAME --in PHASE``): for each phase that has faults,
the orchestrator runs ``--until`` that phase; a fault on the orchestrator itself strikes
while it works on the phase, the others once the phase's tasks are done, so each fault
starts while the migration is in its phase and goes on while the migration moves on (see
``MigrationDriver``). An orchestrator that exits with an error is resumed (``nxnw
migrate`` again) once the faults in progress have undone their harm, as an operator
would; the resumes are counted in the report, and a migration still failing after three
is reported as stuck.

At the end the history checker compares every operation, the seeded data included, with
what the serving side holds (N2 once the proxies are in ``proxy`` mode, else N1), and a
last verify compares N1 with N2. The demo must never stop a shared service itself (only
the ``n2-engine-down`` fault does, and starts it again) nor signal a process it did not
start. The report has one ``name: value``
line per figure; ``run_demo`` returns it, with ok true only when the checker found no
anomaly, the final verify found N1 and N2 identical and the migration reached complete.
``tamper_n2`` (a test hook proving the checker sees) deletes rows straight in N2's engine,
behind the proxies' back, after the migration completed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from datastore import Entity, open_engine
from dns_handoff.provider import RecordSet
from dns_handoff.rfc2136 import Rfc2136Provider
from nxnw import services
from nxnw.config import Plan, parse_plan
from nxnw.faults import FAULT_PHASES, Fault, FaultTarget, PartitionZookeeper, parse_fault
from nxnw.fleet import MemcachedProcess, ProxyFleet, free_port
from nxnw.history import History, Report, check
from nxnw.partition import Partition
from sync.state import PHASES
from nxnw.services.base import REPO_ROOT, log_tail
from nxnw.services.endpoints import (BIND_DNS, BIND_TSIG_ALGORITHM, BIND_TSIG_NAME, BIND_TSIG_SECRET, BIND_ZONE,
                                     HOST, MEMCACHED, ZOOKEEPER, engine_url)
from nxnw.workload import Endpoint, Workload
from nxnw.zk import zk_session
from snapshot import verify_app
from sync.aio import io_executor, run_blocking
from sync import layout
from sync.mode import read_mode
from sync.state import MigrationStateStore, TaskRecordStore
from sync.writer_clock import DEFAULT_MAX_OFFSET_MS

N1_ADDRESS = "127.0.0.11"
N2_ADDRESS = "127.0.0.12"
ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"]}
#: The phases whose task moves the proxies' mode (to the mode of the same name).
MODE_PHASES = ("cow", "proxy")
#: How often one migration segment may be resumed after the orchestrator failed.
MAX_RESUMES = 3


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
    #: (fault name, phase) pairs, as ``--fault NAME --in PHASE`` gives them
    faults: list[tuple[str, str]] = field(default_factory=list)
    status_port: int | None = None
    workdir: Path | None = None
    #: test hook: delete this many workload keys straight in N2's engine once the migration completed
    tamper_n2: int = 0


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
    """N1, N2, their ZooKeeper namespaces, a DNS name, a proxy fleet and a workload."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.id = f"{time.strftime('%H%M%S')}{uuid.uuid4().hex[:4]}"
        self.app = f"demo_{self.id}"
        self.workdir = options.workdir or REPO_ROOT / ".cache" / "demo" / self.id
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.chroot = f"/nxnw-demo-{self.id}"
        self.dns_name = f"demo-{self.id}.{BIND_ZONE}"
        # One HTTP and one memcache port on both addresses, so the DNS name needs no port of its own.
        self.port = free_port(N1_ADDRESS, N2_ADDRESS)
        self.memcache_port = free_port(N1_ADDRESS, N2_ADDRESS)
        self.slots = [(N1_ADDRESS, self.port, self.memcache_port), (N2_ADDRESS, self.port, self.memcache_port)]
        self.plan_path = self.workdir / "plan.toml"
        self.history = History()
        self.memcached_n2 = MemcachedProcess(free_port(HOST), self.workdir / "memcached-n2.log")
        self.fleet = ProxyFleet(self.plan_path, self.workdir, self.slots)
        self.workload: Workload | None = None
        self.workload_stopped = False
        self.plan: Plan | None = None
        #: each slot's path to N1's ZooKeeper, when a fault will cut one (else the proxies connect directly)
        self.zk_partitions: list[Partition] = []

    def needed_services(self) -> list[str]:
        engines = {self.options.source, self.options.target}
        return ["memcached-n1", "zookeeper-n1", "zookeeper-n2", "bind",
                *sorted({s for e in engines for s in ENGINE_SERVICES[e]})]

    def plan_dict(self) -> dict[str, Any]:
        sqlite_dir = str(self.workdir)
        return {
            "name": f"demo-{self.id}",
            "apps": [self.app],
            "sync_paths": [f"/apps/{self.app}", layout.LOCKS],
            "status_port": self.options.status_port,
            "n1": {"engine": engine_url(self.options.source, "n1", sqlite_dir),
                   "zookeeper": f"{HOST}:{ZOOKEEPER['n1']}{self.chroot}",
                   "memcached": f"{HOST}:{MEMCACHED['n1']}",
                   "proxies": [f"http://{N1_ADDRESS}:{self.port}"]},
            "n2": {"engine": engine_url(self.options.target, "n2", sqlite_dir),
                   "zookeeper": f"{HOST}:{ZOOKEEPER['n2']}{self.chroot}",
                   "memcached": self.memcached_n2.address,
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
        await run_blocking(services.up, self.needed_services(), executor=io_executor())
        await self.memcached_n2.start()
        text = _toml(self.plan_dict())
        self.plan_path.write_text(text)
        self.plan = parse_plan(text, str(self.plan_path))
        if any(name == PartitionZookeeper.name for name, _ in self.options.faults):
            await self._partitionable_proxies()
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
        change = await run_blocking(provider.upsert, [record], executor=io_executor())
        await run_blocking(provider.wait_in_sync, change, 30, executor=io_executor())
        await self._seed()
        await self.fleet.start()

    async def _partitionable_proxies(self) -> None:
        """Each slot's proxies reach N1's ZooKeeper through a partition relay of their own
        (a plan file per slot naming it); the orchestrator and the checker connect directly."""
        plans = []
        for slot in range(len(self.slots)):
            partition = Partition((HOST, ZOOKEEPER["n1"]))
            self.zk_partitions.append(partition)
            port = await partition.start()
            plan = self.plan_dict()
            plan["n1"]["zookeeper"] = f"{HOST}:{port}{self.chroot}"
            path = self.workdir / f"plan-slot{slot}.toml"
            path.write_text(_toml(plan))
            plans.append(path)
        self.fleet.slot_plans = plans

    async def _seed(self) -> None:
        """N1's data before the migration, recorded in the history so the checker checks it too."""
        assert self.plan is not None
        n1 = open_engine(self.plan.n1.engine)
        await n1.open()
        try:
            value = b"s" * self.options.value_bytes
            base = time.time_ns() // 1000 - 10_000_000
            batch = [Entity(self.app, "Item", b"seed-%06d" % i, value, base + i * 16) for i in range(self.options.seed_entities)]
            for start in range(0, len(batch), 1000):
                await n1.apply(batch[start:start + 1000])
            for entity in batch:
                self.history.seed(entity.key.decode(), entity.value, entity.ts)
        finally:
            await n1.close()

    def endpoints(self, cid: int) -> list[Endpoint]:
        """A client's endpoints: the DNS name first, then each instance's address to fail over to.

        After the hand-off the name and the second endpoint both name N2's instance, so a
        client whose instance died there still has N1's address to go to.
        """
        return [Endpoint(port=self.port, address=N1_ADDRESS, dns_server=f"{HOST}:{BIND_DNS}", dns_name=self.dns_name,
                         ttl=self.options.ttl, memcache_port=self.memcache_port),
                Endpoint(port=self.port, address=N2_ADDRESS, memcache_port=self.memcache_port),
                Endpoint(port=self.port, address=N1_ADDRESS, memcache_port=self.memcache_port)]

    def start_workload(self) -> None:
        self.workload = Workload(self.app, self.endpoints, clients=self.options.clients, keys=self.options.keys,
                                 history=self.history)
        self.workload.start()

    def set_client_timeout(self, seconds: float | None) -> None:
        """The clients' timeout for requests they start from now on (None: their default)."""
        assert self.workload is not None
        self.workload.set_client_timeout(seconds)

    def busiest_slot(self) -> int:
        """The slot whose address most of the last requests reached."""
        assert self.workload is not None
        recent = Counter(address for _, address in self.workload.stats.reached[-400:])
        hosts = [host for host, _, _ in self.slots]
        return max(range(len(hosts)), key=lambda i: recent.get(hosts[i], 0))

    async def final_state(self, side: str = "n2") -> dict[str, tuple[bytes, int] | None]:
        """What N2 (or N1) holds for every key of the app (None for a tombstone)."""
        assert self.plan is not None
        engine = open_engine(getattr(self.plan, side).engine)
        await engine.open()
        state: dict[str, tuple[bytes, int] | None] = {}
        try:
            for key_range in await engine.ranges(self.app):
                async for page in engine.scan(self.app, key_range, tombstones=True):
                    for e in page:
                        state[e.key.decode()] = None if e.value is None else (e.value, e.ts)
        finally:
            await engine.close()
        return state

    async def final_verify(self) -> str | None:
        """None when N1 and N2 hold the same app, else verify's summary."""
        assert self.plan is not None
        n1, n2 = open_engine(self.plan.n1.engine), open_engine(self.plan.n2.engine)
        await n1.open()
        await n2.open()
        try:
            report = await verify_app(n1, n2, self.app)
            return None if report.identical else report.summary()
        finally:
            await n1.close()
            await n2.close()

    async def tamper_n2(self, count: int) -> list[str]:
        """Delete ``count`` workload keys straight in N2's engine, just above their timestamp."""
        assert self.plan is not None
        state = await self.final_state()
        keys = sorted(k for k, v in state.items() if k.startswith("key-") and v is not None)[:count]
        n2 = open_engine(self.plan.n2.engine)
        await n2.open()
        try:
            await n2.apply([Entity(self.app, "Item", k.encode(), None, state[k][1] + 1) for k in keys])  # type: ignore[index]
        finally:
            await n2.close()
        return keys

    async def stop_workload(self) -> None:
        if self.workload is not None and not self.workload_stopped:
            self.workload_stopped = True
            await self.workload.stop()

    async def cleanup(self) -> None:
        await self.stop_workload()
        for partition in self.zk_partitions:
            partition.heal()  # a proxy's clean stop needs its ZooKeeper
        await self.fleet.stop()
        await self.memcached_n2.stop()
        for partition in self.zk_partitions:
            await partition.close()


class MigrationStuck(RuntimeError):
    """The orchestrator failed again after every resume; the message has its last words."""


class MigrationDriver:
    """Runs ``nxnw migrate`` as a child, phase segment by phase segment, injecting faults.

    For each phase with faults the child runs ``--until`` that phase. A fault that acts on
    the orchestrator's own work (``Fault.while_running``) is injected the moment the
    migration reaches the phase (in ``cow`` and ``proxy``: once the mode moved, before the
    task is recorded); the others once the phase's tasks are done, so each
    starts while the migration is in its phase and goes on while the migration moves on
    (a paused proxy misses the next mode switch, an outage meets the next phase's work).
    A child that fails is resumed once the faults in progress have undone their harm.
    """

    def __init__(self, env: DemoEnvironment, faults: list[tuple[Fault, str]]) -> None:
        self.env = env
        self.faults = faults
        self.child: subprocess.Popen | None = None
        self.killed = False
        self.resumes = 0
        self.kills = 0
        self.log_path = env.workdir / "orchestrator.log"
        self.zk: KazooClient | None = None
        self.injections: list[asyncio.Task] = []
        self.fault_errors: list[str] = []

    def stop(self) -> None:
        """Kill an orchestrator child still running (the demo was interrupted)."""
        if self.child is not None and self.child.poll() is None:
            os.killpg(self.child.pid, signal.SIGKILL)
            self.child.wait()

    def _start(self, until: str | None) -> None:
        argv = [sys.executable, "-m", "nxnw.cli", "migrate", str(self.env.plan_path),
                "--report", str(self.env.workdir / "report.html")]
        if until is not None:
            argv += ["--until", until]
        if self.env.options.status_port is not None:
            argv += ["--status-port", str(self.env.options.status_port)]
        with open(self.log_path, "ab") as log:
            self.child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.killed = False

    async def kill_orchestrator(self) -> str:
        if self.child is None or self.child.poll() is not None:
            return "the orchestrator had already finished the phase; nothing to kill"
        self.killed = True
        os.killpg(self.child.pid, signal.SIGKILL)
        self.kills += 1
        await run_blocking(self.child.wait, executor=io_executor())
        return f"killed the orchestrator (pid {self.child.pid}) with SIGKILL; it is started again"

    def target(self) -> FaultTarget:
        env = self.env
        assert env.plan is not None and env.workload is not None
        return FaultTarget(fleet=env.fleet, memcached_n2=env.memcached_n2, source=env.options.source,
                           target=env.options.target, n1_zookeeper=env.plan.n1.zookeeper,
                           n2_engine_url=env.plan.n2.engine, busiest_slot=env.busiest_slot,
                           set_client_timeout=env.set_client_timeout,
                           kill_orchestrator=self.kill_orchestrator, say=lambda line: print(line, flush=True),
                           zk_partitions=env.zk_partitions)

    async def _inject(self, fault: Fault, phase: str) -> None:
        try:
            await fault.inject(self.target(), phase)
        except Exception as exc:
            self.fault_errors.append(f"fault {fault.name} in {phase} could not be injected: {exc}")
            print(self.fault_errors[-1], flush=True)

    def _start_faults(self, faults: list[Fault], phase: str) -> list[asyncio.Task]:
        started = [asyncio.create_task(self._inject(fault, phase)) for fault in faults]
        self.injections += started
        return started

    async def run(self) -> None:
        assert self.env.plan is not None
        async with zk_session(self.env.plan.n1.zookeeper, "N1's") as zk:
            self.zk = zk
            try:
                for phase in FAULT_PHASES:
                    at_phase = [fault for fault, p in self.faults if p == phase]
                    if at_phase:
                        await self._segment(phase, [f for f in at_phase if f.while_running])
                        self._start_faults([f for f in at_phase if not f.while_running], phase)
                await self._segment(None, [])
            finally:
                await asyncio.gather(*self.injections)  # every fault undoes its harm before the checks

    async def _segment(self, until: str | None, while_running: list[Fault]) -> None:
        """Run the migration to the end of ``until`` (or to the end), resuming it when it fails."""
        self._start(until)
        if while_running:
            assert until is not None
            while not await self._reached(until):
                assert self.child is not None
                code = self.child.poll()
                if code == 0:
                    raise MigrationStuck(f"nxnw migrate --until {until} exited 0 before the migration reached {until}")
                if code is not None:
                    await self._after_exit(until)
                await asyncio.sleep(0.02)
            await asyncio.gather(*self._start_faults(while_running, until))
        while True:
            assert self.child is not None
            code = await run_blocking(self.child.wait, executor=io_executor())
            if code == 0:
                return
            await self._after_exit(until)

    async def _reached(self, phase: str) -> bool:
        """Whether the migration is in ``phase`` (or past it). In a phase that moves the mode
        (``cow``, ``proxy``) the mode must have moved too: between moving the mode and
        recording the task is where killing the orchestrator hurts most, as a resume must
        then recognise the switch as its own."""
        assert self.zk is not None
        assert self.env.plan is not None
        state = await run_blocking(MigrationStateStore(self.zk, path=layout.state(self.env.plan.name)).get)
        if state is None or state.phase not in PHASES or PHASES.index(state.phase) < PHASES.index(phase):
            return False
        if state.phase != phase or phase not in MODE_PHASES:
            return True
        mode = await run_blocking(read_mode, self.zk, path=layout.mode(self.env.plan.name))
        return mode is not None and mode.mode == phase

    async def _after_exit(self, until: str | None) -> None:
        """The child exited non-zero: start it again (killed by a fault) or resume it (failed)."""
        assert self.child is not None
        if self.killed:
            self._start(until)
            return
        lines = log_tail(self.log_path, 3).strip().splitlines()
        reason = f"orchestrator exited {self.child.returncode}: {lines[-1] if lines else 'no output'}"
        if self.resumes == MAX_RESUMES:
            raise MigrationStuck(f"{reason} (after {MAX_RESUMES} resumes; log {self.log_path})")
        self.resumes += 1
        print(f"{reason}; resuming it once the faults in progress are undone ({self.resumes}/{MAX_RESUMES})", flush=True)
        await asyncio.gather(*self.injections)  # a fault still doing harm would fail the resume too
        self._start(until)


def dns_switched_at(tasks: dict[str, dict[str, Any]]) -> float | None:
    """When the DNS switch began (unix seconds): the first ``switch`` step of the hand-off's
    timeline, which the orchestrator persists (the ``_dns`` record) before each DNS write.

    Not the ``handoff`` task's ``switched_at``: an orchestrator killed after the switch and
    resumed writes the record set again and records when *that* run began, after the
    clients had moved, which made the switch-over 0 s. Steps before the last rollback
    belong to an abandoned hand-off, and a step that failed changed nothing. The task's
    figure is the answer only when no timeline was kept; None when the name was never
    switched."""
    steps = (tasks.get("_dns") or {}).get("steps") or []
    rolled_back = max((i for i, step in enumerate(steps) if step.get("verb") == "rollback"), default=-1)
    starts = [step["started_at"] for step in steps[rolled_back + 1:]
              if step.get("verb") == "switch" and step.get("outcome") != "failed"]
    return starts[0] if starts else (tasks.get("handoff") or {}).get("switched_at")


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


def _faults(options: DemoOptions) -> list[tuple[Fault, str]]:
    chosen = [parse_fault(name, phase) for name, phase in options.faults]
    for fault, phase in chosen:
        reason = fault.applies(options.source, options.target)
        if reason is not None:
            raise ValueError(f"fault {fault.name} does not apply to {options.source} -> {options.target}: {reason}")
    return chosen


async def run_demo(options: DemoOptions) -> tuple[dict[str, Any], bool]:
    faults = _faults(options)
    env = DemoEnvironment(options)
    driver: MigrationDriver | None = None
    print(f"demo {env.id}: {options.source} N1 -> {options.target} N2, app {env.app}, work dir {env.workdir}", flush=True)
    for fault, phase in faults:
        print(f"fault {fault.name} in {phase}: {fault.summary}", flush=True)
    try:
        await env.setup()
        print(f"N1 seeded with {options.seed_entities} entities; proxies "
              f"{', '.join(f'{p.instance} on {p.url}' for p in env.fleet.current)}; clients resolve {env.dns_name} "
              f"on {HOST}:{BIND_DNS}", flush=True)
        env.start_workload()
        await asyncio.sleep(options.settle_seconds)
        started = time.monotonic()
        driver = MigrationDriver(env, faults)
        stuck: str | None = None
        try:
            await driver.run()
        except MigrationStuck as exc:
            stuck = str(exc)
            print(f"migration stuck: {stuck}", flush=True)
        migration_seconds = time.monotonic() - started
        await asyncio.sleep(options.ttl + 2.0)
        assert env.workload is not None and env.plan is not None
        await env.stop_workload()
        async with zk_session(env.plan.n1.zookeeper, "N1's") as zk:
            state = await run_blocking(MigrationStateStore(zk, path=layout.state(env.plan.name)).get)
            tasks = await run_blocking(TaskRecordStore(zk, root=layout.checkpoints(env.plan.name)).list,
                                       f"{env.plan.name}._tasks")
            mode = await run_blocking(read_mode, zk, path=layout.mode(env.plan.name))
        final_phase = None if state is None else state.phase
        if options.tamper_n2:
            keys = await env.tamper_n2(options.tamper_n2)
            print(f"tampered with N2 behind the proxies' back: deleted {', '.join(keys)}", flush=True)
        # The side that serves reads: N2 in the proxy mode, N1 before it (or after a rollback).
        serving = "n2" if mode is not None and mode.mode == "proxy" else "n1"
        # Cache hits during a mode switch are not judged: instances may then serve the cache
        # from different sides (see nxnw/history.py). Task times are wall-clock; ops are monotonic.
        to_monotonic = time.monotonic() - time.time()
        switches = [(tasks[name]["started"] + to_monotonic, tasks[name]["finished"] + to_monotonic)
                    for name in ("cow", "proxy") if "started" in tasks.get(name, {})]
        # The proxies run with the default skew bound; two of them may disagree by twice it.
        report = check(env.history, await env.final_state(serving), cache_unchecked=switches,
                       clock_bound=2 * DEFAULT_MAX_OFFSET_MS / 1000)
        differs = await env.final_verify()
        switched_at = dns_switched_at(tasks) or time.time()
        load = tasks.get(f"snapshot+load:{env.app}", {})
        p99, p100 = _switch_over(env.workload.stats.reached, switched_at)
        figures: dict[str, Any] = {
            **_checker_figures(report),
            "final verify": "identical" if differs is None else differs,
            "failed requests": env.workload.stats.failed,
            "switch-over 99% (seconds)": None if p99 is None else round(p99, 2),
            "switch-over (seconds)": None if p100 is None else round(p100, 2),
            "dns ttl (seconds)": options.ttl,
            "N2 cache hit ratio after cutover": _ratio(env.workload.stats.cache_hit_ratio(
                N2_ADDRESS, switched_at, options.ttl + 5.0)),
            "load rate (entities/s)": load.get("rate"),
            "entities loaded": load.get("entities"),
            "migration (seconds)": round(migration_seconds, 1),
            "faults": ", ".join(f"{f.name} in {p}" for f, p in faults) or "none",
            "faults not injected": "; ".join(driver.fault_errors) or "none",
            "orchestrator kills": driver.kills,
            "orchestrator resumes after failure": driver.resumes,
            "proxy instances": len(env.fleet.current) + len(env.fleet.retired),
            "final phase": final_phase,
            "checked side": serving.upper(),
            "migration stuck": stuck or "no",
        }
        ok = report.ok and differs is None and final_phase == "complete" and not driver.fault_errors
        env.history.save(env.workdir / "history.jsonl")
        if not ok:
            print(report.summary(), flush=True)
        return figures, ok
    finally:
        if driver is not None:
            driver.stop()
        await env.cleanup()


def _checker_figures(report: Report) -> dict[str, int]:
    counts = report.counts()
    return {name.replace("_", " "): value for name, value in counts.items()}
