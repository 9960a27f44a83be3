"""The status page, specified through a real headless Chromium and the real aiohttp server.

The browser is driven over the DevTools protocol: Chromium starts with
``--remote-debugging-port=0`` and the page's URL, writes the port it chose to
``DevToolsActivePort`` in its profile, ``/json/list`` gives the page's websocket, and
``Runtime.evaluate`` reads the DOM. Chromium is installed from Debian if it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from nxnw.proxy_watch import ProxyWatch
from nxnw.services.base import REPO_ROOT, apt_install
from nxnw.services.endpoints import engine_url
from nxnw.status_page import render_report, status_app, timeline_svg
from sync.state import PHASES, STATES
from tests.conftest import require
from tests.proxy_harness import key_path, proxy_config, running_proxy, zk_namespace

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,1000"]
MAIN_PHASES = list(PHASES)


def migration_state(current: str = "snapshot+load") -> dict[str, Any]:
    """A state as the orchestrator reports it: phases before ``current`` done, it running."""
    now = time.time()
    phases, t = [], now - 100
    for name in MAIN_PHASES:
        if MAIN_PHASES.index(name) < MAIN_PHASES.index(current):
            phases.append({"name": name, "state": "done", "started": t, "finished": t + 10})
            t += 10
        elif name == current:
            phases.append({"name": name, "state": "running", "started": t, "finished": None})
        else:
            phases.append({"name": name, "state": "pending", "started": None, "finished": None})
    return {"plan": "cassandra-to-hbase", "phase": current, "phases": phases,
            "progress": {"entities": 120000, "bytes": 123456789, "rate": 9876.5, "ranges_done": 12, "ranges_total": 48},
            "journal_depth": 7, "mode": "cow", "events": ["prepare done", "snapshot: range 12 loaded"]}


class Orchestrator:
    """Stands in for the orchestrator's state: a mutable dict, and a switch to make it fail."""

    def __init__(self) -> None:
        self.state = migration_state()
        self.broken: str | None = None

    def __call__(self) -> dict[str, Any]:
        if self.broken:
            raise RuntimeError(self.broken)
        return self.state


@pytest.fixture
def proxy_watch() -> ProxyWatch | None:
    """No proxy fleet to watch, unless a test class overrides this fixture."""
    return None


@pytest.fixture
async def served(proxy_watch: ProxyWatch | None) -> AsyncIterator[tuple[Orchestrator, str]]:
    """The status sub-application mounted at /status/ on a free loopback port."""
    orchestrator = Orchestrator()
    root = web.Application()
    root.add_subapp("/status", status_app(orchestrator, proxy_watch))
    runner = web.AppRunner(root)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield orchestrator, f"http://{host}:{port}/status/"
    await runner.cleanup()


class DevTools:
    """A minimal DevTools-protocol client on one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        async with asyncio.timeout(10):
            while True:
                msg = json.loads((await self.ws.receive_str()))
                if msg.get("id") == msg_id:
                    if "error" in msg:
                        raise RuntimeError(f"{method} failed: {msg['error']}")
                    return msg["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, expected: Any, timeout: float = 10.0) -> Any:
        """Poll ``expression`` until it equals ``expected``; fail with the last value seen."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value == expected:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"{expression} stayed {value!r}, expected {expected!r} within {timeout} s")


