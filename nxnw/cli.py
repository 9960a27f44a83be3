"""The ``nxnw`` command line: one verb per operator step, one readable line per error.

Exit statuses: 0 done; 1 the work failed (a migration task, a rollback that cannot go
back yet, keys that still differ after ``verify``); 2 bad input or a service that does not
answer (a bad flag or plan file, a plan naming an app another live plan holds, an
unreachable ZooKeeper or engine, a failed preflight);
130 interrupted. Every failure ends with a single line saying what and why (a preflight
lists its problems below it), and no library's warnings above it; a traceback means a bug
in nxnw. ``--json`` (status, verify) prints one JSON document on stdout with the facts
the text shows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import KazooException
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from nxnw import __version__, logs, services, snapshot_cli
from datastore import EngineUnavailable
from nxnw.config import Plan, PlanError, at_least, load_plan, scheduler_address

if TYPE_CHECKING:
    from kazoo.client import KazooClient

console = Console(stderr=True, soft_wrap=True)

#: Exit statuses, as the README documents them: done; the migration failed or keys still
#: differ; bad input or a service that does not answer; interrupted (Ctrl-C).
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _async(coro) -> int:
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:  # uvloop is a dependency; this only guards odd platforms
        return asyncio.run(coro)


def _migrate(args: argparse.Namespace) -> int:
    from aiohttp import web

    from nxnw.migration_metrics import mount_metrics
    from nxnw.orchestrator import Orchestrator, preflight
    from nxnw.proxy_watch import ProxyWatch
    from nxnw.status_page import render_report, status_app

    plan = load_plan(args.plan)
    if args.status_port is not None:
        plan.status_port = args.status_port
    if args.dry_run:
        return _async(_dry_run(plan, args.until))

    async def report_load(orchestrator: Orchestrator) -> None:
        """Every 5 s while ranges load: entities, rate and ranges done, one line."""
        while True:
            await asyncio.sleep(5)
            for app, stats in orchestrator.progress.load.items():
                if stats.ranges_done < stats.ranges_total:
                    console.print(f"  loading {app}: {stats.entities:,} entities, {stats.rate:,.0f}/s, "
                                  f"{stats.ranges_done}/{stats.ranges_total} ranges", markup=False)

    async def run() -> int:
        await preflight(plan)
        async with await Orchestrator.connect(plan) as orchestrator:
            orchestrator.progress.on_event = lambda line: console.print(line, markup=False, highlight=False)
            runner = None
            reporter = asyncio.create_task(report_load(orchestrator))
            try:
                if args.restart:
                    await orchestrator.restart()
                if plan.status_port is not None:
                    watch = ProxyWatch(plan.n1.proxies, plan.n2.proxies, n1_ca=plan.n1.proxy_ca, n2_ca=plan.n2.proxy_ca)
                    app = status_app(orchestrator.status, watch)
                    mount_metrics(app, orchestrator.read_journal_depths)
                    runner = web.AppRunner(app, access_log=None)
                    await runner.setup()
                    await web.TCPSite(runner, "127.0.0.1", plan.status_port).start()
                    console.print(f"status page: http://127.0.0.1:{plan.status_port}/ "
                                  f"(Prometheus metrics: /metrics)")
                state = await orchestrator.migrate(until=args.until)
                if args.report:
                    Path(args.report).write_text(render_report(orchestrator.status()))
                console.print(f"migration {plan.name}: phase {state.phase}")
                return EXIT_OK
            finally:
                reporter.cancel()
                if runner is not None:
                    await runner.cleanup()

    return _async(run())


async def _dry_run(plan: Plan, until: str | None) -> int:
    """The preflight, then the task graph with what is already done; changes nothing.

    Reads N1's ZooKeeper (the state and the finished tasks) and the engines; writes
    nothing there. The preflight's one write is its probe of the DNS zone's update rights:
    a TXT record beside the hand-off's name, created and deleted again.
    """
    from nxnw.orchestrator import preflight, task_graph
    from nxnw.zk import zk_session
    from sync import layout
    from sync.aio import run_blocking
    from sync.state import PHASES, ROLLBACK, MigrationStateStore, TaskRecordStore

    if until is not None and until not in PHASES:
        raise ValueError(f"unknown phase {until!r}; the phases are {', '.join(PHASES)}")
    await preflight(plan)
    async with zk_session(plan.n1.zookeeper, "N1's", plan.n1.zookeeper_security) as zk:
        state = await run_blocking(MigrationStateStore(zk, path=layout.state(plan.name)).get)
        done = await run_blocking(TaskRecordStore(zk, root=layout.checkpoints(plan.name)).list, f"{plan.name}._tasks")
    graph = [t for t in task_graph(plan) if until is None or PHASES.index(t.phase) <= PHASES.index(until)]
    print(f"migration {plan.name}: dry run, nothing changed")
    print("preflight: ok (both engines, both ZooKeepers"
          + (", the Dask scheduler" if plan.scale.scheduler else "")
          + (", the DNS zone's update rights: a probe TXT record created and deleted" if plan.dns else "") + ")")
    if state is None:
        print("state: no migration recorded; migrate would start one in phase prepare")
    elif state.phase == "complete":
        print("state: phase complete; migrate would do nothing")
    elif state.phase == ROLLBACK:
        print("state: rolled back; migrate would refuse (--restart starts anew)")
    else:
        print(f"state: phase {state.phase}; migrate would resume it")
    width = max(len(t.name) for t in graph)
    print(f"tasks ({sum(t.name in done for t in graph)} of {len(graph)} done):")
    for task in graph:
        print(f"  {'done' if task.name in done else 'pending':<7}  {task.name:<{width}}  phase {task.phase:<13}  "
              f"after {', '.join(task.deps) or '-'}")
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    from nxnw.orchestrator import Orchestrator

    plan = load_plan(args.plan)

    async def run() -> int:
        async with await Orchestrator.connect(plan) as orchestrator:
            state = await orchestrator.rollback()
            console.print(f"migration {plan.name}: rolled back from {state.data.get('from')}; N1 serves every write")
            return EXIT_OK

    return _async(run())


def _status_facts(zk: KazooClient, plan_name: str) -> dict[str, Any]:
    """What ``nxnw status`` shows of one plan, read from N1's ZooKeeper (blocking calls);
    ``other_plans`` lists every other registered plan with its apps and mode."""
    from proxy.control import acknowledged, journal_depth, members
    from sync import layout
    from sync.mode import load_verified_epoch, read_mode
    from sync.state import MigrationStateStore, PlanRegistry, TaskRecordStore

    state = MigrationStateStore(zk, path=layout.state(plan_name)).get()
    mode = read_mode(zk, path=layout.mode(plan_name))
    tasks = TaskRecordStore(zk, root=layout.checkpoints(plan_name)).list(f"{plan_name}._tasks")
    registry = PlanRegistry(zk)
    registered = registry.get(plan_name)
    others = {}
    for name in registry.names():
        if name != plan_name and (other := registry.get(name)) is not None:
            other_mode = read_mode(zk, path=layout.mode(name))
            others[name] = {"apps": list(other.apps), "live": other.live,
                            "mode": None if other_mode is None else other_mode.mode}
    return {
        "plan": plan_name,
        "registered": None if registered is None else {"apps": list(registered.apps), "live": registered.live,
                                                       "key_prefixes": registered.key_prefixes},
        "phase": None if state is None else state.phase,
        "mode": None if mode is None else {"mode": mode.mode, "epoch": mode.epoch},
        "load_verified_cow_epoch": load_verified_epoch(zk, path=layout.mode(plan_name)),
        "proxies": {name: {"mode": acknowledged(proxy, plan_name).get("mode"),
                           "epoch": acknowledged(proxy, plan_name).get("epoch")}
                    for name, proxy in sorted(members(zk).items())},
        "journal": {"n2": journal_depth(zk, plan_name, "n2"), "n1": journal_depth(zk, plan_name, "n1")},
        "other_plans": others,
        "tasks_done": [{"task": name, **result}
                       for name, result in sorted(tasks.items(), key=lambda kv: kv[1].get("finished", 0))
                       if not name.startswith("_")],
    }


def _status(args: argparse.Namespace) -> int:
    from nxnw.zk import zk_session
    from sync.aio import run_blocking

    plan = load_plan(args.plan)

    async def read() -> dict[str, Any]:
        async with zk_session(plan.n1.zookeeper, "N1's", plan.n1.zookeeper_security) as zk:
            return await run_blocking(_status_facts, zk, plan.name)

    facts = _async(read())
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=True))
        return EXIT_OK
    table = Table("what", "value", title=f"migration {plan.name}")
    table.add_row("phase", facts["phase"] or "not started")
    mode, verified = facts["mode"], facts["load_verified_cow_epoch"]
    table.add_row("mode", "no mode set" if mode is None else f"{mode['mode']} (epoch {mode['epoch']})"
                  + ("" if verified is None else f"; load verified in cow epoch {verified}"))
    for name, proxy in facts["proxies"].items():
        table.add_row(f"proxy {name}", f"mode {proxy['mode']} (epoch {proxy['epoch']})")
    table.add_row("repair journal", f"to N2: {facts['journal']['n2']}, to N1: {facts['journal']['n1']}")
    registered = facts["registered"]
    table.add_row("apps", "not registered" if registered is None else
                  f"{', '.join(registered['apps'])} ({'claimed' if registered['live'] else 'released'})")
    for name, other in facts["other_plans"].items():
        table.add_row(f"plan {name}", f"apps {', '.join(other['apps'])}, mode {other['mode']}"
                      + ("" if other["live"] else " (released)"))
    for result in facts["tasks_done"]:
        detail = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("task", "phase", "started", "finished"))
        table.add_row(f"done: {result['task']}", detail)
    Console().print(table)
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when N1 and N2 hold the same data (after ``--repair``, once repaired), 1 when
    some keys still differ (each printed on a line of its own), 2 on an error."""
    from datastore import open_engine
    from nxnw.dask_ranges import check_scheduler, verify_app_distributed
    from nxnw.leftovers import find_leftovers
    from nxnw.zk import zk_session
    from snapshot import verify_app
    from sync import layout
    from sync.aio import run_blocking
    from sync.mode import read_mode

    plan = load_plan(args.plan)
    scheduler = args.scheduler or plan.scale.scheduler

    async def run() -> int:
        if scheduler:
            await check_scheduler(scheduler)
        async with zk_session(plan.n1.zookeeper, "N1's", plan.n1.zookeeper_security) as zk:
            mode = await run_blocking(read_mode, zk, path=layout.mode(plan.name))
        # Only in proxy mode are N2's newer copies writes N1 has yet to receive (see snapshot/verify.py).
        n2_primary = mode is not None and mode.mode == "proxy"
        n1, n2 = open_engine(plan.n1.engine), open_engine(plan.n2.engine)
        await n1.open()
        await n2.open()
        try:
            clean, apps = True, []
            for app in plan.apps:
                if scheduler:
                    report = await verify_app_distributed(scheduler, n1, n2, app, repair=args.repair,
                                                          n2_primary=n2_primary, ranges=plan.thresholds.ranges_per_app)
                else:
                    report = await verify_app(n1, n2, app, repair=args.repair, n2_primary=n2_primary)
                apps.append({"app": app, "summary": report.summary(), "ok": report.ok, "identical": report.identical,
                             "entities_n1": report.n1.count, "entities_n2": report.n2.count,
                             "differences": report.counts(), "repaired": report.repaired,
                             "remaining": [{"key": d.label, "kind": d.kind, "reason": report.reasons.get(d.label)}
                                           for d in report.remaining]})
                clean = clean and report.ok
            leftovers = (await find_leftovers(plan, n2, repair=args.repair)).lines()
        finally:
            await n1.close()
            await n2.close()
        if args.json:
            print(json.dumps({"plan": plan.name, "ok": clean, "repair": args.repair, "apps": apps,
                              "leftovers": leftovers}, indent=2, sort_keys=True))
        else:
            for found in apps:
                print(found["summary"])
                for diff in found["remaining"]:
                    print(f"  differs: app {found['app']} key {diff['key']}: {diff['kind']}"
                          + (f"; {diff['reason']}" if diff["reason"] else ""))
            for line in leftovers:
                print(line)
        return EXIT_OK if clean else EXIT_FAILED

    return _async(run())


