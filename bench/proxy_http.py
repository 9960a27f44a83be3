"""What the proxy's HTTP data API costs per request in each mode, measured with wrk and ab.

One proxy runs as its own process (``nxnw proxy serve``, uvloop), exactly as in production,
so neither load generator shares its interpreter; ``wrk`` and ``ab`` are C programs. The
benchmark switches that one proxy through ``passthrough``, ``cow`` and ``proxy`` with
``proxy.control.switch_mode`` (the orchestrator's own call, in a ZooKeeper chroot of its
own). A round is four runs — ``ab`` GET, ``wrk`` GET, ``ab`` PUT, ``wrk`` PUT — and each run
is made against every target (the three modes and the baseline) one right after the
other, in an order that rotates from round to round, so a change in the machine's load
hits every target alike. ``ab`` (1 connection, keep-alive, one key) gives the
per-request latency with no queueing: the figure the ≤ 10 % goal is about; beside it, the
CPU the serving process spent per ``ab`` request (Linux ``schedstat``, all its threads, so
an engine's background work such as SQLite's checkpoints counts), which the machine's
load hardly moves. ``wrk``
(1 thread, 8 connections, random keys among the seeded ones, PUT bodies from
``bench/wrk_entities.lua``) gives throughput, and latency under concurrency, where p50 is
mostly queueing behind the proxy's one busy core. Figures are medians over the rounds;
a ratio is the median of the ratios taken within each round.

The baseline, "engine directly": a minimal aiohttp server in its own process (uvloop,
no access log), with the same URL shape, the same base64url key decoding and the same
clock, that calls ``Engine.read`` / ``Engine.apply`` on N1's engine and nothing else: no
middleware, no metrics, no mode route, no ZooKeeper, no fencing check. It is the floor for
"a Python HTTP server in front of this engine"; what ``passthrough`` adds above it is the
proxy's own machinery. The engine's raw rate (``bench.engine_rates``) is not used as the
baseline because it has no HTTP in it, so a ratio to it would mostly measure aiohttp.

N1 and N2 both hold the same seeded keys (as after a snapshot load), so ``proxy`` mode,
which reads N2, finds them too. ``cow`` runs with the plan's default shadow-read rate
(``--shadow-rate``). Traffic stays on 127.0.0.1. Nothing is asserted; the figures are
printed (and written as JSON with ``--json``). Last, an in-process breakdown (no HTTP, no
proxy) times what each mode asks of the engines per request — one read, one apply, two
applies as ``cow`` makes them (``proxy.routes.dual_apply``: the legs that wait overlap),
two in sequence (``proxy``) — to show where a mode's extra time comes from
(``--no-breakdown`` to skip).

Run: ``.venv/bin/python -m bench.proxy_http [--engines sqlite cassandra hbase sqlite:cassandra]
[--rounds 5] [--seconds 2] [--ab-requests 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench._util import cpu_ns, fmt, free_port, machine, median, write_json

HOST = "127.0.0.1"
LUA = Path(__file__).with_name("wrk_entities.lua")
KIND = "B"
TARGETS = ("engine direct", "passthrough", "cow", "proxy")
#: The runs of one round, each made against every target in turn before the next run.
RUNS = (("ab", "GET"), ("wrk", "GET"), ("ab", "PUT"), ("wrk", "PUT"))
ENGINE_SERVICES = {"sqlite": [], "cassandra": ["cassandra"], "hbase": ["hbase"]}
MODE_SERVICES = ["zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2"]
#: Issue 13's bound on both p50 ratios (cow ÷ passthrough PUT, passthrough ÷ engine direct).
GOAL_RATIO = 1.10


def key_segment(i: int) -> str:
    """The key's path segment; ``k%07d`` is valid unpadded base64url (8 characters)."""
    return "k%07d" % i


# --- the baseline server (a child process) -----------------------------------------------

