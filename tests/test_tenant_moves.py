"""Tenant moves: per-app modes and per-plan state, against real ZooKeeper, engines and memcached.

One plan moves its apps while every other app keeps going through the same proxies to N1
alone; plans over disjoint apps run at once, each in its own mode; a plan naming an app a
live plan holds is refused; a second plan never takes over the first one's phase.

The module's top-level imports exist in the tree before per-plan state too, so that
``test_a_second_plan_does_not_resume_the_first_ones_phase`` can be run against it (it fails
there: the second plan "resumed" the first one's phase).
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from contextlib import AsyncExitStack

from pymemcache.client.base import Client as MemcacheClient

from datastore import Entity, EntityRef
from nxnw.orchestrator import Orchestrator
from nxnw.services.endpoints import HOST, MEMCACHED
from tests.conftest import run_nxnw
from tests.test_orchestrator_gates import Setting, private_memcached, run_orchestrator, seed_n1, setting

__all__ = ["private_memcached", "setting"]  # fixtures used by name


def _other_plan(s: Setting, name: str, app: str):
    """``s.plan`` with another name over another app (same deployments)."""
    return s.plan.model_copy(update={"name": name, "apps": [app], "sync_paths": [f"/apps/{app}"]})


def _memcached(address: str) -> MemcacheClient:
    host, _, port = address.rpartition(":")
    return MemcacheClient((host, int(port)), connect_timeout=5, timeout=5)


def _all_keys(address: str) -> list[bytes]:
    """Every key a memcached holds (``lru_crawler metadump all``)."""
    import socket
    from urllib.parse import unquote_to_bytes

    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"lru_crawler metadump all\r\n")
        dump = b""
        while not dump.endswith(b"END\r\n"):
            chunk = conn.recv(65536)
            assert chunk, "memcached closed the connection during metadump"
            dump += chunk
    return [unquote_to_bytes(line.split()[0][len(b"key="):]) for line in dump.splitlines() if line.startswith(b"key=")]


# --- the "Done when": a moves to proxy, b never touches N2 -----------------------------


async def test_app_a_moves_to_proxy_while_app_b_writes_and_reads_through_the_same_proxies_and_never_touches_n2(
        setting: Setting) -> None:
    from nxnw.fleet import free_port
    from tests.proxy_harness import key_path, proxy_config, running_proxy

    s = setting
    a, b = s.app, f"b_{uuid.uuid4().hex[:10]}"
    await seed_n1(s, 100)
    n1_url, n2_url = s.plan.n1.engine, s.plan.n2.engine
    violations: list[str] = []
    counts = {"http": 0, "memcache": 0, "a": 0}
    try:
        async with AsyncExitStack() as stack:
            proxies = []
            for i in range(2):
                config = proxy_config(f"t{i}", n1_url, n2_url, s.plan.n1.zookeeper).model_copy(
                    update={"n2_memcached": s.plan.n2.memcached, "memcache_port": free_port(HOST)})
                proxies.append(await stack.enter_async_context(running_proxy(config)))
            stop = asyncio.Event()

            async def app_b(cid: int) -> None:
                """Writes and reads b's keys through both proxies (HTTP and memcache); each key
                has one writer, so every read must return the last value written."""
                rng = random.Random(cid)
                caches = [_memcached(f"{HOST}:{server.listener.port}") for server, _ in proxies]
                last: dict[bytes, bytes] = {}
                cached: dict[bytes, bytes] = {}
                i = 0
                while not stop.is_set():
                    i += 1
                    key = b"c%d-%d" % (cid, rng.randrange(8))
                    _, http = rng.choice(proxies)
                    if rng.random() < 0.5:
                        value = b"v%d-%d" % (cid, i)
                        resp = await http.put(key_path(b, "K", key), data=value)
                        assert resp.status == 200, await resp.text()
                        last[key] = value
                    elif key in last:
                        resp = await http.get(key_path(b, "K", key))
                        got = await resp.read() if resp.status == 200 else None
                        if got != last[key]:
                            violations.append(f"HTTP read of {b}/{key!r}: {got!r}, written {last[key]!r}")
                    ckey = f"{b}:{key.decode()}".encode()
                    cache = rng.choice(caches)
                    if rng.random() < 0.5:
                        value = b"m%d-%d" % (cid, i)
                        assert await asyncio.to_thread(cache.set, ckey, value, noreply=False)
                        cached[ckey] = value
                    elif ckey in cached:
                        got = await asyncio.to_thread(cache.get, ckey)
                        if got != cached[ckey]:
                            violations.append(f"memcache read of {ckey!r}: {got!r}, set {cached[ckey]!r}")
                    counts["http"] += 1
                    counts["memcache"] += 1
                for cache in caches:
                    cache.close()

            async def app_a() -> None:
                """a's own writes go on through the migration (they must reach N2)."""
                i = 0
                while not stop.is_set():
                    _, http = proxies[i % 2]
                    resp = await http.put(key_path(a, "Item", b"live%03d" % (i % 50)), data=b"a%d" % i)
                    assert resp.status in (200, 503), await resp.text()  # 503: refused while a switch drains
                    counts["a"] += resp.status == 200
                    i += 1
                    await asyncio.sleep(0.01)

            clients = [asyncio.create_task(app_b(c)) for c in range(3)] + [asyncio.create_task(app_a())]
            try:
                orchestrator = await run_orchestrator(s.plan, until="proxy")
                await asyncio.sleep(0.5)  # b goes on with a in proxy
            finally:
                stop.set()
                await asyncio.gather(*clients)
            assert violations == [], violations[:5]
            assert counts["http"] > 20 and counts["memcache"] > 20, counts
            assert orchestrator.state is not None and orchestrator.state.phase == "proxy"
            from sync import layout
            from sync.mode import read_mode
            assert all(server.core.plan_mode(s.plan.name) == "proxy" for server, _ in proxies)
            assert all(server.core.machine(b) is server.modes.unclaimed for server, _ in proxies)
            assert read_mode(s.zk1, path=layout.mode(s.plan.name)).mode == "proxy"

            # a is served from N2 now: a row only N2 holds is read through the proxy
            await s.n2.apply([Entity(a, "Item", b"only-on-n2", b"n2", 2**60)])
            got = await proxies[0][1].get(key_path(a, "Item", b"only-on-n2"))
            assert got.status == 200 and await got.read() == b"n2"
            # ... and a's writes made during the migration are on N2
            assert counts["a"] > 0
            assert await s.n2.get(EntityRef(a, "Item", b"live000")) is not None

        # b never touched N2: no row in N2's engine, no key of b's prefix in N2's memcached
        assert b not in await s.n2.apps() or [p async for r in await s.n2.ranges(b)
                                               async for p in s.n2.scan(b, r, tombstones=True) if p] == []
        assert b in await s.n1.apps()
        n1_cache = _memcached(f"{HOST}:{MEMCACHED['n1']}")
        keys = [f"{b}:c{c}-{k}".encode() for c in range(3) for k in range(8)]
        assert [k for k in _all_keys(s.plan.n2.memcached) if k.startswith(f"{b}:".encode())] == [], \
            "a key of b's prefix reached N2's memcached"
        assert n1_cache.get_many(keys), "b's cache writes did not reach N1's memcached"
        n1_cache.close()
    finally:
        for engine in (s.n1, s.n2):
            await engine.drop_app(b)


