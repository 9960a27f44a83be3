"""Snapshot copy and verify with their ranges run as Dask tasks on a ``distributed`` cluster.

The in-process path (``snapshot.copy_app``, ``snapshot.verify_app``) reads and writes
every range from one process; this module hands each range to a Dask worker instead, for
a datastore that outgrows one machine. Without a scheduler nothing here is used.

Client side (``copy_app_distributed``, ``verify_app_distributed``): connect to the
scheduler first — an address that does not answer, or a cluster with no worker, raises
``SchedulerUnavailable`` before anything is written anywhere — then plan the ranges,
submit one task per range, and fold each task's result into the ``LoadStats`` /
``VerifyReport`` the in-process path returns, so the CLI's progress bar, the
orchestrator and the status page read the same objects.

Worker side (one task = one range): the task gets engine URLs, ZooKeeper hosts, their
security settings and the checkpoints' root (a plan's ``layout.checkpoints(plan)``, the
same records as the in-process copy; the shared root only for ``nxnw snapshot``, which has
no plan), never open objects, and opens its own connections on the worker (kept for the worker's
lifetime, one set per process, on one event loop thread of ours: the engines are asyncio
code and must not run on the worker's own loop, whose heartbeats a long range would
stall). A copy task:

1. reads its range's checkpoint in N1's ZooKeeper; a range marked done is skipped;
2. records the attempt (``{"done": false, "attempts": n, "workers": [...]}``), so a lost
   worker's half-applied range is visible and counted;
3. streams the range with ``snapshot.export_chunks`` into a ``snapshot.Loader``, which
   marks the range done (with the same attempt count) after its last chunk is applied.

Why a retry can neither duplicate nor skip work: every entity is applied last-write-wins
by its own timestamp, tombstones included, so applying a range a second time — Dask's
retry after an error, or its re-run of the tasks a dead worker held — changes nothing;
and a range is marked done only after all of it is applied, so a range whose worker died
is never taken as done. A task Dask runs again after its range was marked done (the
worker died before reporting) finds the mark and applies nothing. The attempt count is a
read-then-write, not a compare-and-set: two attempts of one range at once (a worker the
scheduler wrongly declared dead) may count one attempt too few, and still load correctly.

Progress: each attempt sends its running totals as a Dask event (``Worker.log_event``,
at most every ``PROGRESS_SECONDS``); the client shows finished ranges plus the latest
totals of ranges in flight, and replaces a range's partial totals by its task's result
when it finishes, so a re-run range is never counted twice.

Verify: the workers do the scanning — per range, pass one's bucket sums and pass two's
entities in the differing buckets — and this process hands those entities, wrapped as an
engine view (``_DifferingBuckets``: scans from memory, reads and writes through to the
real engine), to ``snapshot.verify_app``. The second look, the repair rules (copy only
what N1 wrote) and the looks again are then verify_app's own, not a copy of them.

Must never: import an engine module (only URLs cross to the workers); write before the
scheduler has answered; mark a range done before its last chunk is applied.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kazoo.client import KazooClient

from datastore import Checksum, Engine, Entity, EntityRef, KeyRange, Row, open_engine
from nxnw.checkpoints import ZooKeeperRangeCheckpoints
from nxnw.zk import start_zk, stop_zk, zk_session
from snapshot import Difference, Loader, LoadStats, VerifyReport, export_chunks, verify_app
from snapshot.load import range_plan
from snapshot.verify import BUCKETS, SCAN_PAGE_ROWS, add_to_buckets, bucket_checksums, rows_in
from sync import layout
from sync.aio import run_blocking
from sync.state import TaskRecordStore
from sync.zk_client import ZooKeeperSecurity

T = TypeVar("T")

#: How long the client waits for the scheduler to answer, and then for a first worker.
CONNECT_SECONDS = 10.0
#: Dask re-runs a task that raised this many times before the copy fails with its error.
TASK_RETRIES = 2
#: A range attempt reports its running totals at most this often.
PROGRESS_SECONDS = 0.5
#: Batches of one range in flight at once on a worker.
RANGE_LOAD_WORKERS = 4
_DIGEST_MOD = 1 << 128


class SchedulerUnavailable(ConnectionError):
    """The Dask scheduler did not answer, or has no worker; nothing was changed."""


# --- what crosses between client and workers (pickled by Dask) ---------------------------


@dataclass(frozen=True)
class RangeCopy:
    """One range of one app to copy from ``source_url`` to ``target_url``."""

    source_url: str
    target_url: str
    app: str
    task: str
    range_id: str
    key_range: KeyRange
    zookeeper: str | None
    progress_topic: str
    load_workers: int = RANGE_LOAD_WORKERS
    #: where in ``zookeeper`` the task's checkpoints live (``TaskRecordStore``'s root)
    checkpoints_root: str = layout.SHARED_CHECKPOINTS
    #: how the worker's session authenticates (the plan's N1 ``zookeeper_security``): the
    #: digest password travels with the task, and TLS files must exist on the worker
    zookeeper_security: ZooKeeperSecurity | None = None


@dataclass(frozen=True)
class RangeCopied:
    """What one copy task did: applied the range (``applied``), or found it marked done by
    an earlier attempt of this run (a worker that died before reporting), whose entity
    count it then carries."""

    range_id: str
    applied: bool
    entities: int = 0
    tombstones: int = 0
    bytes: int = 0
    #: attempts recorded for this range so far, this one included (0 without checkpoints)
    attempts: int = 0
    worker: str = ""


@dataclass(frozen=True)
class RangeScan:
    """One range of one side (``url``) of an app, for verify."""

    url: str
    app: str
    key_range: KeyRange


# --- worker side --------------------------------------------------------------------------


class _WorkerRuntime:
    """One per worker process: an event loop thread, and the engines and ZooKeeper
    sessions its tasks opened, kept for the next task. A connection that fails is not
    dropped: the engines and kazoo reconnect by themselves, and another task of this
    worker may be using it; Dask's retry of the failed task uses it again."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="nxnw-dask-ranges", daemon=True).start()
        self._engines: dict[str, Engine] = {}
        self._zk: dict[tuple[str, ZooKeeperSecurity | None], KazooClient] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def engine(self, url: str) -> Engine:
        if url not in self._engines:
            engine = open_engine(url)
            await engine.open()
            if url in self._engines:  # another task of this worker opened it meanwhile
                await engine.close()
            else:
                self._engines[url] = engine
        return self._engines[url]

    async def checkpoints(self, hosts: str, security: ZooKeeperSecurity | None, root: str) -> TaskRecordStore:
        session = (hosts, security)
        if session not in self._zk:
            client = await start_zk(hosts, "the checkpoints'", security)
            if session in self._zk:
                await stop_zk(client)
            else:
                self._zk[session] = client
        return TaskRecordStore(self._zk[session], root=root)


