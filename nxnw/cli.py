"""The ``nxnw`` command line: one verb per operator step, one readable line per error.

Every failure an operator can cause or meet (a bad flag, a service that will not start,
a bad plan file) ends with exit status 2 and a single line saying what and why; a
traceback means a bug in nxnw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from nxnw import __version__, logs, services, snapshot_cli
from datastore import EngineUnavailable
from nxnw.config import PlanError, load_plan, scheduler_address

console = Console(stderr=True, soft_wrap=True)


def _async(coro) -> int:
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:  # uvloop is a dependency; this only guards odd platforms
        return asyncio.run(coro)


def _migrate(args: argparse.Namespace) -> int:
    from aiohttp import web

    from nxnw.orchestrator import Orchestrator, preflight
    from nxnw.proxy_watch import ProxyWatch
    from nxnw.status_page import render_report, status_app

    plan = load_plan(args.plan)
    if args.status_port is not None:
        plan.status_port = args.status_port

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
        orchestrator = Orchestrator(plan)
        orchestrator.progress.on_event = lambda line: console.print(line, markup=False, highlight=False)
        await orchestrator.connect()
        runner = None
        reporter = asyncio.create_task(report_load(orchestrator))
        try:
            if args.restart:
                await orchestrator.restart()
            if plan.status_port is not None:
                watch = ProxyWatch(plan.n1.proxies, plan.n2.proxies)
                runner = web.AppRunner(status_app(orchestrator.status, watch), access_log=None)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", plan.status_port).start()
                console.print(f"status page: http://127.0.0.1:{plan.status_port}/")
            state = await orchestrator.migrate(until=args.until)
            if args.report:
                Path(args.report).write_text(render_report(orchestrator.status()))
            console.print(f"migration {plan.name}: phase {state.phase}")
            return 0
        finally:
            reporter.cancel()
            if runner is not None:
                await runner.cleanup()
            await orchestrator.close()

    return _async(run())


def _rollback(args: argparse.Namespace) -> int:
    from nxnw.orchestrator import Orchestrator

    plan = load_plan(args.plan)

    async def run() -> int:
        orchestrator = Orchestrator(plan)
        await orchestrator.connect()
        try:
            state = await orchestrator.rollback()
            console.print(f"migration {plan.name}: rolled back from {state.data.get('from')}; N1 serves every write")
            return 0
        finally:
            await orchestrator.close()

    return _async(run())


def _status(args: argparse.Namespace) -> int:
    from kazoo.client import KazooClient

    from proxy.control import journal_depth, members
    from sync.mode import load_verified_epoch, read_mode
    from sync.state import CheckpointStore, MigrationStateStore

    plan = load_plan(args.plan)
    zk = KazooClient(hosts=plan.n1.zookeeper, timeout=5)
    try:
        zk.start(8)
    except Exception as exc:
        raise ConnectionError(f"N1's ZooKeeper at {plan.n1.zookeeper} did not answer: {type(exc).__name__}") from exc
    try:
        state = MigrationStateStore(zk).get()
        tasks = CheckpointStore(zk).list(f"{plan.name}._tasks")
        table = Table("what", "value", title=f"migration {plan.name}")
        table.add_row("phase", "not started" if state is None else state.phase)
        mode, verified = read_mode(zk), load_verified_epoch(zk)
        table.add_row("mode", "no mode set" if mode is None else f"{mode.mode} (epoch {mode.epoch})"
                      + ("" if verified is None else f"; load verified in cow epoch {verified}"))
        for name, proxy in sorted(members(zk).items()):
            table.add_row(f"proxy {name}", f"mode {proxy.get('mode')} (epoch {proxy.get('epoch')})")
        table.add_row("repair journal", f"to N2: {journal_depth(zk, 'n2')}, to N1: {journal_depth(zk, 'n1')}")
        for name, result in sorted(tasks.items(), key=lambda kv: kv[1].get("finished", 0)):
            if not name.startswith("_"):
                detail = ", ".join(f"{k} {v}" for k, v in result.items() if k not in ("phase", "started", "finished"))
                table.add_row(f"done: {name}", detail)
        Console().print(table)
        return 0
    finally:
        zk.stop()
        zk.close()


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when N1 and N2 hold the same data (after ``--repair``, once repaired), 1 when
    some keys still differ (each printed on a line of its own), 2 on an error."""
    from datastore import open_engine
    from nxnw.dask_ranges import check_scheduler, verify_app_distributed
    from nxnw.leftovers import find_leftovers
    from nxnw.zk import zk_session
    from snapshot import verify_app
    from sync.aio import run_blocking
    from sync.mode import read_mode

    plan = load_plan(args.plan)
    scheduler = args.scheduler or plan.scale.scheduler

    async def run() -> int:
        if scheduler:
            await check_scheduler(scheduler)
        async with zk_session(plan.n1.zookeeper, "N1's") as zk:
            mode = await run_blocking(read_mode, zk)
        # Only in proxy mode are N2's newer copies writes N1 has yet to receive (see snapshot/verify.py).
        n2_primary = mode is not None and mode.mode == "proxy"
        n1, n2 = open_engine(plan.n1.engine), open_engine(plan.n2.engine)
        await n1.open()
        await n2.open()
        try:
            clean = True
            for app in plan.apps:
                if scheduler:
                    report = await verify_app_distributed(scheduler, n1, n2, app, repair=args.repair,
                                                          n2_primary=n2_primary, ranges=plan.thresholds.ranges_per_app)
                else:
                    report = await verify_app(n1, n2, app, repair=args.repair, n2_primary=n2_primary)
                print(report.summary())
                for diff in report.remaining:
                    reason = report.reasons.get(diff.label)
                    print(f"  differs: app {app} key {diff.label}: {diff.kind}" + (f"; {reason}" if reason else ""))
                clean = clean and report.ok
            for line in (await find_leftovers(plan, n2, repair=args.repair)).lines():
                print(line)
            return 0 if clean else 1
        finally:
            await n1.close()
            await n2.close()

    return _async(run())