# --- two plans at once -------------------------------------------------------------------------


async def test_two_plans_over_disjoint_apps_are_live_at_once_in_different_modes(sqlite_dir: str) -> None:
    from nxnw.services.endpoints import engine_url
    from tests.conftest import require
    from tests.memcached_harness import memcached_process
    from tests.proxy_harness import key_path, proxy_config, register_plan, running_proxy, switch, zk_namespace

    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    tag = uuid.uuid4().hex[:8]
    a, b, c = f"a_{tag}", f"b_{tag}", f"c_{tag}"
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    # memcacheds of this test's own: another test's prepare may flush the shared N2 one
    with memcached_process() as (host1, port1), memcached_process() as (host2, port2):
        n1_cache, n2_cache = _memcached(f"{host1}:{port1}"), _memcached(f"{host2}:{port2}")
        config = proxy_config("p1", n1_url, n2_url, "").model_copy(
            update={"n1_memcached": f"{host1}:{port1}", "n2_memcached": f"{host2}:{port2}"})
        await _two_plans(config, n1_url, n2_url, (a, b, c), n1_cache, n2_cache)


async def _two_plans(config, n1_url: str, n2_url: str, apps: tuple[str, str, str], n1_cache: MemcacheClient,
                     n2_cache: MemcacheClient) -> None:
    from datastore import open_engine
    from proxy.api import encode_key
    from sync.aio import run_blocking
    from tests.proxy_harness import key_path, register_plan, running_proxy, switch, zk_namespace

    a, b, c = apps
    async with zk_namespace() as (zk_hosts, zk), \
            running_proxy(config.model_copy(update={"n1_zookeeper": zk_hosts})) as (server, http):
        n1, n2 = open_engine(n1_url), open_engine(n2_url)
        await n1.open()
        await n2.open()
        try:
            # registered after the proxy started: it learns both plans by itself
            await run_blocking(register_plan, zk, [a], "move-a", {})
            await run_blocking(register_plan, zk, [b], "move-b", {})
            await switch(zk, "cow", plan="move-a")
            await switch(zk, "passthrough", plan="move-b")  # the same mode: returns once acknowledged
            assert (server.core.plan_mode("move-a"), server.core.plan_mode("move-b")) == ("cow", "passthrough")
            for app in (a, b, c):
                assert (await http.put(key_path(app, "K", b"k1"), data=b"1")).status == 200
            assert await n2.get(EntityRef(a, "K", b"k1")) is not None, "a (cow) was not written to N2"
            assert await n2.get(EntityRef(b, "K", b"k1")) is None, "b (passthrough) was written to N2"
            assert await n2.get(EntityRef(c, "K", b"k1")) is None, "c (no plan) was written to N2"

            await switch(zk, "cow", plan="move-b")
            await switch(zk, "proxy", plan="move-a")  # move-b stays in cow
            health = await (await http.get("/healthz")).json()
            assert health["plans"] == {"move-a": "proxy", "move-b": "cow"} and health["mode"] == "passthrough"
            stats = server.cache.stats()  # the memcache listener's `stats`
            assert (stats["proxy_mode"], stats["proxy_plans_proxy"], stats["proxy_plans_cow"]) == ("passthrough", 1, 1)
            await n2.apply([Entity(app, "K", b"n2-only", b"n2", 2**60) for app in (a, b, c)])
            for app, served_from_n2 in ((a, True), (b, False), (c, False)):
                got = await http.get(key_path(app, "K", b"n2-only"))
                assert (got.status == 200) is served_from_n2, (app, got.status)
            assert (await http.put(key_path(b, "K", b"k2"), data=b"2")).status == 200
            assert await n2.get(EntityRef(b, "K", b"k2")) is not None, "b (now cow) was not written to N2"

            # memcache keys follow their app's prefix: a's from N2, b's from N1 (copied to N2), c's N1 only
            for app in (a, b, c):
                n2_cache.set(f"{app}:x".encode(), b"on n2", noreply=False)
                n1_cache.set(f"{app}:x".encode(), b"on n1", noreply=False)
            for app, expected in ((a, b"on n2"), (b, b"on n1"), (c, b"on n1")):
                got = await http.get(f"/v1/cache/{encode_key(f'{app}:x'.encode())}")
                assert await got.read() == expected, app
            assert (await http.put(f"/v1/cache/{encode_key(f'{c}:y'.encode())}", data=b"c")).status == 200
            await asyncio.sleep(0.3)  # a copy to N2 (there should be none) would have landed
            assert n2_cache.get(f"{c}:y".encode()) is None, "a key of no plan's prefix was copied to N2"
            assert n1_cache.get(f"{c}:y".encode()) == b"c"

            # the second plan rolls back on its own; the first stays in proxy
            await switch(zk, "passthrough", plan="move-b")
            assert (server.core.plan_mode("move-a"), server.core.plan_mode("move-b")) == ("proxy", "passthrough")
        finally:
            for engine in (n1, n2):
                for app in (a, b, c):
                    await engine.drop_app(app)
                await engine.close()
            for client in (n1_cache, n2_cache):
                client.close()