_runtime: _WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def _worker_runtime() -> _WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _WorkerRuntime()
        return _runtime


class _AttemptCheckpoints(ZooKeeperRangeCheckpoints):
    """The loader's checkpoints for one attempt: the done mark keeps the attempt count."""

    def __init__(self, store: TaskRecordStore, attempt: dict[str, Any]) -> None:
        super().__init__(store)
        self.attempt = attempt

    async def mark_completed(self, task: str, range_id: str, entities: int) -> None:
        await run_blocking(self.store.put, task, range_id, {**self.attempt, "done": True, "entities": entities})


def _event_sender(topic: str, range_id: str) -> Callable[[LoadStats], None]:
    from distributed import get_worker

    worker = get_worker()  # in the task's thread: the loop thread is not a Dask task
    last = 0.0

    def send(stats: LoadStats) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            worker.log_event(topic, {"range": range_id, "entities": stats.entities, "tombstones": stats.tombstones,
                                     "bytes": stats.bytes})
    return send


async def _copy_range(spec: RangeCopy, worker: str, on_progress: Callable[[LoadStats], None]) -> RangeCopied:
    runtime = _worker_runtime()
    source, target = await runtime.engine(spec.source_url), await runtime.engine(spec.target_url)
    checkpoints = None
    attempts = 0
    if spec.zookeeper is not None:
        store = await runtime.checkpoints(spec.zookeeper, spec.zookeeper_security, spec.checkpoints_root)
        doc = await run_blocking(store.get, spec.task, spec.range_id) or {}
        if doc.get("done"):
            return RangeCopied(spec.range_id, applied=False, entities=int(doc.get("entities", 0)),
                               attempts=int(doc.get("attempts", 0)), worker=worker)
        attempts = int(doc.get("attempts", 0)) + 1
        attempt = {"done": False, "attempts": attempts, "workers": [*doc.get("workers", []), worker]}
        await run_blocking(store.put, spec.task, spec.range_id, attempt)
        checkpoints = _AttemptCheckpoints(store, attempt)
    loader = Loader(target, task=spec.task, checkpoints=checkpoints, workers=spec.load_workers, on_progress=on_progress)
    stats = await loader.load(export_chunks(source, spec.app, [(spec.range_id, spec.key_range)], workers=1))
    return RangeCopied(spec.range_id, applied=True, entities=stats.entities, tombstones=stats.tombstones,
                       bytes=stats.bytes, attempts=attempts, worker=worker)


