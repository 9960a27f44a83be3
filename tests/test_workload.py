"""The workload: every kind of op through real proxies, recorded with its outcome, checked clean.

Two proxy instances over sqlite N1/N2 and the real ZooKeeper and memcached; clients fail
over between them (and away from an address where nothing listens).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest
from pymemcache.client.base import Client

from datastore import Entity, open_engine
from nxnw.history import History, check
from nxnw.services.endpoints import MEMCACHED, engine_url
from nxnw.workload import Endpoint, Workload, WorkloadError, http_outcome
from proxy.api import encode_key
from tests.conftest import require
from tests.proxy_harness import key_path, proxy_config, running_proxy, switch, zk_namespace

DEADLINE = 120.0


async def wait_for(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    give_up = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up after {deadline:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


def dead_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def fleet(sqlite_dir: str, app_name: str):
    """Two proxy instances (the second with a memcache listener) over sqlite N1 and N2."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()
    async with zk_namespace() as (zk_hosts, zk):
        async with running_proxy(proxy_config("w1", n1_url, n2_url, zk_hosts)) as (p1, _), \
                running_proxy(proxy_config("w2", n1_url, n2_url, zk_hosts, memcache_port=0)) as (p2, _):
            assert p2.listener is not None
            yield {"zk": zk, "n1": n1, "n2": n2, "app": app_name,
                   "endpoints": [Endpoint(port=p1.http_port), Endpoint(port=p2.http_port, memcache_port=p2.listener.port)]}
    for engine in (n1, n2):
        await engine.drop_app(app_name)
        await engine.close()


async def final_state(engine, app: str) -> dict[str, tuple[bytes, int] | None]:
    state: dict[str, tuple[bytes, int] | None] = {}
    for key_range in await engine.ranges(app):
        async for page in engine.scan(app, key_range, tombstones=True):
            for e in page:
                state[e.key.decode()] = None if e.value is None else (e.value, e.ts)
    return state


def ops_done(history: History, count: int) -> Callable[[], bool]:
    return lambda: sum(o.ok for o in history.ops) >= count


