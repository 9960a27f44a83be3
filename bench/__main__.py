"""``python -m bench``: every benchmark in turn, then the paper's table with what we measured.

Runs, each as its own process with its default sizes (so one cannot warm or slow the next
through shared state): ``engine_rates``, ``cache_overhead``, ``proxy_http``,
``snapshot_load --quick`` and ``switchover``. Their output streams through as they run;
the final table "figure | paper | goal | measured" is built from their figures (JSON
from the ones in this package, the printed rows of ``engine_rates`` and
``cache_overhead``). A benchmark that fails is named in the table, not hidden, and the
rest still run. Figures are printed, never asserted. Takes about ten minutes on 2 cores.

Run: ``.venv/bin/python -m bench [--only NAME …] [--skip NAME …]``; each benchmark also runs
alone, e.g. ``.venv/bin/python -m bench.proxy_http --help``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import machine
from bench.snapshot_load import size_name

#: name -> extra arguments; those writing JSON get ``--json PATH`` appended.
BENCHMARKS: dict[str, list[str]] = {
    "engine_rates": [],
    "cache_overhead": [],
    "proxy_http": [],
    "snapshot_load": ["--quick"],
    "switchover": [],
}
WRITES_JSON = {"proxy_http", "snapshot_load", "switchover"}


def run_one(name: str, work: Path) -> dict[str, Any]:
    """Run ``bench.<name>``, echoing its output; return its text, JSON figures and status."""
    cmd = [sys.executable, "-m", f"bench.{name}", *BENCHMARKS[name]]
    json_path = work / f"{name}.json"
    if name in WRITES_JSON:
        cmd += ["--json", str(json_path)]
    print(f"\n=== {' '.join(['python', *cmd[1:]])}", flush=True)
    started = time.monotonic()
    lines: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip("\n"))
    seconds = time.monotonic() - started
    figures = json.loads(json_path.read_text()) if json_path.exists() else None
    print(f"=== {name}: exit {child.returncode}, {seconds:.0f} s", flush=True)
    return {"text": lines, "figures": figures, "rc": child.returncode, "seconds": seconds}


# --- reading the figures -------------------------------------------------------------------

def engine_rates_rows(text: list[str]) -> dict[str, float]:
    """``{engine: batch put/s}`` from engine_rates' printed lines."""
    out = {}
    for line in text:
        parts = line.split()
        if parts and parts[0] in ("sqlite", "cassandra", "hbase") and "batch" in parts:
            out[parts[0]] = float(parts[parts.index("put/s:") + 1].replace(",", ""))
    return out


def cache_overhead_rows(text: list[str]) -> dict[str, dict[str, float]]:
    """The one-client section of cache_overhead: ``{target: {op, p50, +mc, +pass}}``."""
    rows: dict[str, dict[str, float]] = {}
    inside = False
    for line in text:
        if line.startswith("one client"):
            inside = True
            continue
        if inside:
            if not line.strip():
                if rows:
                    break
                continue
            if line.startswith("target"):
                continue
            fields = line[28:].split()
            if len(fields) == 6:
                rows[line[:28].strip()] = {"op": fields[0], "p50": float(fields[2]), "vs_memcached": float(fields[4]),
                                           "vs_passthrough": float(fields[5])}
    return rows


def verdict(ok: bool | None) -> str:
    return "" if ok is None else (" — met" if ok else " — MISSED")


