"""The proxy's HTTP data API and its modes, against real ZooKeeper and engines."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from datastore import EntityRef, open_engine
from nxnw.services.endpoints import engine_url
from sync import layout
from sync.aio import run_blocking
from tests.conftest import require
from tests.proxy_harness import TEST_PLAN, key_path, proxy_config, register_plan, running_proxy, zk_namespace
from tests.proxy_harness import switch as harness_switch


@pytest.fixture
async def deployment(sqlite_dir: str, app_name: str):
    """N1 and N2 (sqlite), a ZooKeeper namespace, and one proxy in front of them."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()
    async with zk_namespace() as (zk_hosts, zk):
        await run_blocking(register_plan, zk, [app_name])
        async with running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts, shadow_rate=1.0)) as (server, http):
            yield {"server": server, "http": http, "zk": zk, "n1": n1, "n2": n2, "app": app_name}
    for engine in (n1, n2):
        await engine.drop_app(app_name)
        await engine.close()


async def switch(d, mode: str) -> None:
    await harness_switch(d["zk"], mode)


async def test_put_get_delete_round_trip_with_binary_key(deployment) -> None:
    http, app = deployment["http"], deployment["app"]
    path = key_path(app, "User", b"\xff\x00binary")
    put = await http.put(path, data=b"\x00value\xff")
    assert put.status == 200, await put.text()
    ts = (await put.json())["ts"]
    got = await http.get(path)
    assert got.status == 200
    assert await got.read() == b"\x00value\xff"
    assert int(got.headers["X-Nxnw-Timestamp"]) == ts
    deleted = await http.delete(path)
    assert (await deleted.json())["ts"] > ts
    missing = await http.get(path)
    assert missing.status == 404
    assert (await missing.json())["error"] == "not found"


async def test_passthrough_writes_only_n1(deployment) -> None:
    http, app, n1, n2 = deployment["http"], deployment["app"], deployment["n1"], deployment["n2"]
    await http.put(key_path(app, "K", b"a"), data=b"v")
    assert (await n1.get(EntityRef(app, "K", b"a"))).value == b"v"
    assert await n2.get(EntityRef(app, "K", b"a")) is None


async def test_cow_writes_both_sides_with_one_timestamp_before_answering(deployment) -> None:
    http, app, n1, n2 = deployment["http"], deployment["app"], deployment["n1"], deployment["n2"]
    await switch(deployment, "cow")
    ts = (await (await http.put(key_path(app, "K", b"a"), data=b"v")).json())["ts"]
    ref = EntityRef(app, "K", b"a")
    assert (await n1.read(ref)).ts == ts == (await n2.read(ref)).ts
    ts_del = (await (await http.delete(key_path(app, "K", b"a"))).json())["ts"]
    assert (await n1.read(ref)).deleted and (await n2.read(ref)).ts == ts_del


async def test_proxy_mode_reads_n2_and_writes_n2_then_n1(deployment) -> None:
    http, app, n1, n2 = deployment["http"], deployment["app"], deployment["n1"], deployment["n2"]
    await switch(deployment, "cow")
    await switch(deployment, "proxy")
    from datastore import Entity
    await n2.put(Entity(app, "K", b"only-n2", b"from n2", 5))
    assert await (await http.get(key_path(app, "K", b"only-n2"))).read() == b"from n2"
    ts = (await (await http.put(key_path(app, "K", b"b"), data=b"w")).json())["ts"]
    assert (await n1.read(EntityRef(app, "K", b"b"))).ts == ts
    assert (await n2.read(EntityRef(app, "K", b"b"))).ts == ts


async def test_shadow_read_divergence_is_journalled_and_repaired(deployment) -> None:
    http, app, n1, n2 = deployment["http"], deployment["app"], deployment["n1"], deployment["n2"]
    from datastore import Entity
    await n1.put(Entity(app, "K", b"d", b"right", 1000))
    await n2.put(Entity(app, "K", b"d", b"wrong", 500))
    await switch(deployment, "cow")
    assert await (await http.get(key_path(app, "K", b"d"))).read() == b"right"
    for _ in range(100):
        if (await n2.get(EntityRef(app, "K", b"d"))).value == b"right":
            break
        await asyncio.sleep(0.1)
    assert (await n2.get(EntityRef(app, "K", b"d"))).value == b"right"


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"writes": [{"kind": "K", "key": "!!!"}]}).encode(), "not valid base64"),
    (json.dumps({"writes": [{"kind": "bad kind", "key": "YQ=="}]}).encode(), "must match"),
    (json.dumps({"writes": "nope"}).encode(), "must be a list"),
])
async def test_bad_batch_bodies_get_400_with_reason_and_write_nothing(deployment, body: bytes, reason: str) -> None:
    http, app, n1 = deployment["http"], deployment["app"], deployment["n1"]
    resp = await http.post(f"/v1/apps/{app}/batch", data=body)
    assert resp.status == 400
    assert reason in (await resp.json())["reason"]
    assert await n1.apps() == [] or app not in await n1.apps()


