"""``nxnw snapshot copy|export|load``: the snapshot phase by hand, with a progress bar.

``copy`` streams one app from N1's engine into N2's with no staging copy; ``export``
writes the chunk stream to a file (a manifest of its ranges first) and ``load`` applies
one, exiting non-zero with the ranges named when the file lacks any range's final chunk
(a file cut short; see snapshot/chunks.py). With ``--zookeeper`` (N1's)
the loader checkpoints each finished range there, so a killed ``copy`` or ``load``
started again with the same ``--task`` skips what it finished. A secured ensemble's
settings come from ``--zookeeper-security FILE`` (the keys of a plan's
``[n1.zookeeper_security]``), so the checkpoints get the same digest ACL as a plan's.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from datastore import Engine, open_engine
from nxnw.checkpoints import ZooKeeperRangeCheckpoints
from nxnw.config import at_least, load_zookeeper_security, scheduler_address
from nxnw.zk import zk_session
from snapshot import Loader, LoadStats, copy_app, encode, encode_manifest, export_chunks, plan_ids, read_chunks
from sync.state import TaskRecordStore
from sync.zk_client import ZooKeeperSecurity


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("ranges  {task.fields[entities]:,} entities  {task.fields[mib]:.1f} MiB  "
                               "{task.fields[rate]:,.0f}/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def _reporter(progress: Progress, task_id) -> Callable[[LoadStats], None]:
    def update(stats: LoadStats) -> None:
        progress.update(task_id, total=stats.ranges_total or None, completed=stats.ranges_done,
                        entities=stats.entities, mib=stats.bytes / 2**20, rate=stats.rate)
    return update


@asynccontextmanager
async def _engine(url: str) -> AsyncIterator[Engine]:
    engine = open_engine(url)
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


@asynccontextmanager
async def _checkpoints(hosts: str | None, security: ZooKeeperSecurity | None) \
        -> AsyncIterator[ZooKeeperRangeCheckpoints | None]:
    if hosts is None:
        yield None
        return
    async with zk_session(hosts, "the checkpoints'", security) as zk:
        yield ZooKeeperRangeCheckpoints(TaskRecordStore(zk))


def _security(args: argparse.Namespace) -> ZooKeeperSecurity | None:
    """``--zookeeper-security``'s settings, read before any engine is opened; ValueError
    when it comes without ``--zookeeper`` (it would secure nothing)."""
    if args.zookeeper_security is None:
        return None
    if args.zookeeper is None:
        raise ValueError("--zookeeper-security needs --zookeeper: it says how to reach the checkpoints' ZooKeeper")
    return load_zookeeper_security(args.zookeeper_security)


async def copy(args: argparse.Namespace) -> int:
    task = args.task or f"copy.{args.app}"
    if args.source == args.target:
        raise ValueError(f"--from and --to name the same engine {args.source!r}: a copy needs two")
    security = _security(args)
    if args.scheduler:
        from nxnw.dask_ranges import check_scheduler
        await check_scheduler(args.scheduler)
    async with _engine(args.source) as n1, _engine(args.target) as n2, \
            _checkpoints(args.zookeeper, security) as checkpoints:
        with progress_bar() as progress:
            bar = progress.add_task(f"copy {args.app}", total=None, entities=0, mib=0.0, rate=0.0)
            if args.scheduler:
                from nxnw.dask_ranges import copy_app_distributed
                stats = await copy_app_distributed(args.scheduler, n1, n2, args.app, task=task,
                                                   zookeeper=args.zookeeper, zookeeper_security=security,
                                                   at_least=args.ranges,
                                                   on_progress=_reporter(progress, bar))
            else:
                stats = await copy_app(n1, n2, args.app, task=task, checkpoints=checkpoints, at_least=args.ranges,
                                       export_workers=args.workers, load_workers=args.workers * 2,
                                       on_progress=_reporter(progress, bar))
            _reporter(progress, bar)(stats)
    print(f"copied {stats.entities} entities ({stats.tombstones} tombstones, {stats.bytes / 2**20:.1f} MiB) in "
          f"{stats.seconds:.1f} s, {stats.rate:,.0f}/s; {stats.ranges_skipped} of {stats.ranges_total} ranges "
          "were already done")
    return 0


async def export(args: argparse.Namespace) -> int:
    async with _engine(args.source) as n1:
        plan = plan_ids(await n1.ranges(args.app, at_least=args.ranges))
        stats = LoadStats(ranges_total=len(plan))
        with open(args.out, "wb") as out, progress_bar() as progress:
            bar = progress.add_task(f"export {args.app}", total=len(plan), entities=0, mib=0.0, rate=0.0)
            out.write(encode_manifest(args.app, plan))
            async for chunk in export_chunks(n1, args.app, plan, workers=args.workers):
                data = encode(chunk)
                out.write(data)
                stats.entities += len(chunk.entities)
                stats.bytes += len(data)
                stats.ranges_done += chunk.final
                _reporter(progress, bar)(stats)
    print(f"exported {stats.entities} entities in {len(plan)} ranges to {args.out} "
          f"({stats.bytes / 2**20:.1f} MiB compressed) in {stats.seconds:.1f} s")
    return 0


async def load(args: argparse.Namespace) -> int:
    task = args.task or f"load.{args.app or 'file'}"
    security = _security(args)
    async with _engine(args.target) as n2, _checkpoints(args.zookeeper, security) as checkpoints:
        done = await checkpoints.completed(task) if checkpoints is not None else set()

        async def chunks():
            with open(args.input, "rb") as stream:
                for chunk in read_chunks(stream):
                    yield chunk

        with progress_bar() as progress:
            bar = progress.add_task(f"load {args.input}", total=None, entities=0, mib=0.0, rate=0.0)
            loader = Loader(n2, task=task, checkpoints=checkpoints, workers=args.workers,
                            on_progress=_reporter(progress, bar))
            stats = await loader.load(chunks(), skip=done)
    print(f"loaded {stats.entities} entities in {stats.seconds:.1f} s, {stats.rate:,.0f}/s; "
          f"skipped {len(done)} ranges already done")
    return 0


def add_parser(verbs: argparse._SubParsersAction, run: Callable) -> None:
    snap = verbs.add_parser("snapshot", help="copy, export or load one app's data by hand (progress bar, resumable)")
    actions = snap.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    zk_help = "N1's ZooKeeper (host:port[/chroot]) for range checkpoints; a rerun with the same --task resumes"
    security_help = ("a TOML file with the keys of a plan's [n1.zookeeper_security] (digest_user, digest_password "
                     "= {env = \"NAME\"} or {file = \"PATH\"}, tls, tls_ca, tls_cert, tls_key) for a secured "
                     "--zookeeper; the checkpoints get the digest's ACL")

    p = actions.add_parser("copy", help="stream an app from one engine straight into another")
    p.add_argument("--from", dest="source", required=True, help="N1's engine URL")
    p.add_argument("--to", dest="target", required=True, help="N2's engine URL")
    p.add_argument("--app", required=True, help="the app (a lower-case letter, then up to 47 of a-z 0-9 _)")
    p.add_argument("--zookeeper", help=zk_help)
    p.add_argument("--zookeeper-security", metavar="FILE", help=security_help)
    p.add_argument("--task", help="checkpoint task name (default copy.APP)")
    p.add_argument("--ranges", type=at_least(1), default=32, help="at least this many ranges (default 32)")
    p.add_argument("--workers", type=at_least(1), default=4,
                   help="ranges read at once; twice as many batches load at once (default 4)")
    p.add_argument("--scheduler", type=scheduler_address, help="a Dask scheduler (tcp://HOST:PORT): its workers "
                   "copy the ranges, one task per range (--workers is then unused)")
    p.set_defaults(func=lambda a: run(copy(a)))

    p = actions.add_parser("export", help="write an app's chunk stream to a file")
    p.add_argument("--from", dest="source", required=True, help="engine URL")
    p.add_argument("--app", required=True, help="the app (a lower-case letter, then up to 47 of a-z 0-9 _)")
    p.add_argument("--out", required=True, help="the chunk file to write")
    p.add_argument("--ranges", type=at_least(1), default=32, help="at least this many ranges (default 32)")
    p.add_argument("--workers", type=at_least(1), default=4, help="ranges read at once (default 4)")
    p.set_defaults(func=lambda a: run(export(a)))

    p = actions.add_parser("load", help="apply a chunk file to an engine, last-write-wins")
    p.add_argument("--to", dest="target", required=True, help="engine URL")
    p.add_argument("--in", dest="input", required=True, help="the chunk file to read")
    p.add_argument("--app", help="only used to name the default task")
    p.add_argument("--zookeeper", help=zk_help)
    p.add_argument("--zookeeper-security", metavar="FILE", help=security_help)
    p.add_argument("--task", help="checkpoint task name (default load.APP)")
    p.add_argument("--workers", type=at_least(1), default=8, help="batches applied at once (default 8)")
    p.set_defaults(func=lambda a: run(load(a)))