def _proxy_serve(args: argparse.Namespace) -> int:
    from proxy.config import ProxyConfig
    from proxy.server import serve

    plan = load_plan(args.plan)
    admin_token = ({"file": args.admin_token_file} if args.admin_token_file else
                   {"env": args.admin_token_env} if args.admin_token_env else os.environ.get("NXNW_ADMIN_TOKEN", ""))
    try:
        config = ProxyConfig(instance=args.instance, n1_engine=plan.n1.engine,
                             n2_engine=plan.n2.engine, n1_zookeeper=plan.n1.zookeeper,
                             n1_zookeeper_security=plan.n1.zookeeper_security,
                             n1_memcached=plan.n1.memcached, n2_memcached=plan.n2.memcached, http_host=args.host,
                             http_port=args.port, memcache_port=args.memcache_port,
                             enable_flush_cmd=args.enable_flush_cmd, memcache_fail_limit=args.memcache_fail_limit,
                             memcache_retry_after=args.memcache_retry_after,
                             shadow_rate=plan.thresholds.shadow_rate, journal_bound=plan.thresholds.journal_bound,
                             admin_token=admin_token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                             tls_client_ca=args.tls_client_ca)
    except ValidationError as exc:  # one line, the settings' reasons only (never an input value: it may be a secret)
        raise ValueError("; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                                   for e in exc.errors())) from None

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)
        return 0

    return _async(run())