def copy_range_task(spec: RangeCopy) -> RangeCopied:
    """The Dask task: copy one range (see the module docstring for why a re-run is safe)."""
    from distributed import get_worker

    send = _event_sender(spec.progress_topic, spec.range_id)
    return _worker_runtime().run(_copy_range(spec, get_worker().address, send))


async def _scan(spec: RangeScan, visit: Callable[[list[Row]], None]) -> None:
    engine = await _worker_runtime().engine(spec.url)
    async for page in engine.scan_rows(spec.app, spec.key_range, page_size=SCAN_PAGE_ROWS):
        visit(page)


def bucket_sums_task(spec: RangeScan) -> tuple[list[int], list[int]]:
    """The Dask task of verify's first pass: per hash bucket, the count and digest sum of one range."""
    counts = [0] * BUCKETS
    digests = [0] * BUCKETS
    _worker_runtime().run(_scan(spec, lambda page: add_to_buckets(spec.app, page, counts, digests)))
    return counts, [d % _DIGEST_MOD for d in digests]


def entities_in_task(spec: RangeScan, buckets: frozenset[int]) -> list[Entity]:
    """The Dask task of verify's second pass: one range's entities that fall in ``buckets``."""
    found: list[Row] = []
    _worker_runtime().run(_scan(spec, lambda page: found.extend(rows_in(page, buckets))))
    return [Entity.from_row(spec.app, *row) for row in found]


# --- client side --------------------------------------------------------------------------


@asynccontextmanager
async def dask_client(scheduler: str) -> AsyncIterator[Any]:
    """An asynchronous ``distributed.Client`` on a scheduler that answered and has a worker.

    Raises ``SchedulerUnavailable`` (one line, the address and the reason) otherwise.
    """
    from distributed import Client

    try:
        client = await Client(scheduler, asynchronous=True, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, asyncio.TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SchedulerUnavailable(f"Dask scheduler at {scheduler} did not answer within {CONNECT_SECONDS:g} s: "
                                   f"{reason}") from None
    try:
        try:
            await client.wait_for_workers(1, timeout=CONNECT_SECONDS)
        except (asyncio.TimeoutError, TimeoutError):
            raise SchedulerUnavailable(f"Dask scheduler at {scheduler} has no worker (waited {CONNECT_SECONDS:g} s)") from None
        yield client
    finally:
        await client.close()


async def check_scheduler(scheduler: str) -> None:
    """Raise ``SchedulerUnavailable`` unless ``scheduler`` answers and has a worker (a preflight)."""
    async with dask_client(scheduler):
        pass


def _task_key(kind: str, name: str) -> str:
    return f"nxnw-{kind}-{name}-{uuid.uuid4().hex[:8]}"


async def _results(client: Any, futures: Sequence[Any]) -> AsyncIterator[Any]:
    """Each future's result as it finishes; the future is released at once, so a worker
    lost later is not asked to recompute it. The first failure cancels the rest."""
    from distributed import as_completed

    try:
        async for future in as_completed(futures, loop=client.loop):
            result = await future
            future.release()
            yield result
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            await client.cancel(pending)


@dataclass
class _Progress:
    """Finished ranges plus the latest totals of the ranges in flight, as one ``LoadStats``."""

    stats: LoadStats
    finished: LoadStats = field(default_factory=LoadStats)
    in_flight: dict[str, dict[str, int]] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def _show(self) -> None:
        partial = self.in_flight.values()
        self.stats.entities = self.finished.entities + sum(p["entities"] for p in partial)
        self.stats.tombstones = self.finished.tombstones + sum(p["tombstones"] for p in partial)
        self.stats.bytes = self.finished.bytes + sum(p["bytes"] for p in partial)

    def event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1]
        if msg["range"] in self.done:
            return  # a late report from an attempt whose range has finished since
        self.in_flight[msg["range"]] = {k: int(msg[k]) for k in ("entities", "tombstones", "bytes")}
        self._show()

    def finish(self, result: RangeCopied) -> None:
        self.done.add(result.range_id)
        self.in_flight.pop(result.range_id, None)
        self.finished.entities += result.entities
        self.finished.tombstones += result.tombstones
        self.finished.bytes += result.bytes
        self.stats.ranges_done += 1
        self._show()


