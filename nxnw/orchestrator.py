"""The orchestrator: a migration's phases as a task graph, its state in N1's ZooKeeper.

A migration belongs to its plan: everything it records — the plan's registration and
claims, its mode, state, finished tasks, range checkpoints, journals — lives under the
plan's name (``sync/layout.py``), so plans over disjoint apps run at once, each with its
own mode, and ``migrate``/``resume``/``rollback``/``status`` of one never touch another.
``migrate`` first registers the plan: a plan that names an app (or a memcache key prefix)
another live plan holds is refused (``sync.state.AppClaimed``, naming that plan; exit 2),
before anything changes. A plan releases its claims once it is complete or rolled back.

Phases (the one vocabulary of the CLI, the znodes, the logs and the status page):
``prepare → sync-zk → cow → snapshot+load → verify → proxy → handoff → complete``.
Each phase is one or more tasks; a task runs once its dependencies are done, independent
tasks run in parallel (each app's load and verify, the DNS TTL lowering beside the data
phases). Every finished task is recorded (a ``TaskRecordStore`` record under the task
``<plan>._tasks``, beside the migration-state znode that holds the phase) before the next
one that depends on it starts, so ``nxnw migrate`` killed with -9 anywhere and started
again skips what was done and redoes the task it was in — every task is written to be
redone safely: mode switches are compare-and-set and idempotent, loads resume from
their range checkpoints and are last-write-wins, verify only ever applies newer data,
the DNS hand-off resumes from its saved copy.

Nothing changes before ``preflight`` has checked every problem it can see (engines,
both ZooKeepers, the Dask scheduler, the DNS zone's update rights); they are reported all
at once. ``task_graph(plan)`` is the graph without a connection (``migrate --dry-run``
prints it); ``await Orchestrator.connect(plan)`` returns an orchestrator connected to
N1's ZooKeeper and both engines, closed by ``close()`` or by leaving ``async with``.
The phase, task durations and failures, load progress, verify's differences and the
journal depths are Prometheus metrics (``nxnw.migration_metrics``).

The ZooKeeper mirror is a worker, not a one-off task: whenever a migration is between
``sync-zk`` and ``complete``, the orchestrator process runs it (a restart re-syncs). It
stops only after one last full sync, at ``complete`` (and, best effort, at rollback).

Gates, each checked where it matters rather than trusted from a record:

* ``prepare`` refuses apps whose N2 table is not empty (unless the plan sets
  ``allow_nonempty_n2``): verify could not tell such rows from the migration's.
* ``verify`` fails its task when a difference survives repair, naming the keys; only when
  every app verified does ``proxy`` record the load as verified for the current cow epoch
  (``sync.mode.mark_load_verified``), without which the mode machine refuses cow → proxy.
* Every task after ``cow`` first reads the live mode znode and compares it with what the
  finished tasks imply (``cow`` before ``proxy`` is done, ``proxy`` after, at the epoch
  those tasks recorded). A partial rollback or an admin's mode change makes them disagree;
  the migration then stops and says so — it never hands DNS to N2 with the proxies in
  ``passthrough``, nor verifies a load whose cow period was interrupted.
* ``complete`` waits (up to ``journal_drain_seconds``) for both repair journals to be
  empty and fails with the depths otherwise; rollback does the same for the journal toward
  N1 and reports the one toward N2.

It must never: let the proxies serve from N2 a load that was not verified in the current
cow period; hand the DNS name to N2 while the proxies are not in ``proxy``; record
``complete`` before both journals were empty and the ZooKeeper mirror synced its last.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient

from datastore import Engine, EngineUnavailable, open_engine
from dns_handoff import Handoff
from dns_handoff.provider import DnsProvider, RecordSet
from nxnw.checkpoints import ZooKeeperRangeCheckpoints
from nxnw.config import Dns, Plan
from nxnw import migration_metrics as metrics
from nxnw.error_budget import N2ErrorBudget
from nxnw.zk import start_zk, stop_zk, zk_session
from proxy.control import acknowledged, flush_memcached, journal_depth, members, switch_mode, wait_journal_empty
from snapshot import LoadStats, copy_app, verify_app
from sync import layout
from sync.aio import io_executor, run_blocking, zk_wait_executor
from sync.mirror import TreeMirror, purge_ephemeral_copies
from sync.mode import load_verified_epoch, mark_load_verified, read_mode
from sync.state import PHASES, ROLLBACK, MigrationState, MigrationStateStore, PlanRegistry, TaskRecordStore
from sync.zk_client import zk_client

log = logging.getLogger("nxnw.orchestrator")


class PreflightFailed(RuntimeError):
    """The plan cannot run here; ``problems`` has one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s) before anything was changed:\n" + "\n".join(problems))
        self.problems = problems


