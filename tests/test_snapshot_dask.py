"""Snapshot copy and verify with their ranges run as Dask tasks, on a real local cluster.

The cluster is this module's own processes, separate from pytest: ``dask scheduler`` and
two ``dask worker`` processes (each a nanny and its worker, in a process group of its
own so that kill -9 takes both), on loopback ports the scheduler picks itself. A worker
killed by a test is started again before the next test.
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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from distributed import Client
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from pydantic import SecretStr

from datastore import Engine, Entity, EntityRef, open_engine
from nxnw.config import PlanError, parse_plan
from nxnw.dask_ranges import RangeCopied, SchedulerUnavailable, copy_app_distributed, verify_app_distributed
from nxnw.orchestrator import Orchestrator
from nxnw.services.endpoints import HOST, ZOOKEEPER, engine_url
from snapshot import verify_app
from sync import layout
from sync.state import TaskRecordStore
from sync.zk_client import ZooKeeperSecurity, zk_client
from tests.conftest import require
from tests.proxy_harness import zk_chroot
from tests.test_config import readme_plan

DASK = str(Path(sys.executable).with_name("dask"))
ENTITIES = 50_000
START_SECONDS = 180


@dataclass
class DaskCluster:
    """A scheduler and named workers, each a subprocess in its own process group."""

    workdir: Path
    address: str = ""
    scheduler: subprocess.Popen | None = None
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)

    def start_scheduler(self) -> None:
        info = self.workdir / "scheduler.json"
        self.scheduler = self._spawn("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--no-dashboard", "--scheduler-file", str(info)])
        deadline = time.monotonic() + START_SECONDS
        while not info.exists() and self.scheduler.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert info.exists(), f"dask scheduler did not start; see {self.workdir / 'scheduler.log'}"
        self.address = json.loads(info.read_text())["address"]

    def start_worker(self, name: str) -> None:
        self.workers[name] = self._spawn(name, [DASK, "worker", self.address, "--name", name, "--host", "127.0.0.1",
                                                "--nthreads", "2", "--nworkers", "1", "--no-dashboard"])

    def kill(self, name: str) -> None:
        """kill -9 the worker's whole process group (nanny and worker)."""
        proc = self.workers[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    async def addresses(self) -> dict[str, str]:
        """Worker name -> worker address, as the scheduler knows them now."""
        async with Client(self.address, asynchronous=True, timeout=30, set_as_default=False) as client:
            info = await client.scheduler.identity(n_workers=-1)
            return {w["name"]: addr for addr, w in info["workers"].items()}

    async def ensure_workers(self, names: tuple[str, ...] = ("w1", "w2")) -> None:
        for name in names:
            if name not in self.workers or self.workers[name].poll() is not None:
                self.start_worker(name)
        async with Client(self.address, asynchronous=True, timeout=30, set_as_default=False) as client:
            await client.wait_for_workers(len(names), timeout=START_SECONDS)

    def stop(self) -> None:
        procs = [*self.workers.values(), self.scheduler]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def dask_cluster_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    cluster.start_scheduler()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def dask_cluster(dask_cluster_processes: DaskCluster) -> DaskCluster:
    """The module's cluster with both workers alive (one a test killed is started again)."""
    await dask_cluster_processes.ensure_workers()
    return dask_cluster_processes


@pytest.fixture
async def open_pair(sqlite_dir: str, app_name: str) -> AsyncIterator[Callable[[str, str], Awaitable[tuple[Engine, Engine]]]]:
    """``await open_pair("sqlite", "cassandra")`` -> N1 and N2, open; the app dropped from both after."""
    opened: list[Engine] = []

    async def open_(first: str, second: str) -> tuple[Engine, Engine]:
        require(*{"cassandra", "hbase"} & {first, second})
        for name, deployment in ((first, "n1"), (second, "n2")):
            engine = open_engine(engine_url(name, deployment, sqlite_dir))
            await engine.open()
            opened.append(engine)
        return opened[-2], opened[-1]

    yield open_
    for engine in opened:
        await engine.drop_app(app_name)
        await engine.close()


def seed(app: str, count: int) -> list[Entity]:
    """``count`` 100-byte entities, every 97th of them deleted (a tombstone) later."""
    rows = [Entity(app, "K", b"k%06d" % i, b"%06d" % i + b"v" * 94, 1_000 + i) for i in range(count)]
    return [Entity(e.app, e.kind, e.key, None, 5_000_000) if i % 97 == 0 else e for i, e in enumerate(rows)]


async def apply_in_batches(engine: Engine, entities: list[Entity], size: int = 2_000) -> None:
    for start in range(0, len(entities), size):
        await engine.apply(entities[start:start + size])


zk_namespace = partial(zk_chroot, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_killed_worker_loses_no_range_and_applies_none_twice(dask_cluster: DaskCluster, open_pair,
                                                                     app_name: str) -> None:
    require("zookeeper-n1")
    n1, n2 = await open_pair("sqlite", "cassandra")
    await apply_in_batches(n1, seed(app_name, ENTITIES))
    with zk_namespace() as (zk_hosts, zk):
        store = TaskRecordStore(zk)
        results: list[RangeCopied] = []
        copy = asyncio.create_task(copy_app_distributed(dask_cluster.address, n1, n2, app_name, task="dask", zookeeper=zk_hosts,
                                                        at_least=48, on_range=results.append))
        try:
            victim, victim_address = await _worker_mid_range(dask_cluster, store, copy)
            dask_cluster.kill(victim)
            stats = await asyncio.wait_for(copy, 600)
        finally:
            copy.cancel()
            await asyncio.gather(copy, return_exceptions=True)

        docs = {rid: doc for rid, doc in store.list("dask").items() if rid != "_plan"}
        plan = store.get("dask", "_plan")["ranges"]
    assert sorted(docs) == sorted(rid for rid, _, _ in plan), "a range has no checkpoint"
    assert all(doc["done"] for doc in docs.values()), {rid: d for rid, d in docs.items() if not d["done"]}
    assert sum(doc["entities"] for doc in docs.values()) == ENTITIES
    for rid, doc in docs.items():
        assert doc["attempts"] == len(doc["workers"]), (rid, doc)
        # applied once, or once more after a first attempt on the killed worker
        assert doc["attempts"] == 1 or (doc["attempts"] == 2 and doc["workers"][0] == victim_address), (rid, doc)
    assert any(doc["attempts"] == 2 for doc in docs.values()), "no range was running on the killed worker"
    assert stats.ranges_done == stats.ranges_total == len(plan)
    assert stats.entities == ENTITIES, "a re-run range was counted twice (or a range not at all)"
    assert len(results) == len(plan)

    report = await verify_app_distributed(dask_cluster.address, n1, n2, app_name)
    assert report.identical, report.summary()
    assert report.n1.count == report.n2.count == ENTITIES


async def _worker_mid_range(cluster: DaskCluster, store: TaskRecordStore, copy: asyncio.Task) -> tuple[str, str]:
    """Name and address of a worker holding an unfinished range, once a few ranges are done."""
    names = {addr: name for name, addr in (await cluster.addresses()).items()}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert not copy.done(), f"the copy ended before a worker could be killed: {copy.result() if not copy.exception() else copy.exception()}"
        docs = {rid: doc for rid, doc in (await asyncio.to_thread(store.list, "dask")).items() if rid != "_plan"}
        running = [doc["workers"][-1] for doc in docs.values() if not doc["done"]]
        if sum(doc["done"] for doc in docs.values()) >= 3 and running:
            return names[running[0]], running[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no range finished within 300 s: {docs}")


async def test_cassandra_to_hbase_copies_and_verify_finds_and_repairs_what_differs(dask_cluster: DaskCluster, open_pair,
                                                                                     app_name: str) -> None:
    n1, n2 = await open_pair("cassandra", "hbase")
    await apply_in_batches(n1, seed(app_name, ENTITIES))
    progress = []
    stats = await copy_app_distributed(dask_cluster.address, n1, n2, app_name, task="dask", zookeeper=None,
                                       at_least=16, on_progress=lambda s: progress.append(s.entities))
    assert stats.entities == ENTITIES and stats.tombstones == len(range(0, ENTITIES, 97))
    assert progress and progress[-1] == ENTITIES and progress == sorted(progress)

    report = await verify_app_distributed(dask_cluster.address, n1, n2, app_name)
    assert report.identical, report.summary()
    assert report.n1.count == ENTITIES

    ref = lambda i: EntityRef(app_name, "K", b"k%06d" % i)  # noqa: E731
    await n1.put(Entity(app_name, "K", b"k000001", b"newer on N1", 9_000_000))
    await n2.put(Entity(app_name, "K", b"k000002", b"newer on N2", 9_000_000))
    await n2.put(Entity(app_name, "K", b"only-on-n2", b"x", 9_000_000))
    await n1.delete(ref(3), 9_000_000)
    await n1.delete(EntityRef(app_name, "K", b"deleted-on-n1-only"), 9_000_000)
    report = await verify_app_distributed(dask_cluster.address, n1, n2, app_name, repair=True)
    assert report.counts() == {"stale on N2": 2, "stale on N1": 1, "missing on N1": 1, "missing on N2": 1}, \
        report.summary()
    assert (report.n1.count, report.n2.count) == (ENTITIES + 1, ENTITIES + 1), "the checksums are the whole table's"
    assert report.repaired == 3 and (await n2.get(ref(1))).value == b"newer on N1"
    assert (await n2.read(ref(3))).value is None, "N1's delete reached N2"
    assert (await n2.read(EntityRef(app_name, "K", b"deleted-on-n1-only"))).value is None, "N1's tombstone reached N2"
    # what N1 never wrote is never copied to N1: both stay differences, with their reasons
    assert sorted(d.kind for d in report.remaining) == ["missing on N1", "stale on N1"], report.summary()
    in_process = await verify_app(n1, n2, app_name)
    assert sorted(d.row_key for d in in_process.remaining) == sorted(d.row_key for d in report.remaining)

    report = await verify_app_distributed(dask_cluster.address, n1, n2, app_name, repair=True, n2_primary=True)
    assert report.repaired == 1 and (await n1.get(ref(2))).value == b"newer on N2"
    assert [d.kind for d in report.remaining] == ["missing on N1"]
    assert set(report.reasons) == {d.label for d in report.remaining}, "a difference left alone says why"


async def test_a_scheduler_that_does_not_answer_is_one_line_error_before_any_write(open_pair, app_name: str) -> None:
    require("zookeeper-n1")
    n1, n2 = await open_pair("sqlite", "sqlite")
    await n1.apply(seed(app_name, 100))
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with zk_namespace() as (zk_hosts, zk):
        with pytest.raises(SchedulerUnavailable) as copy_error:
            await copy_app_distributed(nowhere, n1, n2, app_name, task="dask", zookeeper=zk_hosts)
        assert not zk.exists("/nxnw/migration/checkpoints"), "the copy wrote its plan before the scheduler answered"
    with pytest.raises(SchedulerUnavailable) as verify_error:
        await verify_app_distributed(nowhere, n1, n2, app_name, repair=True)
    for error in (copy_error.value, verify_error.value):
        assert nowhere in str(error) and "\n" not in str(error)
    assert app_name not in await n2.apps()


def test_a_plan_names_its_scheduler_in_scale_and_a_bad_address_is_refused_with_the_field() -> None:
    readme = readme_plan()
    assert parse_plan(readme).scale.scheduler == "tcp://10.0.2.5:8786", "the README's plan shows [scale]"
    text = readme[:readme.index("[scale]")]
    assert parse_plan(text).scale.scheduler is None, "without [scale] the ranges run in process"
    assert parse_plan(text + '\n[scale]\nscheduler = "tcp://10.0.0.9:8786"\n').scale.scheduler == "tcp://10.0.0.9:8786"
    with pytest.raises(PlanError, match=r"scale\.scheduler: '10\.0\.0\.9:8786' is not a Dask scheduler address"):
        parse_plan(text + '\n[scale]\nscheduler = "10.0.0.9:8786"\n', "plan.toml")


async def test_a_scheduler_without_workers_is_refused_before_any_write(open_pair, app_name: str) -> None:
    from distributed import Scheduler

    require("zookeeper-n1")
    n1, n2 = await open_pair("sqlite", "sqlite")
    await n1.apply(seed(app_name, 100))
    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as idle:
        with zk_namespace() as (zk_hosts, zk):
            with pytest.raises(SchedulerUnavailable, match="has no worker"):
                # bounded: without the check the copy would wait for a worker forever
                await asyncio.wait_for(copy_app_distributed(idle.address, n1, n2, app_name, task="dask",
                                                            zookeeper=zk_hosts), 120)
            assert not zk.exists("/nxnw/migration/checkpoints"), "the copy wrote its plan with no worker to run it"
    assert app_name not in await n2.apps()


def _orchestrator_for(plan_name: str, app: str, n1: Engine, n2: Engine, zk_hosts: str, zk,
                      scheduler: str | None, extra: str = "") -> Orchestrator:
    """An orchestrator of a plan whose N1 ZooKeeper is ``zk_hosts``, with or without [scale];
    ``extra`` is more of the plan's TOML."""
    text = (f'name = "{plan_name}"\napps = ["{app}"]\n\n'
            f'[n1]\nengine = "{n1.url}"\nzookeeper = "{zk_hosts}"\nmemcached = "127.0.0.1:1"\n\n'
            f'[n2]\nengine = "{n2.url}"\nzookeeper = "{HOST}:{ZOOKEEPER["n2"]}"\nmemcached = "127.0.0.1:2"\n\n'
            '[thresholds]\nranges_per_app = 8\n'
            + (f'\n[scale]\nscheduler = "{scheduler}"\n' if scheduler else "") + extra)
    return Orchestrator(parse_plan(text, "plan.toml"), zk, n1, n2)


async def test_the_dask_copy_keeps_its_checkpoints_under_the_plan_and_either_path_resumes_the_other(
        dask_cluster: DaskCluster, open_pair, app_name: str) -> None:
    require("zookeeper-n1")
    n1, n2 = await open_pair("sqlite", "sqlite")
    await apply_in_batches(n1, seed(app_name, 4_000))
    plan_name = "dask-plan"
    task = f"{plan_name}.{app_name}"
    with zk_namespace() as (zk_hosts, zk):
        plan_store = TaskRecordStore(zk, root=layout.checkpoints(plan_name))
        dask = _orchestrator_for(plan_name, app_name, n1, n2, zk_hosts, zk, dask_cluster.address)
        first = await dask._load(app_name)
        assert first["entities"] == 4_000 and first["ranges_resumed"] == 0
        done = {rid for rid, doc in plan_store.list(task).items() if rid != "_plan" and doc["done"]}
        assert len(done) == first["ranges"], "the Dask workers' checkpoints are not under the plan"
        assert not zk.exists(layout.SHARED_CHECKPOINTS), "a plan's Dask copy wrote to the shared root"

        in_process = _orchestrator_for(plan_name, app_name, n1, n2, zk_hosts, zk, None)
        assert (await in_process._load(app_name))["ranges_resumed"] == first["ranges"], \
            "the in-process copy did not resume the Dask copy's ranges"

        redo = sorted(done)[:2]
        for rid in redo:
            plan_store.clear(task, rid)
        assert (await in_process._load(app_name))["ranges_resumed"] == first["ranges"] - len(redo)
        assert (await dask._load(app_name))["ranges_resumed"] == first["ranges"], \
            "the Dask copy redid ranges the in-process copy had done"


async def test_a_plan_with_a_zookeeper_digest_loads_through_the_workers_and_its_checkpoints_carry_the_acl(
        dask_cluster: DaskCluster, open_pair, app_name: str) -> None:
    """N1's ZooKeeper with digest authentication, the plan's chroot readable by that identity
    alone: the workers (and the plan store of the process that submits them) opened their
    sessions without the plan's ``zookeeper_security`` and were refused (NoAuthError) on the
    plan's checkpoints, so a secured deployment could not load through Dask at all."""
    require("zookeeper-n1")
    n1, n2 = await open_pair("sqlite", "sqlite")
    await apply_in_batches(n1, seed(app_name, 2_000))
    security = ZooKeeperSecurity(digest_user=f"nxnw-{uuid.uuid4().hex[:6]}", digest_password=SecretStr(uuid.uuid4().hex))
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = zk_client(f"{HOST}:{ZOOKEEPER['n1']}", security, timeout=10)
    admin.start(15)
    admin.create(root)  # the digest identity's alone
    zk = zk_client(f"{HOST}:{ZOOKEEPER['n1']}{root}", security, timeout=10)
    zk.start(15)
    os.environ["NXNW_TEST_DASK_ZK_DIGEST"] = security.digest_password.get_secret_value()
    try:
        plan_name = "dask-digest"
        dask = _orchestrator_for(plan_name, app_name, n1, n2, f"{HOST}:{ZOOKEEPER['n1']}{root}", zk,
                                 dask_cluster.address,
                                 f'\n[n1.zookeeper_security]\ndigest_user = "{security.digest_user}"\n'
                                 'digest_password = { env = "NXNW_TEST_DASK_ZK_DIGEST" }\n')
        loaded = await asyncio.wait_for(dask._load(app_name), 300)
        assert loaded["entities"] == 2_000 and loaded["ranges_resumed"] == 0
        store = TaskRecordStore(zk, root=layout.checkpoints(plan_name))
        done = [rid for rid, doc in store.list(f"{plan_name}.{app_name}").items() if rid != "_plan" and doc["done"]]
        assert len(done) == loaded["ranges"], "a range's checkpoint is missing"
        plain = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}", timeout=10)
        plain.start(15)
        try:
            with pytest.raises(NoAuthError):
                plain.get_children(f"{root}{layout.checkpoints(plan_name)}")
        finally:
            plain.stop()
            plain.close()
        assert (await verify_app(n1, n2, app_name)).identical
    finally:
        del os.environ["NXNW_TEST_DASK_ZK_DIGEST"]
        zk.stop()
        zk.close()
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()
