"""What the memcache hop adds to a request, side by side in one run: memcached direct,
twemproxy (Debian's ``nutcracker``, C, on the same memcached), and nxnw's listener in
``passthrough``, ``cow`` (sets copied to N2: COW; gets of keys N2 holds), ``cow`` with N2
cold (every get fills N2: COR) and ``proxy`` — the paper's 0.17 ms (COW) and 0.85 ms (COR).

An unchanged app client (pymemcache, TCP_NODELAY, replies awaited: no ``noreply``) sends
100 B and 5 KB values, one request at a time, to each target in turn; then the same with
several client processes at once, all of them on the same target at the same time (they
start each chunk of 100 requests together). The proxy runs in its own process (uvloop), as in
production. Prints p50/p99 per target, p50 and p99 added over memcached direct, and the
verdict against the goals: nxnw ``passthrough`` adds at most 1.5× what twemproxy adds,
COW and COR at most 15 µs more than ``passthrough``.

It also prints the CPU the serving process (twemproxy, or the nxnw proxy) spent per
request, read from Linux's ``schedstat``: a figure the machine's load
hardly moves, unlike latency. ``--floor`` adds a minimal uvloop byte relay (one N1
connection per client connection, no parsing): what pure Python on uvloop can do here;
and, for sets, the same relay sending every byte to N2 as well (replies dropped): the
least a copy can cost — half of a real copy's round trips, nothing verified; and the same
relay handing each set to a second process, which stores it on N2 and re-reads N1's CAS
(both round trips of a verified copy, the comparison left out): what a copy costs the
clients when none of it runs on the proxy's event loop. Its CPU figure is both processes'.

Run: ``.venv/bin/python -m bench.cache_overhead [--requests 2000] [--clients 4] [--rounds 3] [--floor]``
(``--rounds``: every figure is the median of that many runs of its table; one run's
verdict can move by ±50 µs with the machine's load).
Also prints where a request's time goes inside the proxy (``--no-breakdown`` to skip).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from pymemcache.client.base import Client

from bench._util import cpu_ns
from nxnw import services
from nxnw.fleet import free_port
from nxnw.services.base import apt_install
from nxnw.services.endpoints import HOST, MEMCACHED

N1 = (HOST, MEMCACHED["n1"])
N2 = (HOST, MEMCACHED["n2"])
SIZES = {"100 B": 100, "5 KB": 5120}
EXPIRE = 600  # bench keys leave the shared memcacheds on their own
DIRECT, TWEMPROXY = "memcached N1 direct", "twemproxy (nutcracker)"
PASS, COW, WARM, COR, PROXY = ("proxy passthrough", "proxy cow (COW)", "proxy cow, N2 warm", "proxy cow, N2 cold (COR)",
                               "proxy proxy (reads N2)")
FLOOR = "floor: uvloop byte relay"
FLOOR_COW = "floor COW: relay + N2 write"
FLOOR_HELPER = "floor copy in a 2nd process"


def value_of(size: int) -> bytes:
    return os.urandom(size // 2).hex().encode()[:size]


# --- the proxy process -------------------------------------------------------------------

class _FloorClient(asyncio.Protocol):
    """The floor: a client connection relayed byte for byte to its own N1 connection (no
    parsing, no routing, no pooling) — what pure Python on uvloop costs per hop here."""

    #: also send every byte to an N2 connection of its own, whose replies are read and
    #: dropped: the floor of COW (one extra send per set, no verification — a real copy
    #: makes two round trips, see ``proxy/cache/copies.py``)
    copy = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.backend: asyncio.Transport | None = None
        self.n2: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        if self.copy:
            self.n2, _ = await loop.create_connection(asyncio.Protocol, *N2)
        backend, _ = await loop.create_connection(lambda: _FloorBackend(self.transport), *N1)
        self.backend = backend
        for data in self.early:
            self.data_received(data)
        self.early = []

    def data_received(self, data: bytes) -> None:
        if self.backend is None:
            self.early.append(data)
            return
        self.backend.write(data)
        if self.n2 is not None:
            self.n2.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for side in (self.backend, self.n2):
            if side is not None:
                side.close()


class _FloorCopyClient(_FloorClient):
    copy = True


class _Handoff:
    """The floor relay's side of the copy helper: the sets of one loop pass go to the
    helper process in one write."""

    transport: asyncio.Transport | None = None
    out: list[bytes] = []

    @classmethod
    def add(cls, data: bytes) -> None:
        if not cls.out:
            asyncio.get_running_loop().call_soon(cls.flush)
        cls.out.append(data)

    @classmethod
    def flush(cls) -> None:
        out, cls.out = cls.out, []
        if cls.transport is not None:
            cls.transport.writelines(out)


class _FloorHandoffClient(_FloorClient):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.backend is not None and data[:4] == b"set ":
            _Handoff.add(data)


class _CopyHelperInput(asyncio.Protocol):
    """The helper process's end: each whole ``set`` it reads is written to N2 as it came
    and followed by ``mg <key> c`` to N1, a pass's requests in one write per side."""

    def __init__(self, n2: asyncio.Transport, n1: asyncio.Transport) -> None:
        self.n2, self.n1 = n2, n1
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos, size = 0, len(buf)
        stores: list[bytes] = []
        reads: list[bytes] = []
        while (line_end := buf.find(b"\r\n", pos)) >= 0:
            tokens = buf[pos:line_end].split(b" ")
            end = line_end + 2 + int(tokens[4]) + 2
            if end > size:
                break
            stores.append(buf[pos:end])
            reads.append(b"mg %b c\r\n" % tokens[1])
            pos = end
        self.buf = buf[pos:]
        if stores:
            self.n2.writelines(stores)
            self.n1.writelines(reads)