def _hbase_gateway(args: argparse.Namespace) -> int:
    from nxnw.services.hbase import run_gateway

    run_gateway(args.zookeeper, args.port, bind=args.bind, extension=not args.no_extension)  # replaces the process
    return 0


def _demo(args: argparse.Namespace) -> int:
    from nxnw.demo import DemoOptions, run_demo

    if len(args.fault) != len(args.fault_phase):
        raise ValueError(f"each --fault needs its --in PHASE: {len(args.fault)} --fault, {len(args.fault_phase)} --in")
    faults = [*zip(args.fault, args.fault_phase), *(("kill-orchestrator", p) for p in args.kill_orchestrator_in)]
    options = DemoOptions(source=args.source, target=args.target, seed_entities=args.entities, keys=args.keys,
                          clients=args.clients, ttl=args.ttl, status_port=args.status_port, faults=faults,
                          tamper_n2=args.tamper_n2)
    figures, ok = _async(run_demo(options))
    print()
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"result: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def _services_up(args: argparse.Namespace) -> int:
    with console.status("starting services (first run installs them; that takes a few minutes)…"):
        took = services.up(args.names or None)
    table = Table("service", "start", title="local services on 127.0.0.1")
    for name, seconds in took.items():
        table.add_row(name, "already up" if seconds == 0 else f"started in {seconds:.1f} s")
    Console().print(table)
    return 0


