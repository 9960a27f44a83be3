"""Snapshot load and verify in process vs on Dask with 1 and 2 workers, and what Dask adds per range.

One run, side by side, on the same seeded app (1 KB incompressible values, SQLite N1 →
Cassandra N2, ZooKeeper checkpoints on as in the orchestrator):

* **in process** — ``snapshot.copy_app`` and ``snapshot.verify_app`` with the plan's
  default range and worker counts (the path used without a scheduler);
* **Dask, 1 worker / 2 workers** — ``nxnw.dask_ranges.copy_app_distributed`` and
  ``verify_app_distributed`` on a local ``dask scheduler`` and ``dask worker`` processes
  (``--nthreads 2 --nworkers 1``) that this benchmark starts and stops itself. The
  workers are warmed first (one small copy opens their engine and ZooKeeper
  connections), as the in-process engines are open before its clock starts. Each load
  starts from an N2 table that exists and is empty.
* **per-range overhead** — (a) a no-op Dask task: its round trip one at a time (p50) and
  the rate of many submitted at once; (b) a copy of an app with no rows over
  ``--empty-ranges`` ranges, in process and on Dask: the difference per range is what
  Dask adds to each range of a real copy (scheduling, a task result, the worker's
  checkpoint read and attempt record in ZooKeeper).

On this 2-core machine the workers, the client, Cassandra and HBase share the cores, so
two workers cannot be faster than one here; the point is the ratio and the per-range
cost, from which ``bench/README.md`` models N worker machines. Nothing is asserted.

Run: ``.venv/bin/python -m bench.dask_scale [--count 100000] [--ranges 32] [--empty-ranges 64] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._util import machine, median, write_json

KIND = "E"
VALUE_BYTES = 1024
START_SECONDS = 180


class LocalDask:
    """A ``dask scheduler`` and ``dask worker`` processes on loopback, each its own process group."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.dask = str(Path(sys.executable).with_name("dask"))
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.work / f"{name}.log", "ab")
        proc = subprocess.Popen([self.dask, *argv], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=Path(__file__).resolve().parent.parent)
        self.procs.append(proc)
        return proc

    def start_scheduler(self) -> None:
        info = self.work / "scheduler.json"
        proc = self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                         "--scheduler-file", str(info)])
        deadline = time.monotonic() + START_SECONDS
        while not info.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not info.exists():
            raise RuntimeError(f"dask scheduler did not start; see {self.work / 'scheduler.log'}")
        self.address = json.loads(info.read_text())["address"]

    async def add_worker(self, name: str, total: int) -> None:
        from distributed import Client

        self._spawn(name, ["worker", self.address, "--name", name, "--host", "127.0.0.1", "--nthreads", "2",
                           "--nworkers", "1", "--no-dashboard"])
        async with Client(self.address, asynchronous=True, timeout=30, set_as_default=False) as client:
            await client.wait_for_workers(total, timeout=START_SECONDS)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _noop(i: int) -> int:
    return i


async def task_overhead(address: str, one_by_one: int = 50, at_once: int = 500) -> dict[str, float]:
    """A no-op task's round trip (p50, one at a time) and no-op tasks/s when many are submitted at once."""
    from distributed import Client

    async with Client(address, asynchronous=True, timeout=30, set_as_default=False) as client:
        trips = []
        for i in range(one_by_one):
            started = time.perf_counter()
            await client.submit(_noop, i, pure=False)
            trips.append(time.perf_counter() - started)
        started = time.perf_counter()
        await client.gather(client.map(_noop, range(at_once), pure=False))
        seconds = time.perf_counter() - started
    return {"round_trip_ms": median(trips) * 1000, "tasks_per_s": at_once / seconds}


async def seed(n1, app: str, count: int) -> None:
    from datastore import Entity

    base = time.time_ns() // 1000 - 3_600_000_000
    for start in range(0, count, 1000):
        await n1.apply([Entity(app, KIND, b"key-%08d" % i, os.urandom(VALUE_BYTES), base + i * 16)
                        for i in range(start, min(count, start + 1000))])