class _Drain(asyncio.Protocol):
    """Reads a side's replies: the helper counts on them no more than the floor COW does."""


def copy_helper(path: str) -> None:
    """Child of ``serve``: the copy helper, listening on the Unix socket ``path`` until
    stdin closes."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        n2, _ = await loop.create_connection(_Drain, *N2)
        n1, _ = await loop.create_connection(_Drain, *N1)
        server = await loop.create_unix_server(lambda: _CopyHelperInput(n2, n1), path)
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)
        server.close()

    uvloop.run(main())


class _FloorBackend(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


@contextlib.asynccontextmanager
async def _copy_helper_relay() -> AsyncIterator[tuple[int, int]]:
    """The "floor copy in a 2nd process" row: the copy helper process, and the relay that
    hands it the sets; yields the relay's port and the helper's pid."""
    loop = asyncio.get_running_loop()
    workdir = Path(tempfile.mkdtemp(prefix="nxnw-bench-helper-"))
    socket_path = str(workdir / "copies.sock")
    helper = subprocess.Popen([sys.executable, "-m", "bench.cache_overhead", "--copy-helper", socket_path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        await loop.run_in_executor(None, helper.stdout.readline)
        _Handoff.transport, _ = await loop.create_unix_connection(asyncio.Protocol, socket_path)
        relay = await loop.create_server(_FloorHandoffClient, HOST, 0)
        try:
            yield relay.sockets[0].getsockname()[1], helper.pid
        finally:
            relay.close()
    finally:
        helper.stdin.close()
        await loop.run_in_executor(None, helper.wait, 30)
        shutil.rmtree(workdir, ignore_errors=True)


def serve(helper: bool) -> None:
    """Child process: routers + listeners (passthrough, cow, cow for COR, proxy) and the
    floor relays (with ``helper``, the copy helper's too: ``--floor``); prints their ports as JSON,
    serves until stdin closes, then prints what the copy queues did."""
    import uvloop

    from proxy.cache import CacheListener, CacheRouter, metrics

    async def main() -> None:
        parts = []
        ports = {}
        for name, mode in (("passthrough", "passthrough"), ("cow", "cow"), ("cor", "cow"), ("proxy", "proxy")):
            router = CacheRouter(N1, N2, mode=mode)
            await router.start()
            listener = CacheListener(router, HOST, 0)
            await listener.start()
            parts.append((router, listener))
            ports[name] = listener.port
        floor = await asyncio.get_running_loop().create_server(_FloorClient, HOST, 0)
        ports["floor"] = floor.sockets[0].getsockname()[1]
        floor_cow = await asyncio.get_running_loop().create_server(_FloorCopyClient, HOST, 0)
        ports["floor_cow"] = floor_cow.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            if helper:
                ports["floor_helper"], ports["helper_pid"] = await stack.enter_async_context(_copy_helper_relay())
            print(json.dumps(ports), flush=True)
            await loop.run_in_executor(None, sys.stdin.read)
        pending = {name: r.to_n2.pending + r.to_n1.pending for name, (r, _) in zip(ports, parts)}
        dropped = {name: len(r.to_n2.dropped) + len(r.to_n1.dropped) for name, (r, _) in zip(ports, parts)}
        fills = {s.labels["result"]: s.value for m in metrics.COR_FILLS.collect() for s in m.samples
                 if s.name.endswith("_total")}
        floor.close()
        floor_cow.close()
        for router, listener in parts:
            await listener.close()
            await router.close()
        print(json.dumps({"pending": pending, "dropped": dropped, "cor_fills": fills}), flush=True)

    uvloop.run(main())


# --- twemproxy -----------------------------------------------------------------------------

def start_twemproxy(workdir: Path) -> tuple[subprocess.Popen, int]:
    """nutcracker on a free loopback port, in front of N1's memcached (ketama over md5, as
    nxnw places keys); installed from Debian on first use."""
    apt_install(["nutcracker"], ["nutcracker"], "twemproxy, the C memcache proxy the cache hop is measured against")
    port = free_port(HOST)
    conf = workdir / "nutcracker.yml"
    conf.write_text(f"""bench:
  listen: {HOST}:{port}
  hash: md5
  distribution: ketama
  timeout: 5000
  preconnect: true
  auto_eject_hosts: false
  server_connections: 1
  servers:
   - {N1[0]}:{N1[1]}:1