def serve_baseline(url: str, port: int) -> None:
    """Child process: GET/PUT straight onto one engine; prints "ready", serves until stdin closes."""
    import uvloop
    from aiohttp import web

    from datastore import Entity, EntityRef, HybridLogicalClock, open_engine
    from proxy.api import decode_key

    async def main() -> None:
        engine = open_engine(url)
        await engine.open()
        clock = HybridLogicalClock(15)

        async def get(request: web.Request) -> web.Response:
            info = request.match_info
            entity = await engine.read(EntityRef(info["app"], info["kind"], decode_key(info["key"])))
            if entity is None or entity.deleted:
                return web.json_response({"error": "not found"}, status=404)
            clock.observe(entity.ts)
            return web.Response(body=entity.value, content_type="application/octet-stream",
                                headers={"X-Nxnw-Timestamp": str(entity.ts)})

        async def put(request: web.Request) -> web.Response:
            info = request.match_info
            value = await request.read()
            ts = clock.now()
            await engine.apply([Entity(info["app"], info["kind"], decode_key(info["key"]), value, ts)])
            return web.json_response({"ts": ts})

        app = web.Application(client_max_size=2 * 1024 * 1024)
        path = "/v1/apps/{app}/kinds/{kind}/entities/{key}"
        app.router.add_get(path, get)
        app.router.add_put(path, put)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, HOST, port, reuse_address=True).start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        await engine.close()

    uvloop.run(main())


# --- load generators -----------------------------------------------------------------------

def run_wrk(base: str, method: str, prefix: str, keys: int, value_bytes: int, seconds: int,
            connections: int, threads: int) -> dict[str, float]:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, seconds)}s", "--timeout", "10s",
           "-s", str(LUA), base, "--", method, prefix, str(keys), str(value_bytes)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk {method} {base}{prefix} failed (exit {out.returncode}): {out.stderr.strip()[-400:]}")
    doc = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(v for k, v in doc.items() if k.startswith("errors_"))
    return {"rps": doc["requests"] / (doc["duration_us"] / 1e6), "p50": doc["p50_us"] / 1000,
            "p99": doc["p99_us"] / 1000, "requests": doc["requests"], "errors": errors}


_AB_RPS = re.compile(r"Requests per second:\s+([\d.]+)")
_AB_FAILED = re.compile(r"Failed requests:\s+(\d+)")
_AB_NON2XX = re.compile(r"Non-2xx responses:\s+(\d+)")
_AB_DONE = re.compile(r"Complete requests:\s+(\d+)")


def run_ab(url: str, method: str, requests: int, body_file: Path, work: Path) -> dict[str, float]:
    """``ab`` with one keep-alive connection: per-request latency without queueing.

    ``-e`` writes the exact percentiles (fractional ms); ab's text table rounds to 1 ms."""
    csv = work / f"ab-{uuid.uuid4().hex[:6]}.csv"
    cmd = ["ab", "-q", "-k", "-c", "1", "-n", str(requests), "-s", "10", "-e", str(csv)]
    if method == "PUT":
        cmd += ["-u", str(body_file), "-T", "application/octet-stream"]
    cmd.append(url)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0 or not csv.exists():
        raise RuntimeError(f"ab {method} {url} failed (exit {out.returncode}): {(out.stderr or out.stdout).strip()[-400:]}")
    percent = {}
    for row in csv.read_text().splitlines()[1:]:
        p, ms = row.split(",")
        percent[int(float(p))] = float(ms)
    csv.unlink()
    text = out.stdout
    failed = int(_AB_FAILED.search(text).group(1)) if _AB_FAILED.search(text) else 0
    non2xx = int(_AB_NON2XX.search(text).group(1)) if _AB_NON2XX.search(text) else 0
    done = int(_AB_DONE.search(text).group(1)) if _AB_DONE.search(text) else 0
    return {"rps": float(_AB_RPS.search(text).group(1)), "p50": percent[50], "p99": percent[99],
            "requests": done, "errors": failed + non2xx}


# --- the setup: engines seeded, a ZooKeeper chroot, the proxy process ----------------------

def _wait_http(url: str, child: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"process for {url} exited {child.returncode}; last lines of {log}:\n"
                               + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:g} s; see {log}")