class Runs:
    """The timed runs on one seeded app; every load starts from an existing, empty N2 table."""

    def __init__(self, n1, n2, app: str, zookeeper: str, ranges: int) -> None:
        from datastore import Entity

        self.n1, self.n2, self.app, self.zookeeper, self.ranges = n1, n2, app, zookeeper, ranges
        self.warm = Entity(app, KIND, b"~warm", b"w", 1)  # N1 holds it too: verify stays identical

    async def _fresh_target(self) -> None:
        await self.n2.drop_app(self.app)
        await self.n2.apply([self.warm])

    async def in_process(self) -> dict[str, Any]:
        from nxnw.config import Thresholds
        from snapshot import copy_app, verify_app

        th = Thresholds()
        await self._fresh_target()
        task = f"bench-dask-{uuid.uuid4().hex[:8]}"
        async with _checkpoints(self.zookeeper, task) as checkpoints:
            started = time.perf_counter()
            stats = await copy_app(self.n1, self.n2, self.app, task=task, checkpoints=checkpoints, at_least=self.ranges,
                                   export_workers=th.export_workers, load_workers=th.load_workers)
            load = time.perf_counter() - started
        started = time.perf_counter()
        report = await verify_app(self.n1, self.n2, self.app)
        verify = time.perf_counter() - started
        return _figures(stats, load, report, verify)

    async def on_dask(self, address: str) -> dict[str, Any]:
        from nxnw.dask_ranges import copy_app_distributed, verify_app_distributed

        await self._fresh_target()
        task = f"bench-dask-{uuid.uuid4().hex[:8]}"
        async with _checkpoints(self.zookeeper, task):
            started = time.perf_counter()
            stats = await copy_app_distributed(address, self.n1, self.n2, self.app, task=task, zookeeper=self.zookeeper,
                                               at_least=self.ranges)
            load = time.perf_counter() - started
        started = time.perf_counter()
        report = await verify_app_distributed(address, self.n1, self.n2, self.app, ranges=self.ranges)
        verify = time.perf_counter() - started
        return _figures(stats, load, report, verify)


def _figures(stats, load: float, report, verify: float) -> dict[str, Any]:
    return {"entities": stats.entities, "ranges": stats.ranges_total, "load_s": load, "load_rate": stats.entities / load,
            "verify_s": verify, "verify_rate": report.n1.count / verify, "identical": report.identical}


class _checkpoints:
    """N1's ZooKeeper checkpoints of one task, cleared afterwards."""

    def __init__(self, hosts: str, task: str) -> None:
        self.hosts, self.task = hosts, task

    async def __aenter__(self):
        from nxnw.checkpoints import ZooKeeperRangeCheckpoints
        from nxnw.zk import start_zk
        from sync.state import TaskRecordStore

        self.zk = await start_zk(self.hosts, "N1's")
        self.store = ZooKeeperRangeCheckpoints(TaskRecordStore(self.zk))
        return self.store

    async def __aexit__(self, *exc: object) -> None:
        from nxnw.zk import stop_zk

        await self.store.clear(self.task)
        await stop_zk(self.zk)


async def empty_copy(runs: Runs, address: str | None, app: str, ranges: int) -> float:
    """Seconds to copy an app with no rows over ``ranges`` ranges (in process when ``address`` is None)."""
    from nxnw.dask_ranges import copy_app_distributed
    from snapshot import copy_app

    task = f"bench-empty-{uuid.uuid4().hex[:8]}"
    async with _checkpoints(runs.zookeeper, task) as checkpoints:
        started = time.perf_counter()
        if address is None:
            await copy_app(runs.n1, runs.n2, app, task=task, checkpoints=checkpoints, at_least=ranges)
        else:
            await copy_app_distributed(address, runs.n1, runs.n2, app, task=task, zookeeper=runs.zookeeper,
                                               at_least=ranges)
        return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from nxnw import services

    services.up(["cassandra", "zookeeper-n1"])
    with tempfile.TemporaryDirectory(prefix="nxnw-bench-dask-") as tmp:
        return await _run(args, Path(tmp))