async def test_a_switch_waits_for_a_registered_instance_that_has_not_learnt_of_the_plan(sqlite_dir: str) -> None:
    """The membership of an instance that does not know the plan yet names no epoch for it:
    switch_mode waits for it (never skips it) and says so when it gives up."""
    import pytest

    from nxnw.services.endpoints import engine_url
    from proxy.control import SwitchBlocked
    from sync import layout
    from sync.aio import run_blocking
    from tests.conftest import require
    from tests.proxy_harness import proxy_config, register_plan, running_proxy, switch, zk_namespace

    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    app = f"w_{uuid.uuid4().hex[:8]}"
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    async with zk_namespace() as (zk_hosts, zk), running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)):
        # an instance registered on its own session that will never read the plans
        ghost = {"instance": "ghost", "incarnation": "x", "session": None, "plans": {}}
        zk.create(layout.proxy_member("ghost"), json.dumps(ghost).encode(), ephemeral=True, makepath=True)
        await run_blocking(register_plan, zk, [app], "late", {})
        with pytest.raises(SwitchBlocked, match="ghost \\(does not know the plan yet\\)"):
            await switch(zk, "cow", plan="late", ack_timeout=2)
        zk.delete(layout.proxy_member("ghost"))
        await switch(zk, "cow", plan="late")  # the same mode again: acknowledged by p1 alone