def table(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []

    def failed(name: str) -> str | None:
        r = results.get(name)
        if r is None:
            return "not run"
        if r["rc"] != 0:
            return f"FAILED (exit {r['rc']}; see its output above)"
        return None

    # memcache hop: passthrough against twemproxy, COW/COR against passthrough, all over memcached direct
    why = failed("cache_overhead")
    cache = cache_overhead_rows(results["cache_overhead"]["text"]) if "cache_overhead" in results else {}
    twem, passthrough = cache.get("twemproxy (nutcracker)"), cache.get("proxy passthrough")
    if why or twem is None or passthrough is None:
        measured = why or "twemproxy or passthrough row not found in its output"
    else:
        bound = 1.5 * max(twem["vs_memcached"], 0.0)
        measured = (f"{passthrough['vs_memcached'] * 1000:+.0f} µs vs twemproxy's {twem['vs_memcached'] * 1000:+.0f} µs "
                    f"over memcached direct, p50, 1 client, 5 KB {passthrough['op']}"
                    f"{verdict(passthrough['vs_memcached'] <= bound)}")
    rows.append(("memcache hop, passthrough (added over memcached direct)", "–", "≤ 1.5× twemproxy's added", measured))
    for label, key, paper in (("memcache COW overhead per request (set)", "proxy cow (COW)", "0.17 ms"),
                              ("memcache COR overhead per request (get, N2 cold)", "proxy cow, N2 cold (COR)", "0.85 ms")):
        r = cache.get(key)
        measured = why or ("row not found in its output" if r is None else
                           f"{r['vs_memcached']:+.3f} ms over memcached direct ({r['vs_passthrough'] * 1000:+.0f} µs "
                           f"over passthrough), p50, 1 client{verdict(r['vs_passthrough'] <= 0.015)}")
        rows.append((label, paper, "≤ 15 µs over passthrough (paper's figure: over memcached direct)", measured))

    # datastore COW over HTTP
    why = failed("proxy_http")
    figures = (results.get("proxy_http") or {}).get("figures") or {}
    for pair, summary in (figures.get("pairs") or {}).items():
        ratios = summary["ratios"]
        for tool, what in (("ab", "1 connection"), ("wrk", "wrk, 8 connections")):
            g, p = ratios[f"cow/passthrough p50 {tool} GET"], ratios[f"cow/passthrough p50 {tool} PUT"]
            rows.append((f"datastore COW over passthrough, HTTP p50 ({what}), {pair.replace(':', ' -> ')}", "-",
                         "<= 1.10x", f"GET {g:.2f}x, PUT {p:.2f}x{verdict(max(g, p) <= 1.10)}"))
            g, p = ratios[f"passthrough/engine direct p50 {tool} GET"], ratios[f"passthrough/engine direct p50 {tool} PUT"]
            rows.append((f"datastore passthrough over an engine-direct aiohttp server, HTTP p50 ({what}), "
                         f"{pair.replace(':', ' -> ')}", "-", "<= 1.10x",
                         f"GET {g:.2f}x, PUT {p:.2f}x{verdict(max(g, p) <= 1.10)}"))
    if why or not figures:
        rows.append(("datastore COW over passthrough, HTTP p50", "-", "<= 1.10x", why or "no figures"))

    # snapshot load
    why = failed("snapshot_load")
    figures = (results.get("snapshot_load") or {}).get("figures") or {}
    per_size = figures.get("results") or {}
    kb = per_size.get("1024")
    if kb:
        for engine, r in kb["engines"].items():
            rows.append((f"snapshot load per 1 KB entity, SQLite -> {engine} ({r['count']:,} entities)",
                         "2.45-3.18 ms", "< 0.1 ms (>= 10,000/s)",
                         f"{1000 / r['rate']:.3f} ms ({r['rate']:,.0f}/s){verdict(r['rate'] >= 10_000)}"))
        cass = kb["engines"].get("cassandra")
        if cass:
            bulk = cass["bulk"]
            rows.append(("snapshot load vs cqlsh COPY FROM, 1 KB, Cassandra", "-", ">= 1.0x",
                         f"{cass['ratio']:.2f}x ({cass['rate']:,.0f}/s vs {bulk['rate']:,.0f}/s){verdict(cass['ratio'] >= 1)}"
                         if bulk.get("rate") else f"no cqlsh figure: {bulk.get('error')}"))
    engines = sorted({e for res in per_size.values() for e in res["engines"]})
    sizes = sorted(per_size.values(), key=lambda res: res["size"])
    for engine in engines:
        ms = [(size_name(res["size"]), 1000 / res["engines"][engine]["rate"]) for res in sizes if engine in res["engines"]]
        rows.append((f"snapshot load per entity by size, SQLite -> {engine}", "2.45-3.18 ms", "< 0.1 ms amortised",
                     ", ".join(f"{s} {v:.3f}" for s, v in ms) + f" ms{verdict(max(v for _, v in ms) < 0.1)}"))
    if kb:
        rows.append(("snapshot export to a chunk file, 1 KB (SQLite N1)", "-", "-", f"{kb['export']['rate']:,.0f}/s"))
        sqlite = kb["engines"].get("sqlite")
        if sqlite and sqlite.get("ratio") is not None:
            rows.append(("snapshot load / sqlite executemany (same rows), 1 KB, SQLite -> sqlite", "-", ">= 0.8x",
                         f"{sqlite['ratio']:.2f}x ({sqlite['rate']:,.0f}/s vs {sqlite['bulk']['rate']:,.0f}/s)"
                         f"{verdict(sqlite['ratio'] >= 0.8)}"))
        for engine, r in kb["engines"].items():
            goal, met = (">= 100,000 entities/s", r["verify_rate"] >= 100_000) if engine == "sqlite" else ("-", None)
            scan = f"; N1's scan alone {kb['scan']['rate']:,.0f}/s" if engine == "sqlite" and "scan" in kb else ""
            rows.append((f"verify N1 against N2, 1 KB, SQLite vs {engine}", "-", goal,
                         f"{r['verify_rate']:,.0f} entities/s{scan}{verdict(met)}"))
    if why or not per_size:
        rows.append(("snapshot load per entity", "2.45-3.18 ms", "< 0.1 ms", why or "no figures"))

    # switch-over
    why = failed("switchover")
    figures = (results.get("switchover") or {}).get("figures") or {}
    if figures.get("runs"):
        med, ttl = figures["medians"], figures["ttl"]
        full = med["switch-over (seconds)"]
        rows.append((f"DNS switch-over to 100 % on N2 (TTL {ttl} s, median of {len(figures['runs'])})", "46.4 s average",
                     f"<= TTL + 2 s = {ttl + 2} s",
                     f"{full:.2f} s (99 %: {med['switch-over 99% (seconds)']:.2f} s; worst run "
                     f"{figures['max_100']:.2f} s){verdict(full is not None and full <= ttl + 2)}"))
        totals = figures["totals"]
        rows.append(("failed client requests (whole runs, switch included)", "-", "0",
                     f"{totals['failed requests']} in {len(figures['runs'])} runs{verdict(totals['failed requests'] == 0)}"))
        lost = totals["lost writes"] + totals["resurrected deletes"]
        rows.append(("data lost during a migration under load", '"no data loss" (claimed)', "0, history-checked",
                     f"{totals['lost writes']} lost writes, {totals['resurrected deletes']} resurrected deletes, "
                     f"{totals['stale reads']} stale reads{verdict(lost + totals['stale reads'] == 0)}"))
    else:
        rows.append(("DNS switch-over", "46.4 s average", "<= TTL + 2 s", why or "no figures"))

    # engine rates (reference, no goal)
    why = failed("engine_rates")
    rates = engine_rates_rows(results["engine_rates"]["text"]) if "engine_rates" in results else {}
    for engine, rate in rates.items():
        rows.append((f"engine batch put, 1 KB, {engine} (reference)", "-", "-", f"{rate:,.0f}/s"))
    if why:
        rows.append(("engine rates", "-", "-", why))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--skip", nargs="+", choices=list(BENCHMARKS), default=[], help="leave these out")
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="nxnw-bench-") as tmp:
        for name in names:
            results[name] = run_one(name, Path(tmp))
    rows = table(results)
    print(f"\n=== nxnw against the AppScale paper ({machine()})")
    widths = [max(len(r[i]) for r in [("figure", "paper", "goal", "measured"), *rows]) for i in range(4)]
    line = lambda r: " | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    print(line(("figure", "paper", "goal", "measured")))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print("\n" + ", ".join(f"{n} {r['seconds']:.0f} s" + ("" if r["rc"] == 0 else f" (exit {r['rc']})")
                           for n, r in results.items()))


if __name__ == "__main__":
    main()