async def _seed(urls: list[str], app: str, keys: int, value: bytes) -> None:
    """The same keys, values and timestamps on N1 and N2 (as after a snapshot load)."""
    from datastore import Entity, open_engine
    from proxy.api import decode_key

    base = time.time_ns() // 1000 - 60_000_000
    entities = [Entity(app, KIND, decode_key(key_segment(i)), value, base + i * 16) for i in range(keys)]
    for url in urls:
        engine = open_engine(url)
        await engine.open()
        try:
            for start in range(0, keys, 500):
                await engine.apply(entities[start:start + 500])
        finally:
            await engine.close()


async def _drop(urls: list[str], app: str) -> None:
    from datastore import open_engine

    for url in urls:
        engine = open_engine(url)
        await engine.open()
        try:
            await engine.drop_app(app)
        finally:
            await engine.close()


async def _breakdown(n1_url: str, n2_url: str, app: str, requests: int) -> dict[str, float]:
    """In this process (uvloop), taking turns call by call: what each mode asks of the engines
    for one request, without HTTP or the proxy — median µs per call."""
    from datastore import Entity, EntityRef, HybridLogicalClock, open_engine
    from proxy.api import decode_key
    from proxy.routes import dual_apply

    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()
    clock = HybridLogicalClock(14)
    key = decode_key(key_segment(2))
    value = os.urandom(1024)
    ref = EntityRef(app, KIND, key)
    put = lambda: [Entity(app, KIND, key, value, clock.now())]  # noqa: E731

    async def sequential() -> None:
        await n2.apply(put())
        await n1.apply(put())

    calls = {
        "read N1 (GET in passthrough, cow)": lambda: n1.read(ref),
        "apply N1 (PUT in passthrough)": lambda: n1.apply(put()),
        "apply N1 and N2 as cow does (PUT in cow)": lambda: dual_apply(n1, n2, put()),
        "apply N2 then N1 (PUT in proxy)": sequential,
    }
    samples: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for i in range(requests + 100):
            for name, call in calls.items():
                started = time.perf_counter()
                await call()
                if i >= 100:
                    samples[name].append((time.perf_counter() - started) * 1e6)
    finally:
        await n1.close()
        await n2.close()
    return {name: median(values) for name, values in samples.items()}


def _nxnw_command() -> list[str]:
    script = Path(sys.executable).with_name("nxnw")
    return [str(script)] if script.exists() else [sys.executable, "-m", "nxnw.cli"]


