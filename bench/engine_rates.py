"""Put, get and scan rates of each engine: 1 KB values, 10,000 entities (issue 3's figures).

Puts go in batches through ``Engine.apply`` (the loader's path) and one at a time (the
proxy's path); gets are single-key reads with 32 in flight; scan reads the whole table
over the engine's ranges. Run: ``python -m bench.engine_rates [--count N] [--engines …]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid

from datastore import Entity, EntityRef, open_engine
from nxnw import services
from nxnw.services.endpoints import engine_url

#: ``hbase-stock``: the same HBase through the gateway's stock port (no ``mutateRowsTsEach``).
SERVICE_OF = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"], "hbase-stock": ["hbase"]}


async def _bounded(coros, limit: int) -> None:
    slots = asyncio.Semaphore(limit)

    async def one(coro):
        async with slots:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def measure(name: str, count: int, sqlite_dir: str) -> dict[str, float]:
    engine = open_engine(engine_url(name, "n2", sqlite_dir))
    await engine.open()
    app = f"bench_{uuid.uuid4().hex[:8]}"
    value = b"v" * 1024
    entities = [Entity(app, "B", b"key-%06d" % i, value, 1_000_000 + i * 16) for i in range(count)]
    try:
        await engine.apply(entities[:10])  # creates the table outside the timing
        t = time.perf_counter()
        for start in range(0, count, 500):
            await engine.apply(entities[start:start + 500])
        batch_put = count / (time.perf_counter() - t)

        singles = [Entity(app, "S", e.key, value, e.ts) for e in entities[: count // 5]]
        t = time.perf_counter()
        await _bounded((engine.apply([e]) for e in singles), 32)
        single_put = len(singles) / (time.perf_counter() - t)

        t = time.perf_counter()
        await _bounded((engine.get(EntityRef(app, "B", e.key)) for e in entities[: count // 2]), 32)
        get = (count // 2) / (time.perf_counter() - t)

        t = time.perf_counter()
        seen = 0
        for key_range in await engine.ranges(app, at_least=8):
            async for page in engine.scan(app, key_range):
                seen += len(page)
        scan = seen / (time.perf_counter() - t)
        return {"batch put/s": batch_put, "single put/s": single_put, "get/s": get, "scan/s": scan}
    finally:
        await engine.drop_app(app)
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--engines", nargs="*", default=["sqlite", "cassandra", "hbase"])
    parser.add_argument("--rounds", type=int, default=3, help="runs per engine; the median is printed")
    args = parser.parse_args()
    services.up([s for e in args.engines for s in SERVICE_OF[e]])
    with tempfile.TemporaryDirectory() as sqlite_dir:
        print(f"engine rates, 1 KB values, {args.count} entities, median of {args.rounds} rounds")
        for name in args.engines:
            runs = [asyncio.run(measure(name, args.count, sqlite_dir)) for _ in range(args.rounds)]
            line = "  ".join(f"{k}: {statistics.median(r[k] for r in runs):>9,.0f}" for k in runs[0])
            print(f"{name:>10}  {line}")


if __name__ == "__main__":
    main()