async def copy_app_distributed(scheduler: str, source: Engine, target: Engine, app: str, *, task: str,
                               zookeeper: str | None, checkpoints_root: str = layout.SHARED_CHECKPOINTS,
                               zookeeper_security: ZooKeeperSecurity | None = None, at_least: int = 16,
                               on_progress: Callable[[LoadStats], None] | None = None,
                               on_range: Callable[[RangeCopied], None] | None = None) -> LoadStats:
    """``snapshot.copy_app`` with each range a Dask task on ``scheduler``'s workers.

    ``source`` and ``target`` are this process's open engines: their URLs go to the
    workers, and ``source`` plans the ranges. With ``zookeeper`` (N1's hosts) the plan and
    each range's checkpoint live there under ``checkpoints_root``/``task``: a plan's
    migration passes its own root (``layout.checkpoints(plan)``), where the in-process
    copy keeps the same records, so either path resumes the other's run; the default, the
    shared root, is for ``nxnw snapshot``, which has no plan. ``zookeeper_security`` is how
    this process and every worker authenticate to it: a plan's checkpoints carry its digest
    ACL, which a worker's session without it is refused. ``on_range`` sees each range's
    result (which worker, how many attempts).
    """
    async with dask_client(scheduler) as client:
        async with _plan_store(zookeeper, zookeeper_security, checkpoints_root) as checkpoints:
            plan, done = await range_plan(source, app, task, checkpoints, at_least)
        stats = LoadStats(ranges_total=len(plan), ranges_skipped=len(done), ranges_done=len(done))
        progress = _Progress(stats)
        topic = _task_key("copy-progress", task)

        def event(e: tuple[float, dict[str, Any]]) -> None:
            progress.event(e)
            if on_progress is not None:
                on_progress(stats)

        client.subscribe_topic(topic, event)
        try:
            futures = [client.submit(copy_range_task, RangeCopy(source.url, target.url, app, task, rid, key_range,
                                                                zookeeper, topic, checkpoints_root=checkpoints_root,
                                                                zookeeper_security=zookeeper_security),
                                     key=_task_key("copy", rid), pure=False, retries=TASK_RETRIES)
                       for rid, key_range in plan if rid not in done]
            async for result in _results(client, futures):
                progress.finish(result)
                if on_range is not None:
                    on_range(result)
                if on_progress is not None:
                    on_progress(stats)
        finally:
            client.unsubscribe_topic(topic)
    return stats


@asynccontextmanager
async def _plan_store(zookeeper: str | None, security: ZooKeeperSecurity | None,
                      root: str) -> AsyncIterator[ZooKeeperRangeCheckpoints | None]:
    if zookeeper is None:
        yield None
        return
    async with zk_session(zookeeper, "N1's", security) as zk:
        yield ZooKeeperRangeCheckpoints(TaskRecordStore(zk, root=root))