class Bench:
    """One N1/N2 engine pair: seeded data, a proxy process, a baseline process, a ZK chroot."""

    def __init__(self, n1_engine: str, n2_engine: str, args: argparse.Namespace, work: Path) -> None:
        from nxnw.services.endpoints import MEMCACHED, ZOOKEEPER, engine_url

        self.args = args
        self.work = work
        self.id = uuid.uuid4().hex[:8]
        self.app = f"bench_http_{self.id}"
        self.n1_url = engine_url(n1_engine, "n1", str(work))
        self.n2_url = engine_url(n2_engine, "n2", str(work))
        self.chroot = f"/nxnw-bench-{self.id}"
        self.zk_n1 = f"{HOST}:{ZOOKEEPER['n1']}"
        self.zk_n2 = f"{HOST}:{ZOOKEEPER['n2']}"
        self.memcached = (f"{HOST}:{MEMCACHED['n1']}", f"{HOST}:{MEMCACHED['n2']}")
        self.children: list[subprocess.Popen] = []
        self.zk = None
        self.prefix = f"/v1/apps/{self.app}/kinds/{KIND}/entities/"
        self.bases: dict[str, str] = {}
        #: the process serving each target ("engine direct", "proxy"), for its CPU per request
        self.pids: dict[str, int] = {}
        self.body = work / "body.bin"
        self.body.write_bytes(os.urandom(args.value_bytes // 2 + 1).hex().encode()[:args.value_bytes])

    def plan_toml(self) -> str:
        q = json.dumps
        return "\n".join([
            f"name = {q('bench-http-' + self.id)}", f"apps = [{q(self.app)}]", "",
            "[n1]", f"engine = {q(self.n1_url)}", f"zookeeper = {q(self.zk_n1 + self.chroot)}",
            f"memcached = {q(self.memcached[0])}", "",
            "[n2]", f"engine = {q(self.n2_url)}", f"zookeeper = {q(self.zk_n2 + self.chroot)}",
            f"memcached = {q(self.memcached[1])}", "",
            "[thresholds]", f"shadow_rate = {self.args.shadow_rate}", ""])

    def _start(self, name: str, cmd: list[str], health: str, stdin: bool = False) -> None:
        log = self.work / f"{name}.log"
        child = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                 stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.children.append(child)
        _wait_http(health, child, log)

    def setup(self) -> None:
        from kazoo.client import KazooClient

        for hosts in (self.zk_n1, self.zk_n2):
            admin = KazooClient(hosts=hosts, timeout=5)
            admin.start(10)
            admin.ensure_path(self.chroot)
            admin.stop()
            admin.close()
        self.zk = KazooClient(hosts=self.zk_n1 + self.chroot, timeout=5)
        self.zk.start(10)
        asyncio.run(_seed([self.n1_url, self.n2_url], self.app, self.args.keys, self.body.read_bytes()))
        plan = self.work / "plan.toml"
        plan.write_text(self.plan_toml())
        port = free_port()
        self._start("proxy", [*_nxnw_command(), "proxy", "serve", str(plan), "--instance", "p0",
                              "--host", HOST, "--port", str(port)], f"http://{HOST}:{port}/healthz")
        self.bases["proxy"] = f"http://{HOST}:{port}"
        self.pids["proxy"] = self.children[-1].pid
        port = free_port()
        self._start("baseline", [sys.executable, "-m", "bench.proxy_http", "--serve-baseline", self.n1_url, str(port)],
                    f"http://{HOST}:{port}{self.prefix}{key_segment(0)}", stdin=True)
        self.bases["engine direct"] = f"http://{HOST}:{port}"
        self.pids["engine direct"] = self.children[-1].pid

    def use(self, target: str) -> str:
        """Make ``target`` live (switch the proxy's mode if it is one) and return its base URL."""
        if target == "engine direct":
            return self.bases[target]
        from proxy.control import switch_mode
        from sync import layout
        from sync.mode import mark_load_verified, read_mode
        from sync.state import PlanRegistry

        plan = f"bench-http-{self.id}"
        PlanRegistry(self.zk).register(plan, [self.app])  # the bench app follows this plan's mode
        # The transition table allows passthrough -> cow -> proxy -> passthrough: walk it.
        detour = {("passthrough", "proxy"): ["cow"], ("proxy", "cow"): ["passthrough"]}
        current = read_mode(self.zk, path=layout.mode(plan))
        for step in [*detour.get((current.mode if current else "passthrough", target), []), target]:
            state = read_mode(self.zk, path=layout.mode(plan))
            if step == "proxy" and state is not None and state.mode == "cow":
                mark_load_verified(self.zk, state.epoch, path=layout.mode(plan))  # both sides were seeded identically
            switch_mode(self.zk, plan, step, drain_timeout=60, ack_timeout=30)
        return self.bases["proxy"]

    def measure(self, target: str, tool: str, method: str) -> dict[str, float]:
        base = self.use(target)
        a = self.args
        one = f"{base}{self.prefix}{key_segment(0 if method == 'GET' else 1)}"
        run_ab(one, "GET", 100, self.body, self.work)  # warm the route (a switch builds a new one) and paths
        if tool == "wrk":
            return run_wrk(base, method, self.prefix, a.keys, a.value_bytes, a.seconds, a.connections, a.threads)
        pid = self.pids["engine direct" if target == "engine direct" else "proxy"]
        before = cpu_ns(pid)
        result = run_ab(one, method, a.ab_requests, self.body, self.work)
        return result | {"cpu_us": (cpu_ns(pid) - before) / 1000 / max(1, result["requests"])}

    def cleanup(self) -> None:
        for child in reversed(self.children):
            if child.poll() is None:
                if child.stdin is not None:
                    child.stdin.close()
                else:
                    child.terminate()
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait(5)
        if self.zk is not None:
            self.zk.stop()
            self.zk.close()
        from kazoo.client import KazooClient

        for hosts in (self.zk_n1, self.zk_n2):
            admin = KazooClient(hosts=hosts, timeout=5)
            admin.start(10)
            admin.delete(self.chroot, recursive=True)
            admin.stop()
            admin.close()
        try:
            asyncio.run(_drop([self.n1_url, self.n2_url], self.app))
        except Exception as exc:  # the figures are already printed; say what was left behind
            print(f"  (could not drop bench app {self.app}: {type(exc).__name__}: {exc})")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds per target/tool/op, and the within-round cow/passthrough ratios."""
    table: dict[str, Any] = {}
    for target in TARGETS:
        for tool in ("wrk", "ab"):
            for op in ("GET", "PUT"):
                runs = [r[target][tool][op] for r in rounds]
                table.setdefault(target, {}).setdefault(tool, {})[op] = {
                    k: median(run.get(k) for run in runs) for k in ("rps", "p50", "p99", "cpu_us")} | {
                    "errors": sum(run["errors"] for run in runs), "requests": sum(run["requests"] for run in runs)}
    ratios: dict[str, Any] = {}
    for num, den in (("cow", "passthrough"), ("passthrough", "engine direct"), ("proxy", "passthrough")):
        for tool in ("wrk", "ab"):
            for op in ("GET", "PUT"):
                ratios[f"{num}/{den} p50 {tool} {op}"] = median(
                    r[num][tool][op]["p50"] / r[den][tool][op]["p50"] for r in rounds)
    for num, den in (("cow", "passthrough"), ("passthrough", "engine direct")):
        for op in ("GET", "PUT"):
            ratios[f"{num}/{den} cpu ab {op}"] = median(
                r[num]["ab"][op]["cpu_us"] / r[den]["ab"][op]["cpu_us"] for r in rounds)
    # Issue 13's two goals, each ratio with its verdict: a cow PUT costs at most 10 % more than
    # a passthrough PUT, and passthrough at most 10 % more than the engine-direct server.
    goals = {"cow PUT / passthrough PUT, p50 <= 1.10": [("ab", "PUT", "cow", "passthrough"),
                                                        ("wrk", "PUT", "cow", "passthrough")],
             "passthrough / engine direct, p50 <= 1.10": [(tool, op, "passthrough", "engine direct")
                                                           for tool in ("ab", "wrk") for op in ("GET", "PUT")]}
    verdicts = {goal: {f"{tool} {op}": (ratio, ratio <= GOAL_RATIO)
                       for tool, op, num, den in runs for ratio in [ratios[f"{num}/{den} p50 {tool} {op}"]]}
                for goal, runs in goals.items()}
    return {"table": table, "ratios": ratios, "goals": verdicts}


def print_summary(title: str, summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n{title}")
    print(f"  wrk: {args.threads} thread, {args.connections} connections, {args.seconds:g} s per run; "
          f"ab: 1 keep-alive connection, {args.ab_requests} requests per run; medians of {args.rounds} rounds")
    print(f"  {'target':14} {'op':4} | {'wrk req/s':>9} {'p50 ms':>7} {'p99 ms':>7} | "
          f"{'ab req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'cpu µs':>7} | errors")
    for target in TARGETS:
        for op in ("GET", "PUT"):
            w = summary["table"][target]["wrk"][op]
            b = summary["table"][target]["ab"][op]
            print(f"  {target:14} {op:4} | {fmt(w['rps']):>9} {w['p50']:7.3f} {w['p99']:7.3f} | "
                  f"{fmt(b['rps']):>8} {b['p50']:7.3f} {b['p99']:7.3f} {b['cpu_us']:7.0f} | {w['errors'] + b['errors']}")
    r = summary["ratios"]
    for num, den in (("cow", "passthrough"), ("passthrough", "engine direct"), ("proxy", "passthrough")):
        parts = ", ".join(f"{tool} {op} {r[f'{num}/{den} p50 {tool} {op}']:.2f}"
                          for tool in ("ab", "wrk") for op in ("GET", "PUT"))
        print(f"  {num}/{den} at p50: {parts}")
    print("  CPU the serving process spent per ab request, ratios: "
          + ", ".join(f"{num}/{den} {op} {r[f'{num}/{den} cpu ab {op}']:.2f}"
                      for num, den in (("cow", "passthrough"), ("passthrough", "engine direct")) for op in ("GET", "PUT")))
    for goal, verdicts in summary["goals"].items():
        print(f"  goal {goal}: " + ", ".join(f"{what} {ratio:.2f} {'met' if ok else 'missed'}"
                                            for what, (ratio, ok) in verdicts.items()))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    from nxnw import services
    from nxnw.services.base import apt_install

    pairs = [e.split(":", 1) if ":" in e else [e, e] for e in args.engines]
    for pair in pairs:
        for engine in pair:
            if engine not in ENGINE_SERVICES:
                raise SystemExit(f"engine {engine!r} is not one of: {', '.join(ENGINE_SERVICES)}")
    apt_install(["wrk", "apache2-utils"], ["wrk", "ab"], "HTTP load generators")
    services.up(MODE_SERVICES + sorted({s for pair in pairs for e in pair for s in ENGINE_SERVICES[e]}))
    print(f"proxy HTTP data API: {args.value_bytes} B values, {args.keys} keys, shadow-read rate in cow "
          f"{args.shadow_rate:g}; {machine()}; wrk, ab, proxy and engines share the machine")
    figures: dict[str, Any] = {"machine": machine(), "pairs": {}}
    for n1, n2 in pairs:
        with tempfile.TemporaryDirectory(prefix="nxnw-bench-http-") as tmp:
            bench = Bench(n1, n2, args, Path(tmp))
            print(f"N1 {n1} -> N2 {n2}: app {bench.app}, {args.rounds} rounds", flush=True)
            try:
                bench.setup()
                rounds = []
                for i in range(args.rounds):
                    order = TARGETS[i % len(TARGETS):] + TARGETS[:i % len(TARGETS)]
                    result: dict[str, Any] = {t: {"wrk": {}, "ab": {}} for t in TARGETS}
                    for tool, method in RUNS:  # every target, one after the other, for each run
                        for target in order:
                            result[target][tool][method] = bench.measure(target, tool, method)
                    rounds.append(result)
                    p = {t: result[t]["ab"]["PUT"]["p50"] for t in TARGETS}
                    print(f"  round {i + 1}/{args.rounds} ({' -> '.join(order)}): ab PUT p50 "
                          + ", ".join(f"{t} {v:.3f} ms" for t, v in p.items()), flush=True)
                parts = {} if args.no_breakdown else uvloop.run(
                    _breakdown(bench.n1_url, bench.n2_url, bench.app, args.breakdown_calls))
            finally:
                bench.cleanup()
        summary = summarise(rounds)
        print_summary(f"N1 {n1} -> N2 {n2}", summary, args)
        if parts:
            summary["breakdown_us"] = parts
            print("  where a request's engine time goes (in-process, uvloop, no HTTP; median µs per call):")
            for name, us in parts.items():
                print(f"    {name:42} {us:7.1f}")
        figures["pairs"][f"{n1}:{n2}"] = summary
    return figures


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-baseline":
        serve_baseline(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_http", description=__doc__.split("\n\n")[0],
                                     epilog="Targets: engine direct (baseline server), passthrough, cow, proxy.")
    parser.add_argument("--engines", nargs="+", default=["sqlite"], metavar="ENGINE[:ENGINE]",
                        help="N1 and N2 engine per run: sqlite, cassandra, hbase, or N1:N2 such as sqlite:cassandra "
                             "(default: sqlite)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each runs every target once (default 5)")
    parser.add_argument("--seconds", type=int, default=2, help="wrk duration per run, whole seconds (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1: the proxy needs the other core)")
    parser.add_argument("--ab-requests", type=int, default=1000, help="ab requests per run (default 1000)")
    parser.add_argument("--keys", type=int, default=1000, help="keys seeded on N1 and N2 (default 1000)")
    parser.add_argument("--value-bytes", type=int, default=1024, help="value size (default 1024)")
    parser.add_argument("--shadow-rate", type=float, default=0.05,
                        help="share of cow reads also read from N2 (default 0.05, the plan's default)")
    parser.add_argument("--breakdown-calls", type=int, default=2000,
                        help="calls per row of the in-process engine breakdown (default 2000)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the in-process engine breakdown")
    parser.add_argument("--json", help="also write the figures here as JSON")
    args = parser.parse_args()
    figures = run(args)
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
