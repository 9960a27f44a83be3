"""Mode changes under load: several instances, N2 failing mid-cow, the journal draining."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import pytest

from datastore import open_engine
from nxnw import services
from nxnw.services.endpoints import engine_url
from proxy.control import SwitchBlocked, journal_depth
from snapshot import verify_app
from sync.aio import run_blocking
from tests.conftest import require
from tests.proxy_harness import key_path, proxy_config, running_proxy, switch, zk_namespace


async def test_three_instances_switch_cow_to_proxy_and_no_client_reads_back_in_time(sqlite_dir: str, app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        proxies = [await stack.enter_async_context(running_proxy(proxy_config(f"p{i}", n1_url, n2_url, zk_hosts)))
                   for i in range(3)]
        await switch(zk, "cow", apps=[app_name])
        stop = asyncio.Event()
        violations: list[str] = []
        acked = 0

        async def client(cid: int) -> None:
            nonlocal acked
            rng = random.Random(cid)
            last_seen: dict[bytes, int] = {}
            while not stop.is_set():
                key = b"c%d-k%d" % (cid, rng.randrange(5))
                _, http = rng.choice(proxies)
                if rng.random() < 0.5:
                    resp = await http.put(key_path(app_name, "K", key), data=b"%d" % rng.randrange(10**9))
                    assert resp.status == 200, await resp.text()
                    last_seen[key] = max(last_seen.get(key, 0), (await resp.json())["ts"])
                    acked += 1
                else:
                    resp = await http.get(key_path(app_name, "K", key))
                    ts = int(resp.headers["X-Nxnw-Timestamp"]) if resp.status == 200 else 0
                    if ts < last_seen.get(key, 0):
                        violations.append(f"client {cid} read {key!r} at {ts} after writing {last_seen[key]}")
                    last_seen[key] = max(last_seen.get(key, 0), ts)

        clients = [asyncio.create_task(client(c)) for c in range(6)]
        await asyncio.sleep(1.0)
        await switch(zk, "proxy")
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
        assert acked > 50
        assert violations == []
        assert all(server.core.plan_mode("test") == "proxy" for server, _ in proxies)


async def test_n2_killed_mid_cow_journals_writes_and_drains_after_restart(sqlite_dir: str, app_name: str) -> None:
    """N1 sqlite, N2 Cassandra: stop Cassandra under load, clients see no error."""
    require("zookeeper-n1", "zookeeper-n2", "cassandra")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("cassandra", "n2", sqlite_dir)
    cassandra = services.service("cassandra")
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        server, http = await stack.enter_async_context(running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)))
        await switch(zk, "cow", apps=[app_name])
        statuses: list[int] = []
        stop = asyncio.Event()

        async def writer() -> None:
            i = 0
            while not stop.is_set():
                resp = await http.put(key_path(app_name, "K", b"w%04d" % (i % 300)), data=b"v%d" % i)
                statuses.append(resp.status)
                i += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(writer())
        await asyncio.sleep(0.5)
        await asyncio.get_running_loop().run_in_executor(None, cassandra.down)
        assert not cassandra.healthy(), "Cassandra still answers: was it started from another checkout's state dir?"
        await asyncio.sleep(2.0)
        depth_while_down = await run_blocking(journal_depth, zk, "test", "n2")
        with pytest.raises(SwitchBlocked, match="journal toward n2"):
            await switch(zk, "proxy", drain_timeout=0.5)
        await asyncio.get_running_loop().run_in_executor(None, cassandra.up)
        await asyncio.sleep(1.0)
        stop.set()
        await task
        assert set(statuses) == {200}, "a client saw an error while N2 was down"
        assert depth_while_down > 0
        for _ in range(600):
            if await run_blocking(journal_depth, zk, "test", "n2") == 0:
                break
            await asyncio.sleep(0.1)
        assert await run_blocking(journal_depth, zk, "test", "n2") == 0
        n1, n2 = open_engine(n1_url), open_engine(n2_url)
        await n1.open()
        await n2.open()
        try:
            report = await verify_app(n1, n2, app_name)
            assert report.identical, report.summary()
            assert report.n1.count == 300
        finally:
            await n2.drop_app(app_name)
            await n1.close()
            await n2.close()
