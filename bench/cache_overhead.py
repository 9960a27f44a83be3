"""What the cache proxy adds to a memcache request: direct memcached vs the listener in
``passthrough``, ``cow`` (every set copied to N2: COW) and ``cow`` reading keys N2 does not
have (every get fills N2: COR) — the paper's 0.17 ms (COW) and 0.85 ms (COR) per request.

An unchanged app client (pymemcache, TCP_NODELAY) sends 5 KB values, one request at a
time, to each target in turn in the same run; then the same with several client processes
at once. The proxy runs in its own process (uvloop), as in production, so the client's
Python does not share its interpreter. Prints p50/p99 and the p50 added over memcached.

Run: ``.venv/bin/python -m bench.cache_overhead [--requests 3000] [--clients 4]``.
Also prints where a request's time goes inside the proxy (``--no-breakdown`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import uuid

from pymemcache.client.base import Client

from nxnw import services
from nxnw.services.endpoints import HOST, MEMCACHED

N1 = (HOST, MEMCACHED["n1"])
N2 = (HOST, MEMCACHED["n2"])
VALUE = os.urandom(2560).hex().encode()  # 5 KB, incompressible-looking
EXPIRE = 600  # bench keys leave the shared memcacheds on their own


# --- the proxy process -------------------------------------------------------------------

def serve() -> None:
    """Child process: three routers + listeners (passthrough, cow, cow for COR); prints
    their ports as JSON, serves until stdin closes, then prints the route latencies."""
    import uvloop

    from proxy.cache import CacheListener, CacheRouter, Item, metrics
    from proxy.cache.routes import CacheRoute

    class ConstantRoute(CacheRoute):
        """Answers every get with the same 5 KB item, without memcached: the listener alone."""

        item = Item(VALUE, 0, -1, 1)

        async def meta_get(self, key):
            return self.item

        gat = store = delete_item = arith = touch = None  # type: ignore[assignment]

    class ConstantRouter:
        route = ConstantRoute()

    async def main() -> None:
        parts = []
        ports = {}
        for name, mode in (("passthrough", "passthrough"), ("cow", "cow"), ("cor", "cow")):
            router = CacheRouter(N1, N2, mode=mode)
            await router.start()
            listener = CacheListener(router, HOST, 0)
            await listener.start()
            parts.append((router, listener))
            ports[name] = listener.port
        constant = CacheListener(ConstantRouter(), HOST, 0)  # type: ignore[arg-type]
        await constant.start()
        ports["constant"] = constant.port
        print(json.dumps(ports), flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)
        pending = {name: r.to_n2.pending for name, (r, _) in zip(ports, parts)}
        dropped = {name: len(r.to_n2.dropped) for name, (r, _) in zip(ports, parts)}
        fills = {s.labels["result"]: s.value for m in metrics.COR_FILLS.collect() for s in m.samples
                 if s.name.endswith("_total")}
        route_us = {}
        for m in metrics.LATENCY.collect():
            sums = {(s.labels["mode"], s.labels["op"]): s.value for s in m.samples if s.name.endswith("_sum")}
            counts = {(s.labels["mode"], s.labels["op"]): s.value for s in m.samples if s.name.endswith("_count")}
            route_us = {f"{k[0]} {k[1]}": round(sums[k] / counts[k] * 1e6, 1) for k in sums if counts.get(k)}
        await constant.close()
        for router, listener in parts:
            await listener.close()
            await router.close()
        print(json.dumps({"pending": pending, "dropped": dropped, "cor_fills": fills,
                          "mean_route_us_incl_memcached": route_us}), flush=True)

    uvloop.run(main())


# --- the client side ---------------------------------------------------------------------

def _client(addr: tuple[str, int]) -> Client:
    return Client(addr, no_delay=True, timeout=5, connect_timeout=5)


def run_rows(rows: list[tuple[str, str, tuple[str, int], list[bytes]]], chunk: int = 100) -> dict[str, list[float]]:
    """Latency in ms of each row's op on each of its keys, one request at a time. Rows take
    turns every ``chunk`` requests, so a load change on the machine hits every row alike."""
    clients = {label: _client(addr) for label, _, addr, _ in rows}
    out: dict[str, list[float]] = {label: [] for label, *_ in rows}
    clock = time.perf_counter
    try:
        for label, op, _, keys in rows:  # warm connections and code paths, on keys not measured
            client = clients[label]
            for key in keys[:50]:
                client.get(key + b"-w") if op == "get" else client.set(key + b"-w", VALUE, expire=EXPIRE, noreply=False)
        for start in range(0, max(len(r[3]) for r in rows), chunk):
            for label, op, addr, keys in rows:
                client, lat = clients[label], out[label]
                for key in keys[start:start + chunk]:
                    begin = clock()
                    if op == "get":
                        if client.get(key) is None:
                            raise RuntimeError(f"bench key {key!r} missing at {addr} ({label})")
                    else:
                        client.set(key, VALUE, expire=EXPIRE, noreply=False)
                    lat.append((clock() - begin) * 1000)
    finally:
        for client in clients.values():
            client.close()
    return out


def seed_n1(keys: list[bytes]) -> None:
    client = _client(N1)
    try:
        for start in range(0, len(keys), 100):
            client.set_many({k: VALUE for k in keys[start:start + 100]}, expire=EXPIRE, noreply=False)
    finally:
        client.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def bench(ports: dict[str, int], requests: int, clients: int) -> list[dict]:
    """Sets first (direct, passthrough, cow), then gets of what each target's set wrote —
    in ``cow`` those keys are already on N2, so a hit needs no fill — plus the COR row:
    keys written to N1 directly, absent from N2, so every read queues a real fill."""
    per = requests // clients
    run = uuid.uuid4().hex[:8].encode()
    keys = lambda tag, c: [b"bench-%s-%s-%d-%d" % (run, tag, c, i) for i in range(per)]  # noqa: E731
    at = lambda name: (HOST, ports[name])  # noqa: E731
    phases = []
    for phase in ("set", "get"):
        if phase == "get":  # seeded only now, so that the sets cannot evict them from N1 first
            seed_n1([k + suffix for c in range(clients) for k in keys(b"cor", c) for suffix in (b"", b"-w")])
        per_client = []
        for c in range(clients):
            rows = [("memcached N1 direct", phase, N1, keys(b"direct", c)),
                    ("proxy passthrough", phase, at("passthrough"), keys(b"pass", c)),
                    ("proxy cow (COW)" if phase == "set" else "proxy cow, N2 warm", phase, at("cow"), keys(b"cow", c))]
            if phase == "get":
                rows.append(("proxy cow, N2 cold (COR)", phase, at("cor"), keys(b"cor", c)))
                rows.append(("listener, no memcached", phase, at("constant"), keys(b"const", c)))
            per_client.append(rows)
        if clients == 1:
            results = [run_rows(per_client[0])]
        else:
            with multiprocessing.get_context("spawn").Pool(clients) as pool:
                results = pool.map(run_rows, per_client)
        merged: dict[str, list[float]] = {}
        for result in results:
            for label, lat in result.items():
                merged.setdefault(label, []).extend(lat)
        phases.append((phase, merged))
        time.sleep(0.5)  # let the sets' mirrors land before the gets
    out = []
    for phase, merged in phases:
        direct, passthrough = pct(merged["memcached N1 direct"], 50), pct(merged["proxy passthrough"], 50)
        for label, lat in merged.items():
            p50 = pct(lat, 50)
            out.append({"target": label, "op": phase, "n": len(lat), "p50": p50, "p99": pct(lat, 99),
                        "added_vs_memcached": p50 - direct, "added_vs_passthrough": p50 - passthrough})
    return out


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'target':28} {'op':4} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'+p50 vs memcached':>18} {'+p50 vs passthrough':>20}")
    for r in rows:
        print(f"{r['target']:28} {r['op']:4} {r['n']:6d} {r['p50']:8.3f} {r['p99']:8.3f} "
              f"{r['added_vs_memcached']:18.3f} {r['added_vs_passthrough']:20.3f}")


# --- where the time goes -----------------------------------------------------------------

async def _breakdown(requests: int) -> dict[str, float]:
    """In-process (uvloop), taking turns request by request: our asyncio client's own
    memcached round trip, and the same get/set through ``router.route`` in each mode —
    the difference is the route code (mode route, metrics, COW/COR enqueue)."""
    from proxy.cache import CacheRouter, MemcacheClient

    key = b"bench-breakdown-%s" % uuid.uuid4().hex[:8].encode()
    client = MemcacheClient(*N1, side="n1")
    routers = {}
    for mode in ("passthrough", "cow"):
        routers[mode] = CacheRouter(N1, N2, mode=mode)
        await routers[mode].start()
    await client.store(key, VALUE)
    calls = {
        "client get (mg), no route": lambda: client.get(key),
        "client set (ms), no route": lambda: client.store(key, VALUE),
        "route get, passthrough": lambda: routers["passthrough"].route.get(key),
        "route set, passthrough": lambda: routers["passthrough"].route.set(key, VALUE),
        "route get, cow (fill known, skipped)": lambda: routers["cow"].route.get(key),
        "route set, cow (COW queued)": lambda: routers["cow"].route.set(key, VALUE),
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(requests + 200):
        for name, call in calls.items():
            start = time.perf_counter()
            await call()
            if i >= 200:
                samples[name].append((time.perf_counter() - start) * 1e6)
        if i % 50 == 0:
            await routers["cow"].to_n2.drain(10)
    for router in routers.values():
        await router.close()
    await client.close()
    return {name: statistics.median(lat) for name, lat in samples.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per scenario (split among clients)")
    parser.add_argument("--clients", type=int, default=4, help="client processes in the concurrent round")
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args()
    services.up(["memcached-n1", "memcached-n2"])
    proxy = subprocess.Popen([sys.executable, "-m", "bench.cache_overhead", "--serve"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ports = json.loads(proxy.stdout.readline())
        print(f"5 KB values; proxy listeners {ports}; memcached N1 {N1[1]}, N2 {N2[1]}; "
              f"{os.cpu_count()} CPUs shared by client(s), proxy and both memcacheds")
        print_rows(f"one client, sequential, {args.requests} requests per row", bench(ports, args.requests, 1))
        print_rows(f"{args.clients} client processes at once, {args.requests} requests per row in all",
                   bench(ports, args.requests, args.clients))
    finally:
        proxy.stdin.close()
        summary = proxy.stdout.readline()
        proxy.wait(30)
    if summary:
        print(f"\nproxy at exit: {summary.strip()}")
    if not args.no_breakdown:
        import uvloop
        parts = uvloop.run(_breakdown(3000))
        print("\nwhere the time goes (in-process, uvloop, median µs per request):")
        for name, us in parts.items():
            print(f"  {name:45} {us:7.1f}")


if __name__ == "__main__":
    main()