async def test_every_kind_of_op_through_two_proxies_across_cow_and_proxy_checks_clean(fleet) -> None:
    app, n1, n2 = fleet["app"], fleet["n1"], fleet["n2"]
    history = History()
    # seeded data: on N1, and on N2 as a snapshot load would leave it; part of the history
    seed = [Entity(app, "Item", b"key-%05d" % i, b"seed-%d" % i, time.time_ns() // 1000 - 1_000_000 + i)
            for i in range(0, 40, 2)]
    await n1.apply(seed)
    await switch(fleet["zk"], "cow", apps=[fleet["app"]])
    await n2.apply(seed)
    for e in seed:
        history.seed(e.key.decode(), e.value, e.ts)
    endpoints = fleet["endpoints"]
    workload = Workload(app, lambda cid: endpoints[cid % 2:] + endpoints[:cid % 2], clients=3, keys=40,
                        history=history, groups=4, pause=0.001,
                        mix={"read": 3, "write": 3, "delete": 1, "batch": 1, "transaction": 1, "cache": 3})
    workload.start()
    try:
        await wait_for(ops_done(history, 150), "150 acknowledged ops in cow")
        switch_started = time.monotonic()
        await switch(fleet["zk"], "proxy")
        switch_done = time.monotonic()
        done = sum(o.ok for o in history.ops)
        await wait_for(ops_done(history, done + 150), "150 more acknowledged ops in proxy")
    finally:
        await workload.stop()
    ops = history.ops
    kinds = Counter((o.kind, o.batch is not None) for o in ops if o.ok)
    for kind in [("write", False), ("delete", False), ("read", False), ("write", True), ("read", True),
                 ("cache_get", False), ("cache_set", False), ("cache_delete", False)]:
        assert kinds[kind] > 0, f"no acknowledged {kind} op in {kinds}"
    assert any(o.ok and o.kind == "read" and o.ts is None and o.batch is None for o in ops), "no 404 read"
    assert any(o.ok and o.kind == "cache_get" and o.value is None for o in ops), "no cache miss"
    assert any(o.ok and o.kind == "cache_get" and o.value is not None for o in ops), "no cache hit"
    assert {o.client for o in ops} >= {"c0", "c1", "c2", "seed"}
    report = check(history, await final_state(n2, app), cache_unchecked=[(switch_started, switch_done)])
    assert report.ok, report.summary()
    assert report.acknowledged_writes >= len(seed)


async def test_a_client_fails_over_past_an_endpoint_where_nothing_listens(fleet) -> None:
    app = fleet["app"]
    history = History()
    dead = Endpoint(port=dead_port())
    workload = Workload(app, lambda cid: [dead, fleet["endpoints"][0]], clients=2, keys=20, history=history,
                        mix={"write": 1, "read": 1})
    workload.start()
    try:
        await wait_for(ops_done(history, 60), "60 acknowledged ops")
    finally:
        await workload.stop()
    outcomes = Counter(o.outcome for o in history.ops)
    # a connection that was never opened sent nothing: failed, not unknown
    assert outcomes["failed"] > 0 and outcomes["unknown"] == 0, outcomes
    report = check(history, await final_state(fleet["n1"], app))
    assert report.ok, report.summary()
    assert report.failed_ops == outcomes["failed"]


async def test_a_client_that_gives_up_mid_request_records_an_unknown_outcome(fleet) -> None:
    app = fleet["app"]
    history = History()
    workload = Workload(app, lambda cid: fleet["endpoints"], clients=2, keys=20, history=history,
                        mix={"write": 2, "delete": 1, "read": 1})
    workload.start()
    try:
        await wait_for(ops_done(history, 20), "20 acknowledged ops")
        workload.set_client_timeout(1e-6)
        await wait_for(lambda: any(o.outcome == "unknown" for o in history.ops), "a request that timed out")
        workload.set_client_timeout(None)
        done = sum(o.ok for o in history.ops)
        await wait_for(ops_done(history, done + 20), "20 acknowledged ops after the timeouts")
    finally:
        await workload.stop()
    assert workload.stats.unknown == sum(o.outcome == "unknown" for o in history.ops) > 0
    report = check(history, await final_state(fleet["n1"], app))
    assert report.ok, report.summary()


async def test_the_checker_sees_a_value_planted_behind_the_proxys_back_on_the_serving_side(fleet) -> None:
    """After cutover, an entity and a cache item that nobody wrote through the proxy are put
    straight into N2; reading them through the proxy is reported, as a phantom read and as
    a stale cache read."""
    app, n2 = fleet["app"], fleet["n2"]
    history = History()
    await switch(fleet["zk"], "cow", apps=[fleet["app"]])
    await switch(fleet["zk"], "proxy")
    workload = Workload(app, lambda cid: fleet["endpoints"][:1], clients=1, keys=4, history=history,
                        mix={"write": 1, "cache": 1})
    workload.start()
    try:
        await wait_for(ops_done(history, 40), "40 acknowledged ops")
    finally:
        await workload.stop()
    assert check(history, await final_state(n2, app)).ok
    ops = history.ops
    key = next(o.key for o in reversed(ops) if o.ok and o.kind == "write")
    newest = max(o.ts for o in ops if o.ok and o.key == key and o.kind == "write")
    await n2.apply([Entity(app, "Item", key.encode(), b"planted", newest + 1000)])
    sets = [o for o in ops if o.ok and o.kind == "cache_set"]
    old = next(s for s in sets if any(t.key == s.key and t.invoked_at > s.completed_at for t in sets))
    planter = Client(("127.0.0.1", MEMCACHED["n2"]))
    try:
        planter.set(old.key, old.value)
    finally:
        planter.close()
    base = f"http://127.0.0.1:{fleet['endpoints'][0].port}"
    async with aiohttp.ClientSession() as http:
        read = history.begin("probe", "read", key)
        async with http.get(f"{base}{key_path(app, 'Item', key.encode())}") as resp:
            assert await resp.read() == b"planted"
            read.succeed(int(resp.headers["X-Nxnw-Timestamp"]), b"planted")
        hit = history.begin("probe", "cache_get", old.key)
        async with http.get(f"{base}/v1/cache/{encode_key(old.key.encode())}") as resp:
            assert await resp.read() == old.value
            hit.succeed(value=old.value)
    report = check(history, await final_state(n2, app))
    assert report.phantom_reads == 1 and report.examples["phantom-read"][0].key == key, report.summary()
    assert report.unknown_writes == 1, report.summary()
    assert report.stale_cache_reads == 1 and report.examples["stale-cache-read"][0].key == old.key, report.summary()


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (200, b'{"ts": 1}', "ok"),
    (404, b'{"error": "not found"}', "failed"),
    (409, b'{"error": "conflict", "reason": "changed"}', "failed"),
    (400, b'{"error": "invalid input"}', "failed"),
    (503, b'{"error": "refused", "reason": "fenced before any engine call"}', "failed"),
    (503, b'{"error": "unavailable", "reason": "fenced after the write"}', "unknown"),
    (503, b"not json", "unknown"),
    (502, b'{"error": "backend failure"}', "unknown"),
    (500, b"", "unknown"),
])
def test_an_answer_is_failed_only_when_nothing_can_have_reached_an_engine(status, body, outcome) -> None:
    assert http_outcome(status, body) == outcome


def test_bad_workload_options_are_refused_with_the_option() -> None:
    def endpoint(cid: int) -> Endpoint:
        return Endpoint(port=1)

    with pytest.raises(WorkloadError, match="mix"):
        Workload("a", endpoint, mix={"reed": 1})
    with pytest.raises(WorkloadError, match="mix"):
        Workload("a", endpoint, mix={"read": 0})
    with pytest.raises(WorkloadError, match="client_timeout"):
        Workload("a", endpoint, client_timeout=0)
    with pytest.raises(WorkloadError, match="timeout"):
        Workload("a", endpoint).set_client_timeout(-1)
