"""Per-write latency of small writes through ``Engine.apply``, and of two at once (a ``cow`` PUT).

What the proxy asks of an engine per PUT is one ``apply`` of one entity; in ``cow`` it asks
two engines at once (``proxy.routes.dual_apply``, as ``DualWriteRoute`` does: each leg in
place when the engine can, a leg that waits beside the other). This measures both,
in-process on uvloop (no HTTP), for 1 and 8 concurrent writers and 100 B and 1 KB values:
p50 / p99 µs per call and calls per second, and the ratio of the dual write's p50 to the
single write's — the part of issue 13's "cow ≤ 1.10× passthrough" that the engine decides.

Besides each engine as it is, three other designs for SQLite's small writes are measured
beside it, so the choice stays visible in one run (none of them can write in place, so
``dual_apply`` overlaps their two legs as it does a network engine's):

* ``sqlite thread hop`` — every write handed to the engine's thread and back (the engine's
  design before small writes moved onto the event loop);
* ``sqlite group commit`` — writes queued on the loop; one job on the engine thread at a
  time commits everything queued in one transaction (concurrent callers share one hop and
  one commit);
* ``sqlite loop group`` — the small writes that arrive in one loop iteration committed
  together on the loop connection at its end (one more loop iteration per write).

Run: ``python -m bench.engine_writes [--engines sqlite cassandra] [--rounds 5] [--writes 2000]``.
Every candidate runs each case back to back within a round, in an order that rotates per
round; the figures are medians over rounds. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench._util import machine, pct, write_json
from datastore import Engine, Entity, open_engine
from datastore.engines.sqlite import LOOP_MAX_BYTES, LOOP_MAX_ENTITIES, SqliteEngine, _rows
from nxnw import services
from nxnw.services.endpoints import engine_url
from proxy.routes import dual_apply

KEYS = 1000


class _NeverInPlace(SqliteEngine):
    """A candidate whose writes all go through its own ``_write_batch``."""

    def apply_in_place(self, entities: Sequence[Entity]) -> bool:
        return False


class ThreadHopSqlite(_NeverInPlace):
    """The candidate "every write on the engine thread"."""

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        await self._run(self._apply_on_thread, entities)


class GroupCommitSqlite(_NeverInPlace):
    """The candidate "group commit": one transaction on the engine thread for every write
    queued while the previous one ran."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._queue: list[tuple[Sequence[Entity], asyncio.Future[None]]] = []
        self._committing = False

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((entities, fut))
        if not self._committing:
            self._commit_queued()
        await asyncio.shield(fut)

    def _commit_queued(self) -> None:
        group, self._queue = self._queue, []
        self._committing = True
        job = asyncio.ensure_future(self._run(self._apply_on_thread, [e for batch, _ in group for e in batch]))

        def done(job: asyncio.Future[None]) -> None:
            self._committing = False
            for _, fut in group:
                if fut.done():
                    continue
                if job.cancelled():
                    fut.cancel()
                elif job.exception() is not None:
                    fut.set_exception(job.exception())
                else:
                    fut.set_result(None)
            if self._queue:
                self._commit_queued()

        job.add_done_callback(done)


