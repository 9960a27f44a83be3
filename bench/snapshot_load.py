"""Snapshot load, export and verify rates per entity size, beside each engine's own bulk path.

For each entity size (100 B, 1 KB, 10 KB, 100 KB; incompressible random values) the
benchmark seeds an app on an embedded N1 (SQLite) and then, in one run:

* **export** — ``snapshot.export_chunks`` over N1's ranges, each chunk ``encode``d and
  written to a chunk file: entities/s into the file (N1 is SQLite whatever the target).
* **load** — ``snapshot.copy_app`` from N1 into each target engine (N2): the
  orchestrator's path, with the plan's default range count and worker counts, export and
  load streaming through ``Loader``, every entity applied last-write-wins with its
  timestamp. The target table is created before the clock starts (one warm-up entity
  that N1 holds too), as it is for the bulk path.
* **the engine's own bulk path, on the same rows**: SQLite — one ``executemany`` of plain
  ``INSERT``s in one transaction into a fresh file (same PRAGMAs, same schema, no
  last-write-wins guard); Cassandra — ``cqlsh COPY FROM`` a CSV of the same rows into a
  table of the same schema (CSV written before timing; the rate uses the seconds cqlsh
  itself reports, which leaves out its ~1 s start-up; ``MAXBATCHSIZE`` is cut for large
  rows so that a batch stays under Cassandra's 50 KiB batch limit; COPY cannot set write
  timestamps, so it is not a migration path, only the speed to beat); HBase — none: its
  bulk load writes HFiles from MapReduce (``completebulkload``), which is not reachable
  through the Thrift gateway that nxnw uses, so no figure is printed rather than a made-up
  one (the gateway's batched ``mutateRowsTsEach`` is nxnw's own load path, measured as such).
* **verify** — ``snapshot.verify_app`` of N1 against the loaded N2: N1's entities compared
  per second (both sides are scanned and digested), beside **N1's scan alone**
  (``Engine.scan_rows`` over the same ranges, as many at once as verify reads): the
  ceiling of one side of verify.

Prints entities/s and ms per entity amortised (wall time / entities), then issue 13's two
goals with a verdict each (1 KB, SQLite on both sides: load ÷ ``executemany`` ≥ 0.8×,
verify ≥ 100,000 entities/s) and the other engines' 1 KB figures beside their bulk paths. The DESIGN goal is
< 0.1 ms per 1 KB entity (≥ 10,000/s) and at least the rate of ``cqlsh COPY FROM``; the
AppScale paper's loader took 2.45–3.18 ms per entity. Default counts: 100,000 entities of
100 B and of 1 KB, 20,000 of 10 KB, 2,000 of 100 KB; ``--quick`` takes a tenth.
``--hbase-max N`` caps HBase's share (the first N rows of the same data) for a gateway
without batched per-row timestamps, where a load is one Thrift call per entity.

Run: ``.venv/bin/python -m bench.snapshot_load [--quick] [--engines sqlite cassandra hbase]
[--sizes 100 1024 10240 102400] [--rounds 1] [--hbase-max 0]``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench._util import fmt, machine, median, write_json

KIND = "E"
#: Issue 13's goals: load at least this share of the engine's own bulk path, verify at
#: least this many entities/s (1 KB values, SQLite on both sides).
LOAD_GOAL = 0.8
VERIFY_GOAL = 100_000
SIZES = (100, 1024, 10 * 1024, 100 * 1024)
DEFAULT_COUNTS = {100: 100_000, 1024: 100_000, 10 * 1024: 20_000, 100 * 1024: 2_000}
ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"]}
#: Cassandra refuses a multi-row batch above 50 KiB (batch_size_fail_threshold); cqlsh
#: COPY batches MAXBATCHSIZE rows, so large rows get smaller batches (single-row batches
#: are exempt from the limit).
CASSANDRA_BATCH_BUDGET = 40 * 1024


def size_name(size: int) -> str:
    return f"{size // 1024} KB" if size >= 1024 else f"{size} B"


def make_rows(count: int, size: int) -> list[tuple[bytes, bytes, int]]:
    """``(key, value, ts)`` rows: distinct keys, random (incompressible) values, distinct timestamps."""
    base = time.time_ns() // 1000 - 3_600_000_000
    return [(b"key-%08d" % i, os.urandom(size), base + i * 16) for i in range(count)]


# --- the engines' own bulk paths -----------------------------------------------------------

def sqlite_executemany(rows: list[tuple[bytes, bytes, int]], path: Path) -> float:
    """Plain INSERTs of the same rows, one transaction, the engine's schema and PRAGMAs; seconds."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE e_bulk (rid INTEGER PRIMARY KEY, rk BLOB NOT NULL UNIQUE, value BLOB, ts INTEGER NOT NULL)")
    prefix = KIND.encode() + b"\x00"
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO e_bulk (rk, value, ts) VALUES (?, ?, ?)", ((prefix + k, v, ts) for k, v, ts in rows))
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return seconds