def _proxy_serve(args: argparse.Namespace) -> int:
    from proxy.config import ProxyConfig
    from proxy.server import serve

    plan = load_plan(args.plan)
    config = ProxyConfig(instance=args.instance, node_id=args.node_id, n1_engine=plan.n1.engine,
                         n2_engine=plan.n2.engine, n1_zookeeper=plan.n1.zookeeper, n2_zookeeper=plan.n2.zookeeper,
                         n1_memcached=plan.n1.memcached, n2_memcached=plan.n2.memcached, http_host=args.host,
                         http_port=args.port, memcache_port=args.memcache_port,
                         shadow_rate=plan.thresholds.shadow_rate, journal_bound=plan.thresholds.journal_bound,
                         admin_token=os.environ.get("NXNW_ADMIN_TOKEN", ""))

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
    demo.add_argument("--entities", type=int, default=5000, help="entities seeded on N1 before the migration")
    demo.add_argument("--clients", type=int, default=4, help="concurrent workload clients")
    demo.add_argument("--ttl", type=int, default=2, help="DNS TTL during the hand-off, seconds")
    demo.add_argument("--status-port", type=int, default=None, help="serve the live status page on this port")
    demo.add_argument("--keys", type=int, default=200, help="keys the workload writes, deletes and reads")
    demo.add_argument("--fault", action="append", default=[], metavar="NAME",
                      help="inject this fault (repeatable, each with its --in): kill-proxy, pause-proxy, "
                      "expire-session, n2-engine-down, n2-memcached-down, client-timeout, kill-orchestrator")
    demo.add_argument("--in", dest="fault_phase", action="append", default=[], metavar="PHASE",
                      help="the phase the matching --fault is injected in: cow, snapshot+load, verify, proxy, handoff")
    demo.add_argument("--kill-orchestrator-in", nargs="*", default=[], metavar="PHASE",
                      help="short for --fault kill-orchestrator --in PHASE, for each PHASE")
    demo.add_argument("--tamper-n2", type=int, default=0, metavar="N",
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
    migrate.set_defaults(func=_migrate)

    for verb, func, text in [("status", _status, "show the phase, the proxies' modes, the journal and finished tasks"),
                             ("rollback", _rollback, "go back to N1 from any phase before complete, losing nothing")]:
        p = verbs.add_parser(verb, help=text)
        p.add_argument("plan", help=plan_help)
        p.set_defaults(func=func)

    verify = verbs.add_parser("verify", help="compare N1 and N2 app by app and list leftovers: lock znodes with no "
                              "holder, journal entries, old tombstones; exit 0 identical, 1 keys still differ "
                              "(printed), 2 error")
    verify.add_argument("plan", help=plan_help)
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
    serve.add_argument("--node-id", type=int, required=True, help="the clock's writer id, 0-15, unique per instance")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--memcache-port", type=int, default=None, help="also speak the memcached protocol here")
    serve.set_defaults(func=_proxy_serve)
    return parser


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except KeyboardInterrupt:
        console.print("nxnw: interrupted")
        return 130
    except (services.ServicesDown, PlanError, KeyError, ValueError, OSError, RuntimeError, EngineUnavailable) as exc:
        first, _, rest = str(exc).partition("\n")
        console.print(f"nxnw {args.verb}: {first}", markup=False, highlight=False)
        if rest:
            console.print(rest, markup=False, highlight=False)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure()
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