# --- claims ------------------------------------------------------------------------------------


async def test_a_plan_naming_an_app_another_live_plan_holds_is_refused_naming_that_plan(setting: Setting) -> None:
    from sync import layout
    from sync.state import MigrationStateStore

    s = setting
    await seed_n1(s, 10)
    await run_orchestrator(s.plan, until="prepare")  # registers and claims s.app
    other = f"other-{uuid.uuid4().hex[:6]}"
    text = s.plan_path.read_text().replace(f'name = "{s.plan.name}"', f'name = "{other}"')
    second = s.plan_path.with_name("second.toml")
    second.write_text(text)

    result = await asyncio.to_thread(run_nxnw, "migrate", str(second))
    assert result.returncode == 2, (result.stdout, result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert f"plan {s.plan.name} holds app {s.app}" in last and other in last, last
    assert "Traceback" not in result.stderr
    assert MigrationStateStore(s.zk1, path=layout.state(other)).get() is None
    assert s.zk1.exists(layout.plan(other)) is None, "the refused plan was registered anyway"
    status = await asyncio.to_thread(run_nxnw, "status", str(second), "--json")
    facts = json.loads(status.stdout)
    assert facts["registered"] is None and facts["phase"] is None
    assert facts["other_plans"] == {s.plan.name: {"apps": [s.app], "live": True, "mode": "passthrough"}}

    # once the first plan is rolled back, its claim is released and the second may start
    await run_orchestrator(s.plan, "rollback")
    result = await asyncio.to_thread(run_nxnw, "migrate", str(second), "--until", "prepare")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert MigrationStateStore(s.zk1, path=layout.state(other)).get().phase == "prepare"


# --- the old defect: one global state --------------------------------------------------------------


async def test_a_second_plan_does_not_resume_the_first_ones_phase(setting: Setting) -> None:
    s = setting
    await seed_n1(s, 20)
    first = await run_orchestrator(s.plan, until="cow")
    assert first.state is not None and first.state.phase == "cow"
    b = f"b_{uuid.uuid4().hex[:10]}"
    await s.n1.apply([Entity(b, "Item", b"k", b"v", 1_000_000)])
    try:
        second = await run_orchestrator(_other_plan(s, f"second-{uuid.uuid4().hex[:6]}", b), until="prepare")
        assert second.state is not None and second.state.phase == "prepare", second.progress.events
        assert not any("resumed" in line for line in second.progress.events), second.progress.events

        # the first plan resumes its own phase, its cow epoch untouched by the second plan
        async with await Orchestrator.connect(s.plan) as resumed:
            await resumed.migrate(until="verify")
            assert resumed.state is not None and resumed.state.phase == "verify"
            assert any("resumed in phase cow" in line for line in resumed.progress.events)
    finally:
        for engine in (s.n1, s.n2):
            await engine.drop_app(b)



async def test_a_later_plan_takes_over_the_apps_of_a_released_one(sqlite_dir: str) -> None:
    """A rolled-back plan releases its app; a plan registered later over it takes it over on
    every proxy (after the requests admitted under the first plan ended) and moves it."""
    from datastore import open_engine
    from nxnw.services.endpoints import engine_url
    from sync.aio import run_blocking
    from sync.state import AppClaimed, PlanRegistry
    from tests.conftest import require
    from tests.proxy_harness import key_path, proxy_config, register_plan, running_proxy, switch, zk_namespace

    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    app = f"t_{uuid.uuid4().hex[:8]}"
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()
    try:
        async with zk_namespace() as (zk_hosts, zk), \
                running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)) as (server, http):
            await run_blocking(register_plan, zk, [app], "first", {})
            await switch(zk, "cow", plan="first")
            await switch(zk, "passthrough", plan="first")
            try:
                await run_blocking(register_plan, zk, [app], "second", {})
                raise AssertionError("a second plan claimed an app the first still holds")
            except AppClaimed as refused:
                assert "plan first holds app" in str(refused)
            await run_blocking(PlanRegistry(zk).release, "first")
            await run_blocking(register_plan, zk, [app], "second", {})
            await switch(zk, "cow", plan="second")
            assert server.core.machine(app).plan == "second"
            assert (await http.put(key_path(app, "K", b"k"), data=b"v")).status == 200
            assert await n2.get(EntityRef(app, "K", b"k")) is not None, "the app did not follow the second plan"
    finally:
        for engine in (n1, n2):
            await engine.drop_app(app)
            await engine.close()