def cqlsh_command() -> list[str] | None:
    script = Path(sys.executable).with_name("cqlsh")
    if script.exists():
        return [str(script)]
    found = shutil.which("cqlsh")
    return [found] if found else None


_COPY_DONE = re.compile(r"(\d+) rows imported from \d+ files? in (.+?) \((\d+) skipped\)")
_DURATION_PART = re.compile(r"([\d.]+) (day|hour|minute|second)s?")
_UNIT_SECONDS = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}


def _copy_seconds(text: str) -> float:
    """cqlsh's own duration: "1.518 seconds" or "0 day, 0 hour, 0 minute, and 1.518 seconds"."""
    parts = _DURATION_PART.findall(text)
    if not parts:
        raise ValueError(f"cqlsh reported a duration {text!r} this benchmark cannot read")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in parts)


def cqlsh_copy_from(rows: list[tuple[bytes, bytes, int]], size: int, work: Path, processes: int | None) -> dict[str, Any]:
    """``cqlsh COPY FROM`` a CSV of the rows into a fresh table of the engine's schema.

    Returns ``{"rate": rows/s by cqlsh's own seconds, "wall": process seconds, ...}`` or
    ``{"error": why}`` — never a figure that was not measured."""
    from nxnw.services.endpoints import CASSANDRA_CQL, CASSANDRA_KEYSPACES, HOST

    cqlsh = cqlsh_command()
    if cqlsh is None:
        return {"error": "cqlsh is not installed (pip install -e '.[bench]')"}
    keyspace = CASSANDRA_KEYSPACES["n2"]
    table = f"bench_copy_{uuid.uuid4().hex[:8]}"
    csv = work / f"{table}.csv"
    prefix = KIND.encode() + b"\x00"
    with open(csv, "w") as out:
        for key, value, _ in rows:
            out.write(f"0x{(prefix + key).hex()},0x{value.hex()},False\n")
    rc = work / "cqlshrc"
    rc.write_text("[csv]\nfield_size_limit = 100000000\n")
    base = [*cqlsh, "--cqlshrc", str(rc), "--disable-history", "--request-timeout", "120", HOST, str(CASSANDRA_CQL)]
    env = dict(os.environ, HOME=str(work))
    create = (f'CREATE TABLE "{keyspace}"."{table}" (rk blob PRIMARY KEY, value blob, deleted boolean)')
    made = subprocess.run([*base, "-e", create], capture_output=True, text=True, env=env, cwd=work, timeout=180)
    if made.returncode != 0:
        return {"error": f"cqlsh could not create the table (exit {made.returncode}): "
                         f"{(made.stderr or made.stdout).strip().splitlines()[-1:] or ''}"}
    batch = max(1, min(20, CASSANDRA_BATCH_BUDGET // (size + 64)))
    options = f"HEADER=false AND MAXBATCHSIZE={batch} AND MINBATCHSIZE={min(batch, 10)}"
    if processes:
        options += f" AND NUMPROCESSES={processes}"
    copy = f"COPY \"{keyspace}\".\"{table}\" (rk, value, deleted) FROM '{csv}' WITH {options}"
    try:
        started = time.perf_counter()
        done = subprocess.run([*base, "-e", copy], capture_output=True, text=True, env=env, cwd=work, timeout=1800)
        wall = time.perf_counter() - started
    finally:
        subprocess.run([*base, "-e", f'DROP TABLE IF EXISTS "{keyspace}"."{table}"'], capture_output=True, env=env,
                       cwd=work, timeout=180)
        csv.unlink(missing_ok=True)
    text = done.stdout + done.stderr
    match = _COPY_DONE.search(text)
    if done.returncode != 0 or match is None:
        last = " | ".join(text.strip().splitlines()[-3:])
        return {"error": f"cqlsh COPY FROM failed (exit {done.returncode}): {last[-400:]}"}
    imported, seconds, skipped = int(match.group(1)), _copy_seconds(match.group(2)), int(match.group(3))
    if imported != len(rows):
        return {"error": f"cqlsh COPY FROM imported {imported} of {len(rows)} rows ({skipped} skipped): "
                         + " | ".join(text.strip().splitlines()[-3:])[-300:]}
    return {"rate": imported / seconds, "seconds": seconds, "wall": wall, "wall_rate": imported / wall,
            "options": options}


# --- our paths -------------------------------------------------------------------------------

async def seed(n1, app: str, rows: list[tuple[bytes, bytes, int]]) -> None:
    from datastore import Entity

    for start in range(0, len(rows), 1000):
        await n1.apply([Entity(app, KIND, k, v, ts) for k, v, ts in rows[start:start + 1000]])


async def export_to_file(n1, app: str, path: Path, ranges: int, workers: int) -> tuple[int, float, int]:
    from snapshot import encode, export_chunks, plan_ids

    started = time.perf_counter()
    entities = 0
    with open(path, "wb") as out:
        plan = plan_ids(await n1.ranges(app, at_least=ranges))
        async for chunk in export_chunks(n1, app, plan, workers=workers):
            out.write(encode(chunk))
            entities += len(chunk.rows)
    return entities, time.perf_counter() - started, path.stat().st_size


async def scan_rate(n1, app: str) -> float:
    """Rows per second of N1's scan alone (``Engine.scan_rows`` over the app's ranges, as
    many at once as one side of verify reads them): the ceiling for verify."""
    from snapshot.verify import SCAN_PAGE_ROWS, VERIFY_WORKERS

    slots = asyncio.Semaphore(VERIFY_WORKERS)
    rows = 0

    async def scan(key_range) -> None:
        nonlocal rows
        async with slots:
            async for page in n1.scan_rows(app, key_range, page_size=SCAN_PAGE_ROWS):
                rows += len(page)

    started = time.perf_counter()
    await asyncio.gather(*(scan(r) for r in await n1.ranges(app, at_least=VERIFY_WORKERS)))
    return rows / (time.perf_counter() - started)


async def load_and_verify(n1, target_url: str, app: str, warm, thresholds) -> dict[str, Any]:
    from datastore import open_engine
    from snapshot import copy_app, verify_app

    target = open_engine(target_url)
    await target.open()
    try:
        await target.drop_app(app)
        await target.apply([warm])  # the table exists before the clock starts, as for the bulk path
        started = time.perf_counter()
        stats = await copy_app(n1, target, app, task=f"bench.{app}", at_least=thresholds.ranges_per_app,
                               export_workers=thresholds.export_workers, load_workers=thresholds.load_workers)
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = await verify_app(n1, target, app)
        verify_seconds = time.perf_counter() - started
        return {"entities": stats.entities, "seconds": load_seconds, "rate": stats.entities / load_seconds,
                "verify_rate": report.n1.count / verify_seconds, "verify_seconds": verify_seconds,
                "identical": report.identical, "verify_summary": report.summary()}
    finally:
        try:
            await target.drop_app(app)
        finally:
            await target.close()


async def one_size(size: int, count: int, engines: list[str], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from datastore import Entity, open_engine
    from nxnw.config import Thresholds
    from nxnw.services.endpoints import engine_url

    thresholds = Thresholds()
    rows = make_rows(count, size)
    app = f"bench_load_{uuid.uuid4().hex[:8]}_{size}"
    warm = Entity(app, "Warm", b"w", b"w", rows[0][2] - 16)
    n1 = open_engine(engine_url("sqlite", "n1", str(work)))
    await n1.open()
    out: dict[str, Any] = {"size": size, "count": count, "engines": {}}
    try:
        await n1.apply([warm])
        await seed(n1, app, rows)
        entities, seconds, file_bytes = await export_to_file(n1, app, work / f"{app}.chunks", thresholds.ranges_per_app,
                                                             thresholds.export_workers)
        (work / f"{app}.chunks").unlink()
        out["export"] = {"entities": entities, "seconds": seconds, "rate": entities / seconds, "bytes": file_bytes}
        out["scan"] = {"rate": await scan_rate(n1, app)}
        for engine in engines:
            n = count if engine != "hbase" or not args.hbase_max else min(count, args.hbase_max)
            if n < count:  # HBase gets the first n rows of the same data, on an N1 of its own
                sub = work / "hbase-n1"
                sub.mkdir(exist_ok=True)
                source = open_engine(engine_url("sqlite", "n1", str(sub)))
                await source.open()
                await source.apply([warm])
                await seed(source, app, rows[:n])
            else:
                source = n1
            try:
                ours = await load_and_verify(source, engine_url(engine, "n2", str(work)), app, warm, thresholds)
            finally:
                if source is not n1:
                    await source.drop_app(app)
                    await source.close()
            loop = asyncio.get_running_loop()
            if engine == "sqlite":
                bulk_file = work / f"bulk-{app}.db"
                bulk_seconds = await loop.run_in_executor(None, sqlite_executemany, rows[:n], bulk_file)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{bulk_file}{suffix}").unlink(missing_ok=True)
                bulk = {"name": "sqlite executemany", "rate": n / bulk_seconds, "seconds": bulk_seconds}
            elif engine == "cassandra":
                bulk = {"name": "cqlsh COPY FROM"} | await loop.run_in_executor(
                    None, cqlsh_copy_from, rows[:n], size, work, args.cqlsh_processes)
            else:
                bulk = {"name": "none", "error": "no bulk path through nxnw's Thrift gateway (HBase's bulk load "
                                                 "is HFiles + completebulkload)"}
            ours["count"] = n
            ours["bulk"] = bulk
            out["engines"][engine] = ours
            print(f"    {size_name(size):>6} -> {engine:9} {n:>7,} entities: load {ours['rate']:>9,.0f}/s, "
                  f"verify {ours['verify_rate']:>9,.0f}/s, {bulk['name']}: "
                  + (f"{bulk['rate']:,.0f}/s" if "rate" in bulk else bulk.get("error", "-")), flush=True)
            if not ours["identical"]:
                print(f"    !! verify after load: {ours['verify_summary']}")
    finally:
        await n1.drop_app(app)
        await n1.close()
    return out


def merge(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of every rate; errors kept from the first round that had one."""
    first = rounds[0]
    merged = {"size": first["size"], "count": first["count"],
              "export": {"rate": median(r["export"]["rate"] for r in rounds), "bytes": first["export"]["bytes"]},
              "scan": {"rate": median(r["scan"]["rate"] for r in rounds)},
              "engines": {}}
    for engine, ours in first["engines"].items():
        runs = [r["engines"][engine] for r in rounds]
        bulk_rates = [r["bulk"].get("rate") for r in runs]
        merged["engines"][engine] = {
            "count": ours["count"], "rate": median(r["rate"] for r in runs),
            "verify_rate": median(r["verify_rate"] for r in runs),
            "identical": all(r["identical"] for r in runs),
            "bulk": {"name": ours["bulk"]["name"], "rate": median(bulk_rates),
                     "error": next((r["bulk"]["error"] for r in runs if "error" in r["bulk"]), None),
                     "wall_rate": median(r["bulk"].get("wall_rate") for r in runs)},
            "ratio": median(r["rate"] / r["bulk"]["rate"] for r in runs if r["bulk"].get("rate")),
        }
    return merged


def print_table(results: list[dict[str, Any]], rounds: int) -> None:
    print(f"\nsnapshot rates (N1 = SQLite; medians of {rounds} round(s); ms/entity = wall time / entities)")
    print(f"  {'size':>6} {'target':9} {'entities':>8} | {'load/s':>8} {'ms/entity':>9} {'MB/s':>6} | "
          f"{'bulk path':18} {'bulk/s':>8} {'load/bulk':>9} | {'verify/s':>8} | {'export/s':>8}")
    for res in results:
        for i, (engine, r) in enumerate(res["engines"].items()):
            bulk = r["bulk"]
            bulk_rate = fmt(bulk["rate"]) if bulk["rate"] else "n/a"
            export = fmt(res["export"]["rate"]) if i == 0 else ""
            print(f"  {size_name(res['size']):>6} {engine:9} {r['count']:>8,} | {r['rate']:>8,.0f} "
                  f"{1000 / r['rate']:>9.4f} {r['rate'] * res['size'] / 1e6:>6.1f} | {bulk['name']:18} {bulk_rate:>8} "
                  f"{fmt(r['ratio'], '.2f'):>9} | {r['verify_rate']:>8,.0f} | {export:>8}"
                  + ("" if r["identical"] else "  VERIFY FOUND DIFFERENCES"))
    notes = sorted({f"{e}: {r['bulk']['error']}" for res in results for e, r in res["engines"].items()
                    if r["bulk"].get("error")})
    for note in notes:
        print(f"  note — {note}")
    print("  goal: < 0.1 ms per 1 KB entity (>= 10,000/s) and >= cqlsh COPY FROM; the paper: 2.45-3.18 ms per entity")
    for line in goal_lines(results):
        print(line)


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def goal_lines(results: list[dict[str, Any]]) -> list[str]:
    """Issue 13's two snapshot goals (1 KB, SQLite -> SQLite) and the other engines' figures
    beside theirs, with verdicts; empty when the run had no 1 KB size."""
    kb = next((res for res in results if res["size"] == 1024), None)
    if kb is None:
        return []
    lines = ["\ngoals (1 KB values; medians of the rounds; every figure of one round measured in one run)"]
    sqlite = kb["engines"].get("sqlite")
    if sqlite is not None and sqlite["ratio"] is not None:
        lines.append(f"  load / sqlite executemany (same rows, one transaction), sqlite -> sqlite: {sqlite['ratio']:.2f}x "
                     f"({sqlite['rate']:,.0f}/s vs {sqlite['bulk']['rate']:,.0f}/s); goal >= {LOAD_GOAL:.2f}x: "
                     f"{_verdict(sqlite['ratio'] >= LOAD_GOAL)}")
    if sqlite is not None:
        lines.append(f"  verify, sqlite vs sqlite: {sqlite['verify_rate']:,.0f} entities/s (N1's scan alone: "
                     f"{kb['scan']['rate']:,.0f} rows/s); goal >= {VERIFY_GOAL:,}/s: "
                     f"{_verdict(sqlite['verify_rate'] >= VERIFY_GOAL)}")
    for engine, r in kb["engines"].items():
        if engine == "sqlite":
            continue
        bulk = r["bulk"]
        beside = (f"{r['ratio']:.2f}x {bulk['name']} ({bulk['rate']:,.0f}/s), goal >= 1.0x: {_verdict(r['ratio'] >= 1)}"
                  if r["ratio"] is not None else f"no bulk path to compare with: {bulk.get('error')}")
        lines.append(f"  sqlite -> {engine}: load {r['rate']:,.0f}/s, {beside}; verify {r['verify_rate']:,.0f} entities/s")
    return lines


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    counts = {s: max(1, DEFAULT_COUNTS.get(s, 2_000) // (10 if args.quick else 1)) for s in args.sizes}
    if args.count:
        counts = {s: args.count for s in args.sizes}
    results = []
    for size in args.sizes:
        rounds = []
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="nxnw-bench-load-") as tmp:
                print(f"  {size_name(size)} x {counts[size]:,}, round {r + 1}/{args.rounds}", flush=True)
                rounds.append(await one_size(size, counts[size], args.engines, args, Path(tmp)))
        results.append(merge(rounds))
    print_table(results, args.rounds)
    return {"machine": machine(), "quick": args.quick, "rounds": args.rounds,
            "results": {str(r["size"]): r for r in results}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.snapshot_load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the default counts (10,000 of 100 B and 1 KB)")
    parser.add_argument("--engines", nargs="+", default=["sqlite", "cassandra", "hbase"], choices=list(ENGINE_SERVICES))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="value sizes in bytes")
    parser.add_argument("--count", type=int, help="entities per size (overrides the defaults)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per size; medians are printed (default 1)")
    parser.add_argument("--hbase-max", type=int, default=0,
                        help="cap on HBase entities per size (default 0: no cap)")
    parser.add_argument("--cqlsh-processes", type=int, default=None,
                        help="COPY FROM NUMPROCESSES (default: cqlsh's own, CPUs - 1)")
    parser.add_argument("--json", help="also write the figures here as JSON")
    args = parser.parse_args()
    from nxnw import services

    services.up(sorted({s for e in args.engines for s in ENGINE_SERVICES[e]}))
    print(f"snapshot export / load / verify; {machine()}; engines and benchmark share the machine", flush=True)
    import uvloop

    figures = uvloop.run(run_all(args))
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