class MigrationFailed(RuntimeError):
    """A task failed; the migration stays in its phase and can be resumed or rolled back."""

    #: the CLI's exit status: the migration failed (2 is for bad input and unreachable services)
    exit_status = 1


@dataclass
class Task:
    #: the phase's name, then ``:detail`` when a phase has several tasks
    name: str
    phase: str
    deps: tuple[str, ...]
    #: the work, given the connected orchestrator; returns the result recorded when done
    run: Callable[[Orchestrator], Awaitable[dict[str, Any] | None]]
    #: False for work done early on behalf of a later phase (lowering the DNS TTL)
    moves_phase: bool = True
    #: False when the task itself moves the phase once it succeeded: ``complete`` must not
    #: be recorded before its checks passed (a recorded ``complete`` is final)
    phase_at_start: bool = True


@dataclass
class Progress:
    """What the status page and the CLI show while a migration runs."""

    phase: str = "prepare"
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    load: dict[str, LoadStats] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    mode: str | None = None
    journal_depth: int = 0
    #: called with each event line as it happens (the CLI prints them)
    on_event: Callable[[str], None] | None = None

    def event(self, text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.events.append(line)
        del self.events[:-200]
        log.info(text)
        if self.on_event is not None:
            self.on_event(line)


def dns_provider(dns: Dns) -> DnsProvider:
    """The provider the plan's ``[dns]`` table names, with its settings."""
    if dns.provider == "rfc2136" and dns.rfc2136 is not None:
        from dns_handoff.rfc2136 import Rfc2136Provider
        cfg = dns.rfc2136
        return Rfc2136Provider(cfg.zone, cfg.server, cfg.key_name, cfg.key_secret.get_secret_value(), cfg.key_algorithm,
                               authoritative=cfg.authoritative or None)
    if dns.provider == "route53" and dns.route53 is not None:
        from dns_handoff.route53 import Route53Provider
        return Route53Provider(dns.route53.hosted_zone_id, endpoint_url=dns.route53.endpoint_url,
                               region=dns.route53.region)
    raise ValueError(f"provider {dns.provider!r} needs a [dns.{dns.provider}] table")


async def preflight(plan: Plan) -> None:
    """Check everything the plan touches without changing anything; raise all problems."""
    problems: list[str] = []
    for side in ("n1", "n2"):
        dep = getattr(plan, side)
        try:
            async with zk_session(dep.zookeeper, side.upper() + "'s", dep.zookeeper_security):
                pass
        except EngineUnavailable as exc:
            problems.append(f"{side}.zookeeper: {exc}")
        engine = open_engine(dep.engine)
        try:
            await asyncio.wait_for(engine.open(), 20)
            await engine.apps()
        except Exception as exc:
            problems.append(f"{side}.engine: cannot open {dep.engine}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                await engine.close()
    if plan.scale.scheduler:
        from nxnw.dask_ranges import SchedulerUnavailable, check_scheduler
        try:
            await check_scheduler(plan.scale.scheduler)
        except SchedulerUnavailable as exc:
            problems.append(f"scale.scheduler: {exc}")
    if plan.dns is not None:
        try:
            await run_blocking(_check_dns_rights, dns_provider(plan.dns), plan.dns, executor=io_executor())
        except Exception as exc:
            problems.append(f"dns: {exc}")
    if problems:
        raise PreflightFailed(problems)


def _check_dns_rights(provider: DnsProvider, dns: Dns) -> None:
    """Read the record and make one harmless signed change, so a refusal shows up now."""
    current = provider.records(dns.name, "A")
    if not current:
        raise ValueError(f"{dns.name} has no A record to hand off")
    probe = RecordSet(f"_nxnw-preflight.{dns.name}", "TXT", 1, ('"nxnw preflight"',))
    provider.wait_in_sync(provider.upsert([probe]), 30)
    provider.delete([probe])


def task_graph(plan: Plan) -> list[Task]:
    """The plan's tasks in dependency order: what ``migrate`` runs and ``--dry-run`` prints."""
    graph = [
        Task("prepare", "prepare", (), Orchestrator._prepare),
        Task("sync-zk", "sync-zk", ("prepare",), Orchestrator._sync_zk),
        Task("cow", "cow", ("sync-zk",), Orchestrator._cow),
    ]
    for app in plan.apps:
        graph.append(Task(f"snapshot+load:{app}", "snapshot+load", ("cow",), lambda o, app=app: o._load(app)))
        graph.append(Task(f"verify:{app}", "verify", (f"snapshot+load:{app}",), lambda o, app=app: o._verify(app)))
    graph.append(Task("proxy", "proxy", tuple(f"verify:{a}" for a in plan.apps), Orchestrator._proxy))
    last = "proxy"
    if (dns := plan.dns) is not None:
        graph.append(Task("handoff:lower-ttl", "handoff", ("prepare",), lambda o: o._lower_ttl(dns),
                          moves_phase=False))
        graph.append(Task("handoff", "handoff", ("proxy", "handoff:lower-ttl"), lambda o: o._switch_dns(dns)))
        last = "handoff"
    graph.append(Task("complete", "complete", (last,), Orchestrator._complete, phase_at_start=False))
    return graph


class Orchestrator:
    """Runs (or resumes) one plan's migration in this process.

    Made connected by ``await Orchestrator.connect(plan)`` (N1's ZooKeeper, both engines),
    closed by ``close()`` or by leaving ``async with``.
    """

    def __init__(self, plan: Plan, zk: KazooClient, n1: Engine, n2: Engine) -> None:
        self.plan = plan
        self.progress = Progress()
        self.zk = zk
        self.store = MigrationStateStore(zk, path=layout.state(plan.name))
        self.records = TaskRecordStore(zk, root=layout.checkpoints(plan.name))
        self.plans = PlanRegistry(zk)
        #: the plan's mode znode
        self.mode_path = layout.mode(plan.name)
        self.state: MigrationState | None = None
        self.n1 = n1
        self.n2 = n2
        self.mirrors: list[TreeMirror] = []
        self.handoff: Handoff | None = None
        self._state_lock = asyncio.Lock()
        #: finished tasks and their results, as the running ``migrate`` knows them
        self._done: dict[str, dict[str, Any]] = {}

    def status(self) -> dict[str, Any]:
        """The state the status page draws (see nxnw/status_page.py for the shape)."""
        phases = []
        for phase in PHASES:
            tasks = [t for name, t in self.progress.tasks.items() if name.split(":")[0] == phase]
            states = {t.get("state", "pending") for t in tasks}
            started = [t["started"] for t in tasks if t.get("started")]
            finished = [t["finished"] for t in tasks if t.get("finished")]
            state = ("failed" if "failed" in states else "running" if "running" in states
                     else "done" if tasks and states == {"done"} else "running" if "done" in states else "pending")
            phases.append({"name": phase, "state": state, "started": min(started) if started else None,
                           "finished": max(finished) if state == "done" and finished else None})
        loads = list(self.progress.load.values())
        seconds = max((s.seconds for s in loads), default=0.0)
        entities = sum(s.entities for s in loads)
        return {
            "plan": self.plan.name, "phase": self.progress.phase, "mode": self.progress.mode,
            "journal_depth": self.progress.journal_depth, "events": self.progress.events[-50:], "phases": phases,
            "progress": {"entities": entities, "bytes": sum(s.bytes for s in loads),
                         "rate": entities / seconds if seconds else 0.0,
                         "ranges_done": sum(s.ranges_done for s in loads),
                         "ranges_total": sum(s.ranges_total for s in loads)},
        }

    # -- connections ---------------------------------------------------------------------

    @classmethod
    async def connect(cls, plan: Plan) -> Orchestrator:
        """An orchestrator connected to N1's ZooKeeper and both engines; on a failure,
        whatever was opened is closed again and the error raised."""
        zk = await start_zk(plan.n1.zookeeper, "N1's", plan.n1.zookeeper_security)
        opened: list[Engine] = []
        try:
            for url in (plan.n1.engine, plan.n2.engine):
                engine = open_engine(url)
                await engine.open()
                opened.append(engine)
        except BaseException:
            for engine in opened:
                await engine.close()
            await stop_zk(zk)
            raise
        return cls(plan, zk, *opened)

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        for mirror in self.mirrors:
            await run_blocking(mirror.stop, executor=zk_wait_executor())
        self.mirrors = []
        for engine in (self.n1, self.n2):
            await engine.close()
        await stop_zk(self.zk)

    async def read_journal_depths(self) -> dict[str, int]:
        """The repair journals' depths now (toward ``n2`` and ``n1``), also set as metrics."""
        depths = {side: await run_blocking(journal_depth, self.zk, self.plan.name, side) for side in ("n2", "n1")}
        for side, depth in depths.items():
            metrics.JOURNAL_DEPTH.labels(self.plan.name, side).set(depth)
        return depths

    # -- state -----------------------------------------------------------------------------

    @property
    def _tasks_key(self) -> str:
        return f"{self.plan.name}._tasks"

    async def _finished_tasks(self) -> dict[str, dict[str, Any]]:
        """Finished tasks and their results, one znode each beside the loader's checkpoints."""
        return await run_blocking(self.records.list, self._tasks_key)

    async def _task_done(self, name: str, result: dict[str, Any]) -> None:
        await run_blocking(self.records.put, self._tasks_key, name, result)

    async def _set_phase(self, phase: str) -> None:
        """Compare-and-set the state's phase, never backwards: with tasks of several phases
        running at once, the phase shown is the furthest."""
        async with self._state_lock:
            current = await run_blocking(self.store.get)
            if current is None:
                raise MigrationFailed(f"the migration-state znode {self.store.path} was removed while {phase} ran")
            if PHASES.index(phase) > PHASES.index(current.phase):
                self.state = await run_blocking(self.store.update, current.version, phase=phase)
            else:
                self.state = current
            self.progress.phase = self.state.phase
            metrics.set_phase(self.plan.name, self.state.phase)

    async def _saved_handoff(self) -> dict[str, Any] | None:
        return await run_blocking(self.records.get, self._tasks_key, "_dns")

    # -- the graph -------------------------------------------------------------------------

    async def migrate(self, until: str | None = None) -> MigrationState:
        """Run every task not yet done, in dependency order, in parallel where possible.

        ``until`` stops after that phase's tasks (``--until proxy`` pauses before the DNS
        hand-off); a later ``migrate`` carries on from there.
        """
        if until is not None and until not in PHASES:
            raise ValueError(f"unknown phase {until!r}; the phases are {', '.join(PHASES)}")
        state = await run_blocking(self.store.get)
        if state is not None and state.phase == "complete":
            await run_blocking(self.plans.release, self.plan.name)  # if a killed run got no further
            self.progress.event("migration already complete; nothing to do")
            self.state = state
            return state
        if state is not None and state.phase == ROLLBACK:
            raise MigrationFailed("the last migration was rolled back; run `nxnw migrate --restart` to start a new one")
        await run_blocking(self.plans.register, self.plan.name, self.plan.apps, self.plan.key_prefixes)
        if state is None:
            state = await run_blocking(self.store.create, "prepare", {"plan": self.plan.name})
            self.progress.event(f"migration {self.plan.name} started")
        else:
            self.progress.event(f"migration {self.plan.name} resumed in phase {state.phase}")
        self.state = state
        metrics.set_phase(self.plan.name, state.phase)
        done = {name: result for name, result in (await self._finished_tasks()).items() if not name.startswith("_")}
        self._done = done
        if "sync-zk" in done:
            await self._start_mirrors()
        graph = {t.name: t for t in task_graph(self.plan)
                 if until is None or PHASES.index(t.phase) <= PHASES.index(until)}
        for name in graph:
            self.progress.tasks[name] = {"state": "done" if name in done else "pending", **done.get(name, {})}
        running: dict[str, asyncio.Task] = {}
        try:
            while not all(name in done for name in graph):
                for name, task in graph.items():
                    if name in done or name in running or not all(d in done for d in task.deps):
                        continue
                    running[name] = asyncio.create_task(self._run_task(task), name=name)
                if not running:
                    raise MigrationFailed(f"no task can run; done: {sorted(done)}")
                finished, _ = await asyncio.wait(running.values(), return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    name = fut.get_name()
                    del running[name]
                    done[name] = fut.result()
        finally:
            for fut in running.values():
                fut.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
        return self.state or state

    def _expected_modes(self, task: Task) -> list[tuple[str, int | None]]:
        """The modes (and epochs, when recorded) the finished tasks allow before ``task``
        runs; empty before ``cow`` is done (nothing to check)."""
        if "proxy" in self._done:
            return [("proxy", self._done["proxy"].get("epoch"))]
        if "cow" not in self._done:
            return []
        cow_epoch = self._done["cow"].get("epoch")
        allowed = [("cow", cow_epoch)]
        if task.name == "proxy" and cow_epoch is not None:
            # Killed after its switch but before its record: the next epoch is its own switch.
            allowed.append(("proxy", cow_epoch + 1))
        return allowed

    async def _check_live_mode(self, task: Task) -> None:
        """Stop unless the live mode znode is what the finished tasks say it should be.

        Task records say what this orchestrator did; the mode znode says what the proxies
        do now. A rollback interrupted half-way, or an admin's ``/admin/mode``, can make
        them disagree — and then a resumed migration must not go on: verifying in
        ``passthrough`` checks nothing, a hand-off in ``passthrough`` sends clients to an
        N2 that stopped receiving writes, and a new cow epoch means writes made meanwhile
        never reached N2. Stopping (rather than switching back) leaves the decision to the
        operator: ``nxnw rollback``, then ``nxnw migrate --restart``. The one disagreement
        that is this orchestrator's own: the ``proxy`` task killed after its switch and
        before its record finds ``proxy`` at the epoch after the recorded cow one, with
        the load verified in that cow epoch — it is redone (an idempotent re-switch).
        """
        allowed = self._expected_modes(task)
        if not allowed:
            return
        live = await run_blocking(read_mode, self.zk, path=self.mode_path)

        def matches(mode: str, epoch: int | None) -> bool:
            return live is not None and live.mode == mode and (epoch is None or live.epoch == epoch)

        if any(matches(mode, epoch) for mode, epoch in allowed[:1]):
            return
        if any(matches(mode, epoch) for mode, epoch in allowed[1:]) and \
                await run_blocking(load_verified_epoch, self.zk, path=self.mode_path) == \
                self._done["cow"].get("epoch"):
            return
        mode, epoch = allowed[0]
        now = "no mode znode" if live is None else f"mode {live.mode} (epoch {live.epoch})"
        want = f"mode {mode}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise MigrationFailed(
            f"the proxies are in {now}, but the finished tasks left them in {want}: the mode was changed "
            f"outside this migration (a partial rollback, or an admin's mode change); not running "
            f"{task.name}. Run `nxnw rollback`, then `nxnw migrate --restart` to start again")

    async def _run_task(self, task: Task) -> dict[str, Any]:
        entry = self.progress.tasks.setdefault(task.name, {})
        if task.moves_phase and PHASES.index(task.phase) > PHASES.index("cow"):
            try:
                await self._check_live_mode(task)
            except MigrationFailed as exc:
                entry.update(state="failed", finished=time.time(), error=str(exc))
                self.progress.event(f"{task.name}: not started: {exc}")
                raise
        if task.moves_phase and task.phase_at_start:
            await self._set_phase(task.phase)
        entry.update(state="running", phase=task.phase, started=time.time())
        self.progress.event(f"{task.name}: started")
        try:
            result = await task.run(self) or {}
        except Exception as exc:
            entry.update(state="failed", finished=time.time(), error=str(exc))
            metrics.TASK_FAILURES.labels(self.plan.name, task.name, task.phase).inc()
            self.progress.event(f"{task.name}: failed: {exc}")
            raise MigrationFailed(f"task {task.name} (phase {task.phase}) failed: {exc}") from exc
        result = {**result, "phase": task.phase, "started": entry["started"], "finished": time.time()}
        await self._task_done(task.name, result)
        metrics.TASK_SECONDS.labels(self.plan.name, task.name, task.phase).set(result["finished"] - result["started"])
        entry.update(state="done", **result)
        self.progress.event(f"{task.name}: done")
        return result

    # -- tasks -------------------------------------------------------------------------------

    async def _n2_rows(self, app: str, limit: int = 1000, sample: int = 3) -> tuple[int, list[str]]:
        """How many rows (tombstones included) ``app``'s N2 table holds, counted up to
        ``limit``, and the first ``sample`` keys."""
        if app not in await self.n2.apps():
            return 0, []
        count, keys = 0, []
        for key_range in await self.n2.ranges(app):
            async for page in self.n2.scan(app, key_range, page_size=min(limit, 1000), tombstones=True):
                count += len(page)
                keys += [f"{e.kind}/{e.key!r}" for e in page[:sample - len(keys)]]
                if count >= limit:
                    return count, keys
        return count, keys

    async def _prepare(self) -> dict[str, Any]:
        """Refuse N2 tables that hold rows, then flush N2's memcached.

        A row already on N2 did not come from this migration, and verify cannot tell it
        from one that did: a newer one would survive the load (last write wins) and
        shadow N1's copy once N2 serves. So the plan's apps must start empty on N2, unless
        the plan says ``allow_nonempty_n2`` (an earlier, rolled-back attempt's rows).
        The flush: N2 serves nobody yet, and a value left there by an earlier, rolled-back
        attempt may since have been overwritten on N1, which no mirror saw."""
        occupied = {}
        for app in self.plan.apps:
            count, keys = await self._n2_rows(app)
            if count:
                occupied[app] = f"app {app}: {'at least ' if count >= 1000 else ''}{count} row(s) on N2, e.g. " \
                                + ", ".join(keys)
        if occupied and not self.plan.allow_nonempty_n2:
            raise MigrationFailed("N2's tables must be empty for the plan's apps; " + "; ".join(occupied.values())
                                  + ". Drop them on N2, or set allow_nonempty_n2 = true in the plan if they are "
                                  "an earlier attempt's copies of N1's data")
        await run_blocking(flush_memcached, self.plan.n2.memcached, executor=io_executor())
        return {"n2_apps_before": await self.n2.apps(), "n2_cache_flushed": True,
                "n2_nonempty_allowed": sorted(occupied)}

    async def _start_mirrors(self) -> None:
        if self.mirrors:
            return
        for root in self.plan.sync_paths:
            n1, n2 = self.plan.n1, self.plan.n2  # clients with each side's digest / TLS settings
            mirror = TreeMirror(functools.partial(zk_client, n1.zookeeper, n1.zookeeper_security, timeout=10.0),
                                functools.partial(zk_client, n2.zookeeper, n2.zookeeper_security, timeout=10.0), root)
            await run_blocking(mirror.start)
            self.mirrors.append(mirror)

    async def _sync_zk(self) -> dict[str, Any]:
        for root in self.plan.sync_paths:
            await run_blocking(self.zk.ensure_path, root)
        await self._start_mirrors()
        for mirror in self.mirrors:
            await run_blocking(mirror.wait_synced, 120, executor=zk_wait_executor())
        return {"roots": self.plan.sync_paths}

    async def _switch(self, mode: str) -> dict[str, Any]:
        state = await run_blocking(switch_mode, self.zk, self.plan.name, mode,
                                   drain_timeout=self.plan.thresholds.journal_drain_seconds,
                                   n2_memcached=self.plan.n2.memcached, executor=zk_wait_executor())
        self.progress.mode = mode
        found = await run_blocking(members, self.zk)
        return {"mode": mode, "epoch": state.epoch,
                "proxies": sorted(n for n, m in found.items() if acknowledged(m, self.plan.name))}

    async def _cow(self) -> dict[str, Any]:
        return await self._switch("cow")

    async def _load(self, app: str) -> dict[str, Any]:
        th = self.plan.thresholds
        task = f"{self.plan.name}.{app}"

        def on_progress(stats: LoadStats) -> None:
            self.progress.load[app] = stats
            for gauge, value in ((metrics.LOAD_ENTITIES, stats.entities), (metrics.LOAD_BYTES, stats.bytes),
                                 (metrics.LOAD_RANGES_DONE, stats.ranges_done),
                                 (metrics.LOAD_RANGES_TOTAL, stats.ranges_total)):
                gauge.labels(self.plan.name, app).set(value)

        if self.plan.scale.scheduler:
            from nxnw.dask_ranges import copy_app_distributed
            stats = await copy_app_distributed(self.plan.scale.scheduler, self.n1, self.n2, app, task=task,
                                               zookeeper=self.plan.n1.zookeeper, checkpoints_root=self.records.root,
                                               zookeeper_security=self.plan.n1.zookeeper_security,
                                               at_least=th.ranges_per_app,
                                               on_progress=on_progress)
        else:
            stats = await copy_app(self.n1, self.n2, app, task=task, checkpoints=ZooKeeperRangeCheckpoints(self.records),
                                   at_least=th.ranges_per_app, export_workers=th.export_workers,
                                   load_workers=th.load_workers, on_progress=on_progress)
        on_progress(stats)
        return {"entities": stats.entities, "bytes": stats.bytes, "seconds": round(stats.seconds, 3),
                "rate": round(stats.rate, 1), "ranges": stats.ranges_total, "ranges_resumed": stats.ranges_skipped}

    async def _verify(self, app: str) -> dict[str, Any]:
        """Compare (and repair) one app; fail, naming the keys, when a difference survives.

        Runs in ``cow``: N1 is primary, so repair never copies toward N1 (see
        snapshot/verify.py) and a row newer on N2 than on N1 is a difference that stays.
        """
        repair = self.plan.thresholds.verify_repair
        if self.plan.scale.scheduler:
            from nxnw.dask_ranges import verify_app_distributed
            report = await verify_app_distributed(self.plan.scale.scheduler, self.n1, self.n2, app, repair=repair,
                                                  ranges=self.plan.thresholds.ranges_per_app)
        else:
            report = await verify_app(self.n1, self.n2, app, repair=repair)
        self.progress.event(report.summary())
        metrics.VERIFY_DIFFERENCES.labels(self.plan.name, app).set(len(report.differences))
        metrics.VERIFY_REMAINING.labels(self.plan.name, app).set(len(report.remaining))
        if not report.ok:
            raise MigrationFailed(f"app {app}: {len(report.remaining)} key(s) differ between N1 and N2"
                                  f"{' after repair' if self.plan.thresholds.verify_repair else ''}, so N2 "
                                  f"will not serve: {report.remaining_keys()}")
        return {"identical": report.identical, "differences": report.counts(), "repaired": report.repaired,
                "entities": report.n1.count}

    async def _proxy(self) -> dict[str, Any]:
        """Record the load as verified for the cow epoch it ran in, then switch to ``proxy``.

        Every app's verify task is a dependency and succeeded only if nothing differs; each
        of them, and this task, started only after ``_check_live_mode`` saw the cow epoch the
        ``cow`` task recorded. That recorded epoch is the one marked — never the mode read
        now: if the mode was cycled since, the mark names an older epoch and the mode
        machine refuses cow → proxy.
        """
        cow_epoch = self._done["cow"]["epoch"]
        await run_blocking(mark_load_verified, self.zk, cow_epoch, path=self.mode_path)
        self.progress.journal_depth = await run_blocking(journal_depth, self.zk, self.plan.name, "n2")
        return {**await self._switch("proxy"), "verified_cow_epoch": cow_epoch}

    async def _dns_handoff(self, dns: Dns) -> Handoff:
        """The hand-off, resumed from its saved copy when an earlier run began it."""
        if self.handoff is None:
            provider = dns_provider(dns)
            saved = await self._saved_handoff()
            store, key = self.records, self._tasks_key

            def persist(doc: dict[str, Any]) -> None:  # runs on the io_executor thread doing the DNS work
                store.put(key, "_dns", doc)

            self.handoff = (Handoff.from_dict(provider, saved, persist) if saved
                            else Handoff(provider, dns.name, persist=persist))
        return self.handoff

    async def _lower_ttl(self, dns: Dns) -> dict[str, Any]:
        handoff = await self._dns_handoff(dns)
        waited = await run_blocking(handoff.lower_ttl, dns.ttl, executor=io_executor())
        return {"waited_old_ttl": round(waited, 3)}

    async def _switch_dns(self, dns: Dns) -> dict[str, Any]:
        handoff = await self._dns_handoff(dns)
        budget = N2ErrorBudget(self.plan.n2.proxies, self.plan.thresholds.max_error_rate, ca=self.plan.n2.proxy_ca)
        await run_blocking(budget.baseline, executor=io_executor())
        started = time.time()
        await run_blocking(handoff.switch, dns.n1_values, dns.n2_values, dns.mode, dns.steps,
                           error_budget_check=budget, hold_seconds=dns.ttl, executor=io_executor())
        resolver = dns.resolver or (dns.rfc2136.server if dns.rfc2136 else None)
        if resolver:
            await run_blocking(handoff.verify, resolver, dns.n2_values, 10.0, executor=io_executor())
        return {"switched_at": started, "in_sync_after": round(time.time() - started, 3)}

    async def _stop_mirrors(self, *, final_sync: bool) -> None:
        """Stop mirroring. With ``final_sync`` each mirror first runs one last verifying full
        sync (so N2 then equals N1 for the synced paths and never hands out a sequence suffix
        N1 issued); if that fails, the mirrors not yet finished keep running and the error
        is raised."""
        timeout = self.plan.thresholds.journal_drain_seconds
        for mirror in list(self.mirrors):
            if final_sync:
                await run_blocking(mirror.finish, timeout, executor=zk_wait_executor())
            else:
                await run_blocking(mirror.stop, executor=zk_wait_executor())
            self.mirrors.remove(mirror)

    async def _purge_ephemeral_copies(self) -> int:
        """Remove N2's copies of N1's ephemeral nodes, once mirroring has stopped (they would
        hold N2's locks forever once N1's sessions are gone); returns how many were removed."""
        async with zk_session(self.plan.n2.zookeeper, "N2's", self.plan.n2.zookeeper_security) as n2:
            removed = 0
            for root in self.plan.sync_paths:
                removed += len(await run_blocking(purge_ephemeral_copies, n2, root))
            return removed

    async def _wait_journals_empty(self, sides: tuple[str, ...]) -> None:
        """Wait, up to ``journal_drain_seconds`` in all, until the repair journals toward
        ``sides`` are empty; MigrationFailed naming each depth otherwise."""
        deadline = time.monotonic() + self.plan.thresholds.journal_drain_seconds
        for side in sides:
            try:
                await run_blocking(wait_journal_empty, self.zk, self.plan.name, side,
                                   max(deadline - time.monotonic(), 0.1), executor=zk_wait_executor())
            except RuntimeError as exc:
                depths = {s: await run_blocking(journal_depth, self.zk, self.plan.name, s) for s in ("n1", "n2")}
                raise MigrationFailed(f"{exc} (journal toward N1: {depths['n1']}, toward N2: {depths['n2']} key(s)); "
                                      "every write must be on both sides first") from exc

    async def _complete(self) -> dict[str, Any]:
        """Both journals empty, one last ZooKeeper sync, then ``complete``."""
        await self._wait_journals_empty(("n2", "n1"))
        await self._stop_mirrors(final_sync=True)
        purged = await self._purge_ephemeral_copies()
        await self._set_phase("complete")
        await run_blocking(self.plans.release, self.plan.name)
        return {"ephemeral_copies_removed": purged}

    # -- rollback ----------------------------------------------------------------------------

    async def rollback(self) -> MigrationState:
        """Back to N1 from any phase before ``complete``, losing nothing.

        Proxies go back to ``passthrough`` only once the journal toward N1 is empty (every
        write made in ``proxy`` mode is then on N1); the DNS records are restored exactly
        from the hand-off's saved copy.
        """
        self.state = await run_blocking(self.store.get)
        if self.state is None:
            raise MigrationFailed("no migration is recorded in N1's ZooKeeper; nothing to roll back")
        if self.state.phase == "complete":
            raise MigrationFailed("the migration is complete; N2 is live and N1 no longer takes writes")
        if self.state.phase == ROLLBACK:
            await run_blocking(self.plans.release, self.plan.name)  # if a killed run got no further
            self.progress.event("already rolled back")
            return self.state
        from_phase = self.state.phase
        await self._wait_journals_empty(("n1",))
        await self._switch("passthrough")
        n2_journal = await run_blocking(journal_depth, self.zk, self.plan.name, "n2")
        if n2_journal:
            self.progress.event(f"rollback: {n2_journal} key(s) in the repair journal toward N2 will not reach it; "
                                "N2 no longer matters to this migration")
        await self._stop_mirrors_after_rollback()
        if self.plan.dns is not None and await self._saved_handoff():
            handoff = await self._dns_handoff(self.plan.dns)
            await run_blocking(handoff.rollback, executor=io_executor())
        self.state = await run_blocking(self.store.update, self.state.version, phase=ROLLBACK,
                                        data={"from": from_phase, "at": time.time(), "n2_journal": n2_journal})
        await run_blocking(self.plans.release, self.plan.name)
        metrics.set_phase(self.plan.name, ROLLBACK)
        self.progress.event(f"rolled back from phase {from_phase}: proxies in passthrough, N1 serves")
        return self.state

    async def _stop_mirrors_after_rollback(self) -> None:
        """The last sync of the mirrors this process runs, and the purge of N2's ephemeral
        copies, best effort: after a rollback N2 serves nobody, so an N2 ZooKeeper that
        cannot be reached must not block going back to N1. What is skipped is reported;
        the next attempt's verifying resync repairs N2's tree, and ``nxnw verify --repair``
        removes lock copies left behind."""
        try:
            await self._stop_mirrors(final_sync=True)
        except Exception as exc:
            self.progress.event(f"rollback: the last ZooKeeper sync to N2 did not complete ({exc}); "
                                "mirroring stopped without it")
            await self._stop_mirrors(final_sync=False)
        try:
            await self._purge_ephemeral_copies()
        except Exception as exc:
            self.progress.event(f"rollback: N2's copies of N1's ephemeral nodes were not removed ({exc}); "
                                "`nxnw verify --repair` removes them")

    async def restart(self) -> None:
        """Forget a finished or rolled-back migration (state and checkpoints) to start anew."""
        state = await run_blocking(self.store.get)
        if state is not None and state.phase not in ("complete", ROLLBACK):
            raise MigrationFailed(f"a migration is in phase {state.phase}; roll it back before starting anew")
        checkpoints = ZooKeeperRangeCheckpoints(self.records)
        for task in [f"{self.plan.name}.{app}" for app in self.plan.apps] + [self._tasks_key]:
            await checkpoints.clear(task)
        if state is not None:
            await run_blocking(self.store.delete, state.version)