class LoopGroupCommitSqlite(_NeverInPlace):
    """The candidate "group commit on the loop": the small writes that arrive in one loop
    iteration are committed together on the loop connection at the end of it (one more
    loop iteration per write); a busy lock sends the group to the engine thread."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._queue: list[tuple[Sequence[Entity], asyncio.Future[None]]] = []

    async def _write_batch(self, entities: Sequence[Entity]) -> None:
        if len(entities) > LOOP_MAX_ENTITIES:
            await self._run(self._apply_on_thread, entities)
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._commit_queued)
        self._queue.append((entities, fut))
        await asyncio.shield(fut)

    def _commit_queued(self) -> None:
        group, self._queue = self._queue, []
        batch = [e for entities, _ in group for e in entities]
        rows, size = _rows(batch)
        try:
            if self._checkpoint is not None or size > LOOP_MAX_BYTES or self._loop_conn is None:
                raise sqlite3.OperationalError("to the thread")
            self._pages_written(self._apply(self._loop_conn, rows, size))
        except sqlite3.OperationalError:
            job = asyncio.ensure_future(self._run(self._apply_on_thread, batch))
            job.add_done_callback(lambda job: _settle(group, job))
            return
        for _, fut in group:
            if not fut.done():
                fut.set_result(None)


def _settle(group: list[tuple[Sequence[Entity], asyncio.Future[None]]], job: asyncio.Future[None]) -> None:
    for _, fut in group:
        if fut.done():
            continue
        if job.cancelled():
            fut.cancel()
        elif job.exception() is not None:
            fut.set_exception(job.exception())
        else:
            fut.set_result(None)


#: name -> (engine, factory from URL to an unopened engine)
CANDIDATES: dict[str, tuple[str, Callable[[str], Engine]]] = {
    "sqlite": ("sqlite", open_engine),
    "sqlite thread hop": ("sqlite", ThreadHopSqlite),
    "sqlite group commit": ("sqlite", GroupCommitSqlite),
    "sqlite loop group": ("sqlite", LoopGroupCommitSqlite),
    "cassandra": ("cassandra", open_engine),
}


async def _writes(engines: Sequence[Engine], app: str, writers: int, writes: int, value: bytes,
                  ts0: int) -> tuple[list[float], float]:
    """``writes`` calls spread over ``writers`` coroutines; each call applies one entity to
    every engine at once. Returns µs per call and calls per second."""
    latencies: list[float] = []
    per_writer = max(1, writes // writers)

    async def writer(w: int) -> None:
        for i in range(per_writer):
            n = w * per_writer + i
            entity = Entity(app, "W", b"key-%04d" % (n % KEYS), value, ts0 + n)
            t = time.perf_counter()
            if len(engines) == 1:
                await engines[0].apply([entity])
            else:
                error = await dual_apply(engines[0], engines[1], [entity])
                if error is not None:
                    raise error
            latencies.append((time.perf_counter() - t) * 1e6)

    start = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return latencies, len(latencies) / (time.perf_counter() - start)


async def _round(candidates: list[str], cases: list[tuple[int, int]], writes: int, sqlite_dir: str) -> dict[str, Any]:
    """One round: every candidate, every case, single and dual, back to back."""
    out: dict[str, Any] = {}
    ts0 = time.time_ns() // 1000
    for name in candidates:
        engine_name, factory = CANDIDATES[name]
        engines = [factory(engine_url(engine_name, side, sqlite_dir)) for side in ("n1", "n2")]
        for engine in engines:
            await engine.open()
        app = f"bench_{uuid.uuid4().hex[:8]}"
        try:
            for engine in engines:  # tables exist and pages are cached before the timing
                await engine.apply([Entity(app, "W", b"key-%04d" % k, b"w", 1) for k in range(KEYS)])
            for writers, size in cases:
                value = b"v" * size
                for label, used in (("single", engines[:1]), ("dual", engines)):
                    ts0 += writes + 1
                    latencies, rate = await _writes(used, app, writers, writes, value, ts0)
                    out[f"{name}|{writers}|{size}|{label}"] = {
                        "p50": pct(latencies, 50), "p99": pct(latencies, 99), "rate": rate}
        finally:
            for engine in engines:
                await engine.drop_app(app)
                await engine.close()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    candidates = [name for name in CANDIDATES if CANDIDATES[name][0] in args.engines]
    services.up([e for e in args.engines if e != "sqlite"])
    cases = [(writers, size) for writers in args.writers for size in args.sizes]
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as sqlite_dir:
        for r in range(args.rounds):
            order = candidates[r % len(candidates):] + candidates[:r % len(candidates)]
            rounds.append(uvloop.run(_round(order, cases, args.writes, sqlite_dir)))
    summary: dict[str, Any] = {}
    for key in rounds[0]:
        summary[key] = {m: statistics.median(r[key][m] for r in rounds) for m in ("p50", "p99", "rate")}
    for name in candidates:
        for writers, size in cases:
            base = f"{name}|{writers}|{size}"
            summary[f"{base}|dual/single"] = statistics.median(
                r[f"{base}|dual"]["p50"] / r[f"{base}|single"]["p50"] for r in rounds)
    return summary


def print_summary(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"engine writes: one entity per apply, {args.writes} calls per case, median of {args.rounds} rounds")
    print(f"  {machine()}")
    print(f"{'candidate':>20} {'writers':>7} {'bytes':>6} | {'single p50':>10} {'p99':>8} {'calls/s':>8}"
          f" | {'dual p50':>8} {'p99':>8} {'calls/s':>8} | dual/single p50")
    names = dict.fromkeys(key.split("|")[0] for key in summary)
    for name in names:
        for writers in args.writers:
            for size in args.sizes:
                base = f"{name}|{writers}|{size}"
                single, dual = summary[f"{base}|single"], summary[f"{base}|dual"]
                print(f"{name:>20} {writers:>7} {size:>6} | {single['p50']:>10.0f} {single['p99']:>8.0f} "
                      f"{single['rate']:>8,.0f} | {dual['p50']:>8.0f} {dual['p99']:>8.0f} {dual['rate']:>8,.0f} | "
                      f"{summary[f'{base}|dual/single']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="*", default=["sqlite", "cassandra"], choices=["sqlite", "cassandra"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=2000, help="calls per case (default 2000)")
    parser.add_argument("--writers", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100, 1024])
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    summary = run(args)
    print_summary(summary, args)
    write_json(args.json, summary)


if __name__ == "__main__":
    main()