@pytest.mark.parametrize(("path", "status", "reason"), [
    ("/v1/apps/BadApp/kinds/K/entities/YQ", 400, "must match"),
    ("/v1/apps/ok/kinds/K/entities/%%%", 400, "base64url"),
    ("/v1/apps/ok/kinds/K/entities/", 404, ""),
])
async def test_bad_paths_are_refused(deployment, path: str, status: int, reason: str) -> None:
    resp = await deployment["http"].put(path, data=b"v")
    assert resp.status == status
    if reason:
        assert reason in (await resp.json())["reason"]


async def test_a_body_over_the_limit_gets_413_and_nothing_is_written(deployment) -> None:
    http, app, n1 = deployment["http"], deployment["app"], deployment["n1"]
    resp = await http.put(key_path(app, "K", b"big"), data=b"x" * (1024 * 1024 + 1))
    assert resp.status == 413
    assert "exceeds" in (await resp.json())["reason"]
    assert await n1.get(EntityRef(app, "K", b"big")) is None


async def test_a_slow_client_does_not_stop_others_and_times_out(deployment) -> None:
    http, app, server = deployment["http"], deployment["app"], deployment["server"]
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    writer.write(f"PUT {key_path(app, 'K', b'slow')} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc".encode())
    await writer.drain()
    for i in range(20):
        assert (await http.put(key_path(app, "K", b"fast%d" % i), data=b"v")).status == 200
    status_line = await asyncio.wait_for(reader.readline(), timeout=20)
    assert b"408" in status_line
    writer.close()
    assert await deployment["n1"].get(EntityRef(app, "K", b"slow")) is None


async def test_unknown_mode_in_the_znode_fences_writes_until_fixed(deployment) -> None:
    http, app, zk = deployment["http"], deployment["app"], deployment["zk"]
    data, _ = zk.get(layout.mode(TEST_PLAN))
    zk.set(layout.mode(TEST_PLAN), json.dumps({"mode": "turbo", "epoch": 9}).encode())
    for _ in range(50):
        resp = await http.put(key_path(app, "K", b"f"), data=b"v")
        if resp.status == 503:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 503 and "refused" in (await resp.json())["reason"]
    zk.set(layout.mode(TEST_PLAN), data)
    for _ in range(50):
        resp = await http.put(key_path(app, "K", b"f"), data=b"v")
        if resp.status == 200:
            break
        await asyncio.sleep(0.05)
    assert resp.status == 200


async def test_lost_zookeeper_session_fences_writes_then_recovers(deployment) -> None:
    from kazoo.client import KazooClient
    http, app, server = deployment["http"], deployment["app"], deployment["server"]
    session_id, password = server.zk.client_id
    intruder = KazooClient(hosts=server.config.n1_zookeeper, client_id=(session_id, password), timeout=5)
    await run_blocking(intruder.start, 10)
    await run_blocking(intruder.stop)
    statuses = set()
    for _ in range(200):
        resp = await http.put(key_path(app, "K", b"x"), data=b"v")
        statuses.add(resp.status)
        if 503 in statuses and resp.status == 200:
            break
        await asyncio.sleep(0.05)
    assert 503 in statuses, "writes were not refused while the session was lost"
    assert resp.status == 200, "writes did not resume with a new session"


async def test_transactions_on_one_group_conflict_instead_of_both_committing(deployment) -> None:
    http, app = deployment["http"], deployment["app"]
    key = base64.b64encode(b"counter").decode()
    first = await http.put(key_path(app, "C", b"counter"), data=b"0")
    ts = (await first.json())["ts"]

    async def txn(value: bytes) -> int:
        body = {"group": "g1", "reads": [{"kind": "C", "key": key, "ts": ts}],
                "writes": [{"kind": "C", "key": key, "value": base64.b64encode(value).decode()}]}
        return (await http.post(f"/v1/apps/{app}/transactions", json=body)).status

    statuses = sorted(await asyncio.gather(txn(b"1"), txn(b"2")))
    assert statuses == [200, 409]


async def test_healthz_and_metrics(deployment) -> None:
    http = deployment["http"]
    health = await http.get("/healthz")
    assert (await health.json())["mode"] == "passthrough"
    metrics = await (await http.get("/metrics")).text()
    assert "nxnw_http_requests_total" in metrics
    assert (await http.get("/admin/state")).status == 401
    state = await http.get("/admin/state", headers={"Authorization": "Bearer test-token"})
    assert (await state.json())["plans"][TEST_PLAN]["journal"] == {"n1": 0, "n2": 0}