""")
    proc = subprocess.Popen(["nutcracker", "-c", str(conf), "-o", str(workdir / "nutcracker.log"),
                             "-s", str(free_port(HOST)), "-a", HOST], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            client = Client((HOST, port), timeout=2, connect_timeout=2)
            client.set(b"bench-twemproxy-ping", b"1", expire=EXPIRE, noreply=False)
            client.close()
            return proc, port
        except Exception:  # noqa: BLE001 — not up yet: retried until the deadline
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = workdir / "nutcracker.log"
                raise RuntimeError(f"nutcracker did not serve on {port}: "
                                   f"{log.read_text()[-2000:] if log.exists() else 'no log'}") from None
            time.sleep(0.1)


# --- the client side ---------------------------------------------------------------------

def _client(addr: tuple[str, int]) -> Client:
    return Client(addr, no_delay=True, timeout=5, connect_timeout=5)


#: set in each client process of the concurrent round (``Pool`` initializer): every client
#: starts each chunk of a row together, so each target is measured under the same
#: concurrency. Unsynchronised, clients drift apart: the rows served by the one nxnw
#: process (passthrough, cow, COR, proxy, floor) then overlap each other far more often
#: than twemproxy's row overlaps anything, so nxnw was measured under more concurrency.
_BARRIER: multiprocessing.synchronize.Barrier | None = None


def _join(barrier: multiprocessing.synchronize.Barrier) -> None:
    global _BARRIER
    _BARRIER = barrier


def run_rows(job: tuple[list[tuple[str, str, tuple[str, int], list[bytes]]], int, dict[str, tuple[int, ...]], int]
             ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Latency in ms of each row's op on each of its keys, one request at a time. Rows take
    turns every 100 requests, so a load change on the machine hits every row alike; with
    several clients, all of them run the same chunk of the same row at once (``_BARRIER``).
    For the rows in ``pids`` (label -> pids of the processes serving it), also the CPU those
    processes spent per request, in µs (a chunk is followed by a 5 ms pause so that work it
    left queued — a copy — is counted with it): a figure the machine's load hardly moves.
    With several clients, one of them reads it over every client's chunk (``clients_at_once``)."""
    rows, size, pids, clients_at_once = job
    barrier = _BARRIER
    value = value_of(size)
    clients = {label: _client(addr) for label, _, addr, _ in rows}
    out: dict[str, list[float]] = {label: [] for label, *_ in rows}
    cpu: dict[str, int] = {label: 0 for label in pids}
    clock = time.perf_counter
    chunk = 100
    try:
        for label, op, _, keys in rows:  # warm connections and code paths, on keys not measured
            client = clients[label]
            for key in keys[:50]:
                client.get(key + b"-w") if op == "get" else client.set(key + b"-w", value, expire=EXPIRE, noreply=False)
        for start in range(0, max(len(r[3]) for r in rows), chunk):
            for label, op, addr, keys in rows:
                client, lat = clients[label], out[label]
                serving = pids.get(label, ())
                if barrier is not None:
                    barrier.wait()
                before = sum(cpu_ns(pid) for pid in serving)
                for key in keys[start:start + chunk]:
                    begin = clock()
                    if op == "get":
                        if client.get(key) is None:
                            raise RuntimeError(f"bench key {key!r} missing at {addr} ({label})")
                    else:
                        client.set(key, value, expire=EXPIRE, noreply=False)
                    lat.append((clock() - begin) * 1000)
                if barrier is not None:
                    barrier.wait()
                if serving:
                    time.sleep(0.005)
                    cpu[label] += sum(cpu_ns(pid) for pid in serving) - before
    finally:
        for client in clients.values():
            client.close()
    return out, {label: ns / 1000 / max(len(out[label]) * clients_at_once, 1) for label, ns in cpu.items()}