async def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from datastore import open_engine
    from nxnw.services.endpoints import HOST, ZOOKEEPER, engine_url

    zookeeper = f"{HOST}:{ZOOKEEPER['n1']}"
    app, empty = f"bench_dask_{uuid.uuid4().hex[:8]}", f"bench_empty_{uuid.uuid4().hex[:8]}"
    n1 = open_engine(engine_url("sqlite", "n1", str(work)))
    n2 = open_engine(engine_url("cassandra", "n2", str(work)))
    await n1.open()
    await n2.open()
    cluster = LocalDask(work)
    out: dict[str, Any] = {"count": args.count, "value_bytes": VALUE_BYTES, "ranges": args.ranges,
                           "empty_ranges": args.empty_ranges, "machine": machine()}
    try:
        print(f"seeding {args.count:,} entities of {VALUE_BYTES} B on SQLite N1 …", flush=True)
        await seed(n1, app, args.count)
        runs = Runs(n1, n2, app, zookeeper, args.ranges)
        await n1.apply([runs.warm])
        out["in process"] = await runs.in_process()
        _print_row("in process", out["in process"])

        cluster.start_scheduler()
        await cluster.add_worker("w1", 1)
        await empty_copy(runs, cluster.address, empty, 4)  # warm: the worker opens its connections
        out["dask, 1 worker"] = await runs.on_dask(cluster.address)
        _print_row("dask, 1 worker", out["dask, 1 worker"])
        await cluster.add_worker("w2", 2)
        await empty_copy(runs, cluster.address, empty, 8)
        out["dask, 2 workers"] = await runs.on_dask(cluster.address)
        _print_row("dask, 2 workers", out["dask, 2 workers"])

        out["no-op task"] = await task_overhead(cluster.address)
        in_process = median([await empty_copy(runs, None, empty, args.empty_ranges) for _ in range(3)])
        on_dask = median([await empty_copy(runs, cluster.address, empty, args.empty_ranges) for _ in range(3)])
        out["empty copy"] = {"in_process_s": in_process, "dask_s": on_dask,
                             "added_per_range_ms": (on_dask - in_process) / args.empty_ranges * 1000}
    finally:
        cluster.stop()
        for engine, name in ((n2, app), (n2, empty)):
            await engine.drop_app(name)
        await n1.close()
        await n2.close()
    _print_summary(out)
    return out


def _print_row(name: str, r: dict[str, Any]) -> None:
    print(f"{name:<16} load {r['entities']:>9,} entities in {r['load_s']:6.2f} s = {r['load_rate']:>8,.0f}/s   "
          f"verify {r['verify_s']:6.2f} s = {r['verify_rate']:>8,.0f}/s   {'identical' if r['identical'] else 'DIFFER'}",
          flush=True)


def _print_summary(out: dict[str, Any]) -> None:
    base = out["in process"]
    print(f"\n=== snapshot on Dask, {out['count']:,} × 1 KB, SQLite → Cassandra, {out['ranges']} ranges ({out['machine']})")
    print("| path | load/s | × in process | verify/s | × in process |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in ("in process", "dask, 1 worker", "dask, 2 workers"):
        r = out[name]
        print(f"| {name} | {r['load_rate']:,.0f} | {r['load_rate'] / base['load_rate']:.2f} | "
              f"{r['verify_rate']:,.0f} | {r['verify_rate'] / base['verify_rate']:.2f} |")
    noop, empty = out["no-op task"], out["empty copy"]
    print(f"\nno-op Dask task: round trip p50 {noop['round_trip_ms']:.1f} ms; {noop['tasks_per_s']:,.0f} tasks/s "
          "submitted at once")
    print(f"copy of an empty app over {out['empty_ranges']} ranges: in process {empty['in_process_s']:.2f} s, "
          f"Dask {empty['dask_s']:.2f} s (median of 3): Dask adds {empty['added_per_range_ms']:.1f} ms per range")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dask_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="1 KB entities to seed (default 100,000)")
    parser.add_argument("--ranges", type=int, default=32, help="ranges per copy and per verify side (default 32)")
    parser.add_argument("--empty-ranges", type=int, default=64, help="ranges of the empty-app copy (default 64)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    write_json(args.json, asyncio.run(run(args)))


if __name__ == "__main__":
    main()