@pytest.fixture
async def browser(served: tuple[Orchestrator, str], tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium showing the status page; installs Debian's chromium if missing."""
    await asyncio.to_thread(apt_install, ["chromium"], [CHROMIUM], "headless browser for the status page test")
    _, url = served
    profile = tmp_path / "profile"
    log_path = tmp_path / "chromium.log"
    with open(log_path, "wb") as log:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", url,
            stdout=log, stderr=log, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"chromium did not open its DevTools port:\n{log_path.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            page = None
            while page is None:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    page = next((t for t in await resp.json() if t.get("type") == "page" and t.get("url") == url), None)
                if page is None:
                    if time.monotonic() > deadline:
                        pytest.fail(f"chromium never opened {url}")
                    await asyncio.sleep(0.05)
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                devtools = DevTools(ws)
                # the target exists before its first navigation commits: wait for our document
                await devtools.wait_for(f"location.href === {json.dumps(url)} && document.readyState", "complete")
                yield devtools
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


BARS = "Array.from(document.querySelectorAll('#timeline svg rect.bar'))"


async def test_the_page_shows_the_current_phase_and_follows_it_without_a_reload(served, browser):
    orchestrator, _ = served
    await browser.wait_for("document.getElementById('phase').textContent", "snapshot+load")
    assert await browser.evaluate("document.getElementById('mode').textContent") == "cow"
    assert await browser.evaluate("document.getElementById('journal').textContent") == "7"
    assert await browser.evaluate("document.getElementById('progress-bar').style.width") == "25%"
    assert await browser.evaluate("document.getElementById('ranges').textContent") == "12 / 48 ranges · 25.0 %"
    assert (await browser.evaluate("document.getElementById('eta').textContent")).startswith("ETA ")
    await browser.evaluate("window.loadedOnce = 'yes'")  # a reload would wipe this

    orchestrator.state = migration_state("verify")
    orchestrator.state["mode"] = "proxy"

    await browser.wait_for("document.getElementById('phase').textContent", "verify")
    await browser.wait_for(f"{BARS}.find(b => b.dataset.phase === 'verify').dataset.state", "running")
    assert await browser.evaluate("document.getElementById('mode').textContent") == "proxy"
    assert await browser.evaluate("window.loadedOnce") == "yes"


async def test_the_timeline_draws_one_bar_per_phase_coloured_by_state(served, browser):
    orchestrator, _ = served
    bars = f"{BARS}.map(b => [b.dataset.phase, b.dataset.state, b.getAttribute('fill')])"
    await browser.wait_for(f"{BARS}.length", len(MAIN_PHASES))
    drawn = await browser.evaluate(bars)
    assert [b[0] for b in drawn] == MAIN_PHASES
    assert {b[1]: b[2] for b in drawn} == {"done": "#2fa36b", "running": "#2d7ff9", "pending": "#c7ccd6"}

    failed = migration_state("handoff")
    failed["phases"][MAIN_PHASES.index("handoff")].update(state="failed", finished=time.time())
    failed["phases"].append({"name": "rollback", "state": "running", "started": time.time(), "finished": None})
    failed["phase"] = "rollback"
    orchestrator.state = failed

    await browser.wait_for(f"{BARS}.length", len(MAIN_PHASES) + 1)
    drawn = await browser.evaluate(bars)
    assert [b[0] for b in drawn] == [*MAIN_PHASES, "rollback"]
    assert drawn[MAIN_PHASES.index("handoff")][1:] == ["failed", "#e5484d"]


async def test_the_page_says_when_the_orchestrator_is_unreachable_and_recovers(served, browser):
    orchestrator, _ = served
    await browser.wait_for("document.getElementById('status').textContent.startsWith('live')", True)
    orchestrator.broken = "ZooKeeper session lost"
    await browser.wait_for("document.getElementById('status').textContent.includes('ZooKeeper session lost')", True)
    assert await browser.evaluate("document.getElementById('phase').textContent") == "snapshot+load"  # last known
    orchestrator.broken = None
    await browser.wait_for("document.getElementById('status').textContent.startsWith('live')", True)


async def test_state_json_is_the_source_state_and_a_failing_source_is_a_503_with_the_reason(served):
    orchestrator, url = served
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "state.json") as resp:
            assert resp.status == 200
            assert await resp.json() == json.loads(json.dumps(orchestrator.state))
        orchestrator.broken = "no session"
        async with http.get(url + "state.json") as resp:
            assert resp.status == 503
            assert "no session" in (await resp.json())["reason"]
        async with http.get(url) as resp:  # the page itself still loads
            assert resp.status == 200 and "<svg" in await resp.text()


async def test_the_page_links_its_data_relative_to_where_it_is_mounted(served):
    _, url = served
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            page = await resp.text()
    assert '"/status/state.json"' in page and '"/status/timeline.svg"' in page
    assert not re.search(r"""(src|href)=["']?https?:""", page), "the page must load nothing from outside"


def test_a_malformed_state_still_renders():
    state = {"phase": 3, "phases": [None, {"name": "cow", "state": "bogus", "started": "x"}], "progress": "n/a",
             "events": None}
    svg = timeline_svg([], time.time())
    assert svg.startswith("<svg") and 'class="bar"' not in svg
    report = render_report(state)
    assert report.count('class="bar"') == 1 and 'data-state="pending"' in report


def test_the_report_is_standalone_with_the_timeline_a_row_per_phase_and_escaped_text():
    state = migration_state("complete")
    state["phases"][-1].update(state="done", finished=time.time())
    state["phases"].append({"name": "rollback", "state": "skipped", "started": None, "finished": None})
    state["events"].append("<script>alert(1)</script>")
    state["plan"] = "a<b"
    report = render_report(copy.deepcopy(state))
    assert report.count('class="bar"') == len(STATES)
    assert report.count('class="phase-row"') == len(STATES)
    assert ">complete</span>" in report and "plan a&lt;b" in report
    assert "<script>alert" not in report and "&lt;script&gt;alert(1)" in report
    assert "<script" not in report and "http://" not in report.replace('xmlns="http://www.w3.org/2000/svg"', "")