def seed(addr: tuple[str, int], keys: list[bytes], size: int) -> None:
    client = _client(addr)
    value = value_of(size)
    try:
        for start in range(0, len(keys), 100):
            client.set_many({k: value for k in keys[start:start + 100]}, expire=EXPIRE, noreply=False)
    finally:
        client.close()


def forget(keys: list[bytes]) -> None:
    """Delete a round's keys from both memcacheds: they are shared, and several runs in a
    row would otherwise fill them until they evict (a bench key then goes missing)."""
    for addr in (N1, N2):
        client = _client(addr)
        try:
            for start in range(0, len(keys), 500):
                client.delete_many(keys[start:start + 500], noreply=False)
        finally:
            client.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def bench(ports: dict[str, int], twemproxy: int, requests: int, clients: int, size: int, floor: bool,
          pids: dict[str, tuple[int, ...]]) -> list[dict]:
    """Sets first (each target writes its own keys), then gets of what each target's set
    wrote — in ``cow`` those keys are already on N2 (the warm row), in ``proxy`` they are
    on N2 — plus the COR row: keys written to N1 directly, absent from N2, so every read
    queues a real fill."""
    per = requests // clients
    run = uuid.uuid4().hex[:8].encode()
    keys = lambda tag, c: [b"bench-%s-%s-%d-%d" % (run, tag, c, i) for i in range(per)]  # noqa: E731
    at = lambda name: (HOST, ports[name])  # noqa: E731
    phases = []
    for phase in ("set", "get"):
        if phase == "get":  # seeded only now, so that the sets cannot evict them from N1 first
            seed(N1, [k + suffix for c in range(clients) for k in keys(b"cor", c) for suffix in (b"", b"-w")], size)
        per_client = []
        for c in range(clients):
            rows = [(DIRECT, phase, N1, keys(b"direct", c)),
                    (TWEMPROXY, phase, (HOST, twemproxy), keys(b"twem", c)),
                    *([(FLOOR, phase, at("floor"), keys(b"floor", c))] if floor else []),
                    *([(FLOOR_COW, phase, at("floor_cow"), keys(b"floorcow", c)),
                       (FLOOR_HELPER, phase, at("floor_helper"), keys(b"floorhelper", c))] if floor and phase == "set" else []),
                    (PASS, phase, at("passthrough"), keys(b"pass", c)),
                    (COW if phase == "set" else WARM, phase, at("cow"), keys(b"cow", c)),
                    (PROXY, phase, at("proxy"), keys(b"proxy", c))]
            if phase == "get":
                rows.append((COR, phase, at("cor"), keys(b"cor", c)))
            serving = {label: pids["proxy" if label not in pids else label] for label, *_ in rows if label != DIRECT}
            per_client.append((rows, size, serving if c == 0 else {}, clients))
        if clients == 1:
            results = [run_rows(per_client[0])]
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(clients, initializer=_join, initargs=(context.Barrier(clients),)) as pool:
                results = pool.map(run_rows, per_client)
        merged: dict[str, list[float]] = {}
        for result, _ in results:
            for label, lat in result.items():
                merged.setdefault(label, []).extend(lat)
        phases.append((phase, merged, results[0][1]))
        time.sleep(0.5)  # the sets' copies land before the gets, the gets' fills before the keys go
    forget([k + suffix for tag in (b"direct", b"twem", b"floor", b"floorcow", b"floorhelper", b"pass", b"cow", b"proxy",
                                   b"cor")
            for c in range(clients) for k in keys(tag, c) for suffix in (b"", b"-w")])
    out = []
    for phase, merged, cpu in phases:
        direct50, direct99 = pct(merged[DIRECT], 50), pct(merged[DIRECT], 99)
        passthrough = pct(merged[PASS], 50)
        for label, lat in merged.items():
            p50, p99 = pct(lat, 50), pct(lat, 99)
            out.append({"target": label, "op": phase, "n": len(lat), "p50": p50, "p99": p99,
                        "added_vs_memcached": p50 - direct50, "added_vs_passthrough": p50 - passthrough,
                        "p99_added_vs_memcached": p99 - direct99, "cpu_us": cpu.get(label)})
    return out