def _sums(results: Sequence[tuple[list[int], list[int]]]) -> tuple[list[Checksum], Checksum]:
    return bucket_checksums([sum(r[0][b] for r in results) for b in range(BUCKETS)],
                            [sum(r[1][b] for r in results) for b in range(BUCKETS)])


async def _per_range(client: Any, engine: Engine, app: str, ranges: int, fn: Callable[..., T], *args: Any) -> list[T]:
    specs = [RangeScan(engine.url, app, r) for r in await engine.ranges(app, at_least=ranges)]
    futures = [client.submit(fn, spec, *args, key=_task_key(fn.__name__, str(i)), pure=False, retries=TASK_RETRIES)
               for i, spec in enumerate(specs)]
    return [result async for result in _results(client, futures)]


class _DifferingBuckets(Engine):
    """One side of an app as verify's second half sees it: only the entities the workers
    found in the differing buckets, scanned from memory; reads and writes go through to
    the real engine. Handing two of these to ``snapshot.verify_app`` gives the same
    differing buckets with the same contents, so its second look, repair rules and
    looks again run unchanged, on the differing keys only."""

    scheme = "differing-buckets"

    def __init__(self, engine: Engine, entities: list[Entity]) -> None:
        super().__init__(engine.url)
        self.engine = engine
        self.entities = entities

    async def open(self) -> None:
        """The real engine is already open; nothing to do."""

    async def close(self) -> None:
        """The real engine stays open; its owner closes it."""

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        await self.engine.apply(entities)

    async def read(self, ref: EntityRef) -> Entity | None:
        return await self.engine.read(ref)

    async def scan(self, app: str, key_range: KeyRange, *, page_size: int = 1000,
                   tombstones: bool = False) -> AsyncIterator[list[Entity]]:
        if key_range != _ALL:
            return
        found = [e for e in self.entities if e.app == app and (tombstones or e.value is not None)]
        for start in range(0, len(found), page_size):
            yield found[start:start + page_size]

    async def ranges(self, app: str, *, at_least: int = 1) -> list[KeyRange]:
        return [_ALL, *(KeyRange(f"empty-{i}", "") for i in range(1, at_least))]

    async def apps(self) -> list[str]:
        return sorted({e.app for e in self.entities})

    async def drop_app(self, app: str) -> None:
        raise NotImplementedError("verify never drops an app")


_ALL = KeyRange("", "")


async def verify_app_distributed(scheduler: str, n1: Engine, n2: Engine, app: str, *, repair: bool = False,
                                 n2_primary: bool = False, ranges: int = 16,
                                 on_difference: Callable[[Difference], None] | None = None) -> VerifyReport:
    """``snapshot.verify_app`` with both scans of both passes as Dask tasks, one per range.

    The workers scan (N1 and N2 each in their own ranges, at least ``ranges`` of them);
    this process adds up the buckets and hands the differing buckets' entities to
    ``verify_app`` itself, which looks again, repairs (``n2_primary`` as there) and decides
    ``report.remaining`` through the open engines ``n1`` and ``n2``, on differing keys only.
    """
    async with dask_client(scheduler) as client:
        first1, first2 = await asyncio.gather(_per_range(client, n1, app, ranges, bucket_sums_task),
                                              _per_range(client, n2, app, ranges, bucket_sums_task))
        (sums1, total1), (sums2, total2) = _sums(first1), _sums(first2)
        report = VerifyReport(app, total1, total2)
        differing = frozenset(b for b in range(BUCKETS) if sums1[b] != sums2[b])
        if not differing:
            return report
        found1, found2 = await asyncio.gather(_per_range(client, n1, app, ranges, entities_in_task, differing),
                                              _per_range(client, n2, app, ranges, entities_in_task, differing))
    second = await verify_app(_DifferingBuckets(n1, [e for part in found1 for e in part]),
                              _DifferingBuckets(n2, [e for part in found2 for e in part]), app, repair=repair,
                              n2_primary=n2_primary, on_difference=on_difference)
    second.n1, second.n2 = report.n1, report.n2  # the whole table's, not the differing buckets'
    return second