def _latency_count(metrics: str, mode: str) -> float:
    """The PUT route's request count in the latency histogram under ``mode``."""
    total = 0.0
    for line in metrics.splitlines():
        if (line.startswith("nxnw_http_request_seconds_count{") and f'mode="{mode}"' in line
                and "/v1/apps/{app}/kinds/{kind}/entities/{key}" in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_latency_is_labelled_with_the_mode_of_the_requests_app(deployment) -> None:
    """Each app follows its own plan's mode: the plan's app in cow is labelled cow, an app
    no plan names passthrough, in the same instance at the same time."""
    http, app = deployment["http"], deployment["app"]
    await switch(deployment, "cow")
    before = await (await http.get("/metrics")).text()
    for i in range(3):
        assert (await http.put(key_path(app, "K", b"%d" % i), data=b"v")).status == 200
    assert (await http.put(key_path(app + "_other", "K", b"x"), data=b"v")).status == 200
    after = await (await http.get("/metrics")).text()
    assert _latency_count(after, "cow") - _latency_count(before, "cow") == 3
    assert _latency_count(after, "passthrough") - _latency_count(before, "passthrough") == 1
    await deployment["n1"].drop_app(app + "_other")


async def test_cache_endpoints_write_n1_and_warm_n2_in_cow(deployment) -> None:
    from pymemcache.client.base import Client

    from nxnw.services.endpoints import MEMCACHED
    from proxy.api import encode_key

    http, app = deployment["http"], deployment["app"]
    await switch(deployment, "cow")
    key = f"{app}:cache-k".encode()
    path = f"/v1/cache/{encode_key(key)}"
    assert (await (await http.put(path, data=b"warm me", params={"ttl": "60"})).json()) == {"stored": True}
    assert await (await http.get(path)).read() == b"warm me"
    n1 = Client(("127.0.0.1", MEMCACHED["n1"]))
    n2 = Client(("127.0.0.1", MEMCACHED["n2"]))
    assert n1.get(key) == b"warm me"
    for _ in range(100):
        if n2.get(key) == b"warm me":
            break
        await asyncio.sleep(0.02)
    assert n2.get(key) == b"warm me", "cow did not mirror the cache write to N2"
    assert (await http.get("/v1/cache/%%%")).status == 400
    missing = await http.post(f"/v1/cache/{encode_key(key + b'-none')}/incr")
    assert missing.status == 404


async def test_n2_error_budget_fails_when_the_proxy_answers_5xx(deployment) -> None:
    from nxnw.error_budget import N2ErrorBudget

    http, app, zk, server = deployment["http"], deployment["app"], deployment["zk"], deployment["server"]
    budget = N2ErrorBudget([f"http://127.0.0.1:{server.http_port}"], max_error_rate=0.05)
    await asyncio.get_running_loop().run_in_executor(None, budget.baseline)
    for i in range(10):
        await http.put(key_path(app, "K", b"ok%d" % i), data=b"v")
    assert (await asyncio.get_running_loop().run_in_executor(None, budget)).ok
    data, _ = zk.get(layout.mode(TEST_PLAN))
    zk.set(layout.mode(TEST_PLAN), b"not a mode document")
    for _ in range(100):
        if (await http.put(key_path(app, "K", b"fenced"), data=b"v")).status == 503:
            break
        await asyncio.sleep(0.02)
    for i in range(10):
        await http.put(key_path(app, "K", b"fenced%d" % i), data=b"v")
    verdict = await asyncio.get_running_loop().run_in_executor(None, budget)
    zk.set(layout.mode(TEST_PLAN), data)
    assert not verdict.ok and "5xx" in verdict.reason


async def test_admin_mode_switch_needs_the_token_a_plan_and_a_known_mode(deployment) -> None:
    http = deployment["http"]
    assert (await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "cow"})).status == 401
    auth = {"Authorization": "Bearer test-token"}
    bad = await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "turbo"}, headers=auth)
    assert bad.status == 400 and "not one of" in (await bad.json())["reason"]
    bad = await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "cow", "drain_timeout": "soon"}, headers=auth)
    assert bad.status == 400
    bad = await http.post("/admin/mode", json={"mode": "cow"}, headers=auth)
    assert bad.status == 400 and "plan" in (await bad.json())["reason"]
    unknown = await http.post("/admin/mode", json={"plan": "no-such-plan", "mode": "cow"}, headers=auth)
    assert unknown.status == 409 and "not registered" in (await unknown.json())["reason"]
    ok = await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "cow"}, headers=auth)
    assert ok.status == 200 and (await ok.json()) == {"plan": TEST_PLAN, "mode": "cow", "epoch": 1}
    health = await (await http.get("/healthz")).json()
    assert health["plans"] == {TEST_PLAN: "cow"} and health["mode"] == "passthrough"