def median_rows(runs: list[list[dict]]) -> list[dict]:
    """Rounds of one table as one: every figure of a row is its median over the rounds."""
    out = []
    for row in runs[0]:
        same = [r for run in runs for r in run if r["target"] == row["target"] and r["op"] == row["op"]]
        merged = dict(row)
        for field in ("p50", "p99", "added_vs_memcached", "added_vs_passthrough", "p99_added_vs_memcached", "cpu_us"):
            values = [r[field] for r in same if r[field] is not None]
            merged[field] = statistics.median(values) if values else None
        out.append(merged)
    return out


def print_rows(title: str, rows: list[dict]) -> None:
    """The table ``python -m bench`` reads (its row layout must stay: label in 28 columns,
    then op n p50 p99 +p50-vs-memcached +p50-vs-passthrough), then p99 added."""
    print(f"\n{title}")
    print(f"{'target':28} {'op':4} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'+p50 vs memcached':>18} {'+p50 vs passthrough':>20}")
    for r in rows:
        print(f"{r['target']:28} {r['op']:4} {r['n']:6d} {r['p50']:8.3f} {r['p99']:8.3f} "
              f"{r['added_vs_memcached']:18.3f} {r['added_vs_passthrough']:20.3f}")
    print("  p99 added over memcached direct (ms): " + ", ".join(
        f"{r['target']} {r['op']} {r['p99_added_vs_memcached']:+.3f}" for r in rows if r["target"] != DIRECT))
    if any(r["cpu_us"] is not None for r in rows):
        print("  CPU of the process serving the hop, µs per request (twemproxy's, else the nxnw proxy's): " + ", ".join(
            f"{r['target']} {r['op']} {r['cpu_us']:.0f}" for r in rows if r["cpu_us"] is not None))