def _services_down(args: argparse.Namespace) -> int:
    services.down(args.names or None)
    return 0


def _services_status(args: argparse.Namespace) -> int:
    state = services.status()
    table = Table("service", "state")
    for name, ok in state.items():
        table.add_row(name, "[green]up[/]" if ok else "[red]down[/]")
    Console().print(table)
    return 0 if all(state.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxnw",
        description="Live migration of a PaaS data tier (datastore, memcache, ZooKeeper) from "
        "deployment N1 to N2, with applications reading and writing throughout.",
    )
    parser.add_argument("--version", action="version", version=f"nxnw {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    svc = verbs.add_parser("services", help="install, start, stop and check the local services on loopback")
    svc_verbs = svc.add_subparsers(dest="action", metavar="ACTION")
    svc_verbs.required = True
    names_help = f"services to act on (default: all of {', '.join(services.SERVICES)})"
    for action, func, text in [
        ("up", _services_up, "install on first use and start; returns when each answers a real request"),
        ("down", _services_down, "stop the services started by `up`"),
        ("status", _services_status, "probe each service with a real request (exit 1 if any is down)"),
    ]:
        p = svc_verbs.add_parser(action, help=text)
        p.add_argument("names", nargs="*", help=names_help)
        p.set_defaults(func=func)
    engines = ["sqlite", "cassandra", "hbase"]
    demo = verbs.add_parser("demo", help="a live migration on this machine under load, checked by a history checker",
                            description="Start the local services, migrate N1 -> N2 under a steady workload through "
                            "the proxy (every phase, DNS hand-off on the local BIND included) and print a report; "
                            "exit 0 only when nothing was lost, resurrected or read stale.")
    demo.add_argument("--from", dest="source", choices=engines, default="sqlite", help="N1's engine (default sqlite)")
    demo.add_argument("--to", dest="target", choices=engines, default="sqlite", help="N2's engine (default sqlite)")
    demo.add_argument("--entities", type=at_least(0), default=5000, help="entities seeded on N1 before the migration")
    demo.add_argument("--clients", type=at_least(1), default=4, help="concurrent workload clients")
    demo.add_argument("--ttl", type=at_least(1), default=2, help="DNS TTL during the hand-off, seconds")
    demo.add_argument("--status-port", type=int, default=None, help="serve the live status page on this port")
    demo.add_argument("--keys", type=at_least(1), default=200, help="keys the workload writes, deletes and reads")
    demo.add_argument("--fault", action="append", default=[], metavar="NAME",
                      help="inject this fault (repeatable, each with its --in): kill-proxy, pause-proxy, "
                      "expire-session, partition-zookeeper, n2-engine-down, n2-memcached-down, client-timeout, "
                      "kill-orchestrator")
    demo.add_argument("--in", dest="fault_phase", action="append", default=[], metavar="PHASE",
                      help="the phase the matching --fault is injected in: cow, snapshot+load, verify, proxy, handoff")
    demo.add_argument("--kill-orchestrator-in", nargs="*", default=[], metavar="PHASE",
                      help="short for --fault kill-orchestrator --in PHASE, for each PHASE")
    demo.add_argument("--tamper-n2", type=at_least(0), default=0, metavar="N",
                      help="proves the checker sees: delete N keys straight in N2's engine after the migration")
    demo.set_defaults(func=_demo)

    plan_help = "the migration plan (TOML)"
    migrate = verbs.add_parser("migrate", help="run or resume a migration: prepare, sync-zk, cow, snapshot+load, "
                               "verify, proxy, handoff, complete")
    migrate.add_argument("plan", help=plan_help)
    migrate.add_argument("--restart", action="store_true", help="forget a completed or rolled-back migration first")
    migrate.add_argument("--status-port", type=int, help="serve the live status page on this port")
    migrate.add_argument("--report", help="write the final HTML report here")
    migrate.add_argument("--until", metavar="PHASE", help="stop after this phase (e.g. proxy, to hand off DNS later)")
    migrate.add_argument("--dry-run", action="store_true", help="run the preflight and print the task graph (phase, "
                         "dependencies, which are done when resuming); change nothing")
    migrate.set_defaults(func=_migrate)

    status = verbs.add_parser("status", help="show the phase, the proxies' modes, the journal and finished tasks")
    status.add_argument("plan", help=plan_help)
    status.add_argument("--json", action="store_true", help="one JSON document on stdout instead of the table")
    status.set_defaults(func=_status)
    rollback = verbs.add_parser("rollback", help="go back to N1 from any phase before complete, losing nothing")
    rollback.add_argument("plan", help=plan_help)
    rollback.set_defaults(func=_rollback)

    verify = verbs.add_parser("verify", help="compare N1 and N2 app by app and list leftovers: lock znodes with no "
                              "holder, journal entries, old tombstones; exit 0 identical, 1 keys still differ "
                              "(printed), 2 error")
    verify.add_argument("plan", help=plan_help)
    verify.add_argument("--json", action="store_true", help="one JSON document on stdout (per app: differences, "
                        "repaired, the keys still differing; the leftovers) instead of the lines")
    verify.add_argument("--repair", action="store_true", help="copy N1's winning copy of each differing key to N2 "
                        "(and, in proxy mode, N2's newer copy to N1; never a key N1 never held), look again, and "
                        "remove lock znodes with no holder once mirroring has stopped; exit 1 if keys still differ")
    verify.add_argument("--scheduler", type=scheduler_address, help="a Dask scheduler (tcp://HOST:PORT) whose "
                        "workers scan the ranges (default: the plan's [scale] scheduler; none: in process)")
    verify.set_defaults(func=_verify)

    snapshot_cli.add_parser(verbs, _async)

    gateway = verbs.add_parser("hbase-gateway", help="run nxnw's HBase Thrift1 gateway beside a cluster, found by "
                               "its ZooKeeper quorum")
    gateway.add_argument("--zookeeper", required=True, metavar="QUORUM",
                         help="the cluster's ZooKeeper: host[:port][,host[:port]...]")
    gateway.add_argument("--port", type=int, default=9090, help="Thrift1 port (default 9090, as HBase's own Thrift server)")
    gateway.add_argument("--bind", default="0.0.0.0", help="address to listen on (default: every address)")
    gateway.add_argument("--no-extension", action="store_true",
                         help="answer as HBase's stock Thrift server (no mutateRowsTsEach)")
    gateway.set_defaults(func=_hbase_gateway)

    proxy = verbs.add_parser("proxy", help="run a proxy instance (N1's data endpoint during a migration)")
    proxy_verbs = proxy.add_subparsers(dest="action", metavar="ACTION")
    proxy_verbs.required = True
    serve = proxy_verbs.add_parser("serve", help="serve the data API until SIGTERM")
    serve.add_argument("plan", help=plan_help)
    serve.add_argument("--instance", required=True, help="this instance's name, unique among the proxies")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address the HTTP data API and the memcache port listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="HTTP data API port (default 8080; 0: any free one)")
    serve.add_argument("--memcache-port", type=int, default=None,
                       help="also speak the memcached protocol here (apps' memcache clients point at it unchanged)")
    serve.add_argument("--enable-flush-cmd", action="store_true",
                       help="serve flush_all on the memcache port (both sides, in the mode's order); refused by default")
    serve.add_argument("--memcache-fail-limit", type=int, default=3,
                       help="consecutive failures after which a memcached server is marked down (default 3)")
    serve.add_argument("--memcache-retry-after", type=float, default=2.0,
                       help="seconds a memcached server stays marked down before it is tried again (default 2)")
    serve.add_argument("--tls-cert", metavar="PEM", help="serve HTTP and memcache with TLS: this certificate (with --tls-key)")
    serve.add_argument("--tls-key", metavar="PEM", help="the key of --tls-cert")
    serve.add_argument("--tls-client-ca", metavar="PEM", help="mutual TLS: clients must present a certificate this CA signed")
    token = serve.add_mutually_exclusive_group()
    token.add_argument("--admin-token-file", metavar="PATH", help="file holding the /admin bearer token")
    token.add_argument("--admin-token-env", metavar="NAME", help="environment variable holding the /admin bearer token "
                       "(default NXNW_ADMIN_TOKEN; unset: /admin is refused)")
    serve.set_defaults(func=_proxy_serve)
    return parser


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``handler``'s status, or: 1 for an error that says the work failed (its class sets
    ``exit_status = 1``: a failed migration task, a rollback that cannot go back yet), 2 for
    bad input or an unreachable service, 130 when interrupted; each as one line (and the
    problems below it, for a preflight)."""
    try:
        return handler(args)
    except KeyboardInterrupt:
        console.print("nxnw: interrupted")
        return EXIT_INTERRUPTED
    except KazooException as exc:  # ZooKeeper lost outside a task (tasks report theirs as a failed task)
        console.print(f"nxnw {args.verb}: ZooKeeper: {type(exc).__name__}: {exc}", markup=False, highlight=False)
        return EXIT_BAD_INPUT
    except (services.ServicesDown, PlanError, KeyError, ValueError, OSError, RuntimeError, EngineUnavailable) as exc:
        text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str() quotes it
        first, _, rest = text.partition("\n")
        console.print(f"nxnw {args.verb}: {first}", markup=False, highlight=False)
        if rest:
            console.print(rest, markup=False, highlight=False)
        return getattr(exc, "exit_status", EXIT_BAD_INPUT)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(quiet_libraries=args.verb != "proxy")
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