async def test_requests_of_an_app_whose_plan_is_being_registered_wait_instead_of_being_refused(
        sqlite_dir: str) -> None:
    """While a proxy takes a newly registered plan on (its mode watcher's first read, the
    drain of what was admitted as unclaimed, its first adoption), the app's data and cache
    requests wait; none is refused."""
    from datastore import open_engine
    from nxnw.services.endpoints import engine_url
    from proxy.api import encode_key
    from sync.aio import run_blocking
    from tests.conftest import require
    from tests.proxy_harness import key_path, proxy_config, register_plan, running_proxy, switch, zk_namespace

    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    apps = [f"r{i}_{uuid.uuid4().hex[:8]}" for i in range(5)]
    statuses: list[tuple[int, str]] = []
    try:
        async with zk_namespace() as (zk_hosts, zk), \
                running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)) as (server, http):
            stop = asyncio.Event()

            async def client(app: str, cid: int) -> None:
                i = 0
                while not stop.is_set():
                    resp = await http.put(key_path(app, "K", b"c%d-%d" % (cid, i % 20)), data=b"v")
                    statuses.append((resp.status, await resp.text() if resp.status != 200 else ""))
                    resp = await http.put(f"/v1/cache/{encode_key(f'{app}:c{cid}-{i % 20}'.encode())}", data=b"v")
                    statuses.append((resp.status, await resp.text() if resp.status != 200 else ""))
                    i += 1

            clients = [asyncio.create_task(client(app, c)) for app in apps for c in range(3)]
            try:
                for n, app in enumerate(apps):  # each plan's registration meets requests of its app
                    await asyncio.sleep(0.2)
                    await run_blocking(register_plan, zk, [app], f"reg-{n}", {})
                    await switch(zk, "cow", plan=f"reg-{n}")
                await asyncio.sleep(0.2)
            finally:
                stop.set()
                await asyncio.gather(*clients)
        refused = [text for status, text in statuses if status != 200]
        assert len(statuses) > 100 and refused == [], refused[:3]
    finally:
        for url in (n1_url, n2_url):
            engine = open_engine(url)
            await engine.open()
            for app in apps:
                await engine.drop_app(app)
            await engine.close()