def verdict(results: dict[tuple[str, int], list[dict]]) -> list[str]:
    """One line per (size, clients, op): added p50 µs of each target over memcached direct,
    and the two goals checked against twemproxy and passthrough."""
    lines = []
    for (size, clients), rows in results.items():
        for op in ("set", "get"):
            added = {r["target"]: r["added_vs_memcached"] * 1000 for r in rows if r["op"] == op}
            twem, passthrough = added[TWEMPROXY], added[PASS]
            bound = 1.5 * max(twem, 0.0)
            goal1 = "met" if passthrough <= bound else "MISSED"
            mirrored = added[COW] if op == "set" else added[COR]
            goal2 = "met" if mirrored - passthrough <= 15 else "MISSED"
            lines.append(
                f"{size:5} {clients} client(s) {op}: added p50 µs over memcached direct — twemproxy {twem:+.0f}, "
                f"passthrough {passthrough:+.0f}, {'COW' if op == 'set' else 'COR'} {mirrored:+.0f}, "
                f"{'cow warm get ' + format(added[WARM], '+.0f') + ', ' if op == 'get' else ''}"
                f"{'floor ' + format(added[FLOOR], '+.0f') + ', ' if FLOOR in added else ''}"
                f"{'floor COW ' + format(added[FLOOR_COW], '+.0f') + ', ' if FLOOR_COW in added else ''}"
                f"{'floor copy in a 2nd process ' + format(added[FLOOR_HELPER], '+.0f') + ', ' if FLOOR_HELPER in added else ''}"
                f"proxy {added[PROXY]:+.0f}; passthrough ≤ 1.5× twemproxy ({bound:.0f}): {goal1}; "
                f"{'COW' if op == 'set' else 'COR'} ≤ passthrough + 15 µs: {goal2} ({mirrored - passthrough:+.0f})")
            cpu = {r["target"]: r["cpu_us"] for r in rows if r["op"] == op and r["cpu_us"] is not None}
            if cpu:
                mirrored_cpu = cpu[COW] if op == "set" else cpu[COR]
                lines.append(
                    f"      CPU µs per request of the serving process — twemproxy {cpu[TWEMPROXY]:.0f}, "
                    f"{'floor ' + format(cpu[FLOOR], '.0f') + ', ' if FLOOR in cpu else ''}"
                    f"{'floor COW ' + format(cpu[FLOOR_COW], '.0f') + ', ' if FLOOR_COW in cpu else ''}"
                    f"{'floor copy in a 2nd process (both) ' + format(cpu[FLOOR_HELPER], '.0f') + ', ' if FLOOR_HELPER in cpu else ''}"
                    f"passthrough {cpu[PASS]:.0f} "
                    f"({cpu[PASS] / max(cpu[TWEMPROXY], 1e-9):.1f}× twemproxy's), "
                    f"{'COW' if op == 'set' else 'COR'} {mirrored_cpu:.0f}, proxy {cpu[PROXY]:.0f}")
    return lines


# --- where the time goes -----------------------------------------------------------------