#: Where the fleet test leaves its screenshot of the page (git-ignored).
ARTIFACTS = REPO_ROOT / ".cache" / "test-artifacts"


@pytest.fixture
async def live_proxy(sqlite_dir: str) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    """A real proxy instance (sqlite N1 and N2, real ZooKeeper and memcached): its URL and a client."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    async with zk_namespace() as (zk_hosts, _):
        config = proxy_config("watched", engine_url("sqlite", "n1", sqlite_dir),
                              engine_url("sqlite", "n2", sqlite_dir), zk_hosts)
        async with running_proxy(config) as (server, http):
            yield f"http://127.0.0.1:{server.http_port}", http


class TestTheProxyPanels:
    """The panels an operator watches during a migration, fed by real proxies' metrics."""

    @pytest.fixture
    def proxy_watch(self, live_proxy: tuple[str, aiohttp.ClientSession]) -> ProxyWatch:
        url, _ = live_proxy
        # The same live process under two names stands for an N1 and an N2 instance (one
        # process: one set of counters, so N2's share is one half); a closed port is a dead one.
        return ProxyWatch([url, "http://127.0.0.1:9"], [url.replace("127.0.0.1", "localhost")], interval=0.2)

    async def test_each_instance_shows_its_load_errors_and_p99_and_the_fleet_its_journal_and_n2_share(
            self, served, browser, live_proxy, app_name):
        _, http = live_proxy
        rows = "Array.from(document.querySelectorAll('#fleet tr.instance'))"
        await browser.wait_for(f"{rows}.map(r => r.dataset.side + ':' + r.dataset.up).join(' ')", "n1:up n1:down n2:up")
        for i in range(60):
            async with http.put(key_path(app_name, "Guest", f"k{i}".encode()), data=b"v") as resp:
                assert resp.status == 200
            async with http.get(key_path(app_name, "Guest", b"missing")) as resp:
                assert resp.status == 404
        await browser.wait_for(f"{rows}[0].querySelectorAll('polyline.series').length", 3, timeout=20)
        first = await browser.evaluate(f"{rows}[0].querySelector('td.num').textContent")
        assert first != "–" and float(first.replace(",", "")) >= 0
        await browser.wait_for(f"{rows}[1].querySelectorAll('polyline.series').length", 0)
        await browser.wait_for("document.querySelectorAll('#journal-chart polyline.series').length", 2)
        await browser.wait_for("document.querySelector('#share-chart .k').textContent.endsWith('50 %')", True,
                               timeout=20)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = await browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (ARTIFACTS / "status-page.png").write_bytes(base64.b64decode(shot["data"]))

    async def test_no_phase_label_is_cut_off(self, served, browser):
        await browser.wait_for(f"{BARS}.length", len(MAIN_PHASES))
        lefts = await browser.evaluate(
            "Array.from(document.querySelectorAll('#timeline svg text')).filter(t => t.getAttribute('text-anchor') === 'end')"
            ".map(t => [t.textContent, t.getBBox().x])")
        assert {name for name, _ in lefts} == set(MAIN_PHASES)
        assert [name for name, x in lefts if x < 0] == []


def test_rates_and_the_p99_come_from_two_scrapes_of_real_counters():
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from nxnw.proxy_watch import interval, parse_metrics

    registry = CollectorRegistry()
    requests = Counter("nxnw_http_requests_total", "requests", ["route", "status"], registry=registry)
    latency = Histogram("nxnw_http_request_seconds", "latency", ["route", "mode"], registry=registry,
                        buckets=(0.001, 0.01, 0.1, 1))
    requests.labels("a", "200").inc(10)
    before = parse_metrics(generate_latest(registry).decode(), 100.0)
    requests.labels("a", "200").inc(90)
    requests.labels("b", "503").inc(10)
    for _ in range(98):
        latency.labels("a", "cow").observe(0.0005)
    latency.labels("a", "cow").observe(0.05)
    latency.labels("b", "cow").observe(0.5)
    after = parse_metrics(generate_latest(registry).decode(), 102.0)
    point = interval(before, after)
    assert point is not None
    assert (point.requests_per_s, point.errors_per_s, point.requests) == (50.0, 5.0, 100.0)
    # the 99th of 100 observations (50 ms) is the last one in the 10-100 ms bucket
    assert point.p99_ms == pytest.approx(100.0)
    restarted = parse_metrics(generate_latest(CollectorRegistry()).decode(), 103.0)
    assert interval(after, restarted) is None