async def _breakdown(requests: int) -> dict[str, float]:
    """In-process (uvloop), taking turns request by request: our asyncio client's own
    memcached round trip, and the same get/set through ``router.route`` in each mode —
    the difference is the route code (mode route, metrics, COW/COR enqueue)."""
    from proxy.cache import CacheRouter, MemcacheClient
    from proxy.cache.client import REPLY_VALUES

    value = value_of(5120)
    key = b"bench-breakdown-%s" % uuid.uuid4().hex[:8].encode()
    client = MemcacheClient(*N1, side="n1")
    routers = {}
    for mode in ("passthrough", "cow"):
        routers[mode] = CacheRouter(N1, N2, mode=mode)
        await routers[mode].start()
    await client.store(key, value)
    get_line = b"get %b\r\n" % key
    calls = {
        "client get (mg), no route": lambda: client.get(key),
        "client get relayed (text get), no route": lambda: client.forward(get_line, REPLY_VALUES),
        "client set (ms), no route": lambda: client.store(key, value),
        "route get relayed, passthrough": lambda: routers["passthrough"].route.forward("get", key, get_line,
                                                                                     REPLY_VALUES),
        "route get, passthrough": lambda: routers["passthrough"].route.get(key),
        "route set, passthrough": lambda: routers["passthrough"].route.set(key, value),
        "route get, cow (fill known, skipped)": lambda: routers["cow"].route.get(key),
        "route set, cow (COW queued)": lambda: routers["cow"].route.set(key, value),
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
        serve(helper="--floor" in sys.argv[2:])
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--copy-helper":
        copy_helper(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per row (split among clients)")
    parser.add_argument("--clients", type=int, default=4, help="client processes in the concurrent round")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every table this many times and report each figure's median (the verdict "
                             "then moves less with the machine's load)")
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--floor", action="store_true",
                        help="also measure a minimal uvloop byte relay (one N1 connection per client, no parsing), and for sets "
                             "the same relay copying every byte to N2 (replies dropped), and the same relay handing each "
                             "set to a second process that stores it on N2 and re-reads N1's CAS: "
                             "what pure Python can do for this hop and its copy")
    args = parser.parse_args()
    for name in ("requests", "clients", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.requests < args.clients:
        parser.error(f"--requests ({args.requests}) must be at least --clients ({args.clients}): they are split among them")
    services.up(["memcached-n1", "memcached-n2"])
    workdir = Path(tempfile.mkdtemp(prefix="nxnw-bench-cache-"))
    twemproxy, twemproxy_port = start_twemproxy(workdir)
    proxy = subprocess.Popen([sys.executable, "-m", "bench.cache_overhead", "--serve", *(["--floor"] if args.floor else [])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        ports = json.loads(proxy.stdout.readline())
        print(f"proxy listeners {ports}; twemproxy {twemproxy_port}; memcached N1 {N1[1]}, N2 {N2[1]}; "
              f"{os.cpu_count()} CPUs shared by client(s), proxy, twemproxy and both memcacheds; "
              f"load average {os.getloadavg()[0]:.1f} at the start")
        rounds: dict[tuple[str, int], list[list[dict]]] = {}
        for _ in range(args.rounds):
            for clients in (1, args.clients):
                for size_name in ("5 KB", "100 B"):
                    rounds.setdefault((size_name, clients), []).append(
                        bench(ports, twemproxy_port, args.requests, clients, SIZES[size_name], args.floor,
                              {TWEMPROXY: (twemproxy.pid,), "proxy": (proxy.pid,),
                               **({FLOOR_HELPER: (proxy.pid, ports["helper_pid"])} if args.floor else {})}))
        # the 5 KB one-client table comes first: ``python -m bench`` reads it
        for (size_name, clients), runs in rounds.items():
            results[(size_name, clients)] = rows = median_rows(runs)
            who = "one client, sequential" if clients == 1 else f"{clients} client processes at once"
            of = f", medians of {args.rounds} rounds" if args.rounds > 1 else ""
            print_rows(f"{who}, {size_name} values, {args.requests} requests per row in all{of}", rows)
    finally:
        proxy.stdin.close()
        summary = proxy.stdout.readline()
        proxy.wait(30)
        twemproxy.terminate()
        twemproxy.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    if summary:
        print(f"\nproxy at exit: {summary.strip()}")
    print("\nverdict (p50 added over memcached direct; goals: passthrough ≤ 1.5× twemproxy's added, "
          "COW/COR ≤ passthrough + 15 µs):")
    for line in verdict(results):
        print("  " + line)
    if not args.no_breakdown:
        import uvloop
        parts = uvloop.run(_breakdown(2000))
        print("\nthe awaitable path, where the listener serves what it does not relay by callbacks (meta "
              "commands, noreply, multi-key) — in-process, uvloop, 5 KB, median µs per request:")
        for name, us in parts.items():
            print(f"  {name:45} {us:7.1f}")


if __name__ == "__main__":
    main()
