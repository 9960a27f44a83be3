"""Pools: a side's memcached may be several servers; the proxy spreads keys over them by
ketama, each side on its own, and a server that fails is marked down (its keys fail fast,
naming it) and tried again later — against private memcached processes, two per side."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack

import pytest
from pymemcache.client.base import Client

from nxnw.config import Deployment
from nxnw.services.endpoints import HOST
from proxy.cache import CacheListener, CacheRouter, Ketama, MemcacheUnavailable, parse_servers
from proxy.config import ProxyConfig
from tests.memcached_harness import memcached_process


def spec(*addrs: tuple[str, int]) -> str:
    return ",".join(f"{h}:{p}" for h, p in addrs)


def test_a_list_of_servers_is_a_pool_in_the_plan_and_the_proxy_config() -> None:
    dep = Deployment(engine="sqlite:///x.db", zookeeper="127.0.0.1:2181", memcached="h1:11211,h2:11212:3")
    assert [(s.host, s.port, s.weight) for s in parse_servers(dep.memcached)] == [("h1", 11211, 1), ("h2", 11212, 3)]
    for bad, reason in [("h1:11211,h2", "'h2' is not host:port"), ("h1:11211:0", "weight 0"),
                        ("h1:11211,h1:11211", "named twice"), ("h1:99999", "port 99999")]:
        with pytest.raises(ValueError, match=reason):
            Deployment(engine="sqlite:///x.db", zookeeper="127.0.0.1:2181", memcached=bad)
        with pytest.raises(ValueError, match=reason):
            ProxyConfig(instance="p", n1_engine="sqlite:///a", n2_engine="sqlite:///b", n1_zookeeper="z:1",
                        n1_memcached=bad, n2_memcached="h:1")


def test_ketama_spreads_keys_by_weight_and_moves_few_keys_when_a_server_joins() -> None:
    keys = [b"key-%d" % i for i in range(20000)]
    two = Ketama(parse_servers("10.0.0.1:11211,10.0.0.2:11211"))
    weighted = Ketama(parse_servers("10.0.0.1:11211,10.0.0.2:11211:3"))
    three = Ketama(parse_servers("10.0.0.1:11211,10.0.0.2:11211,10.0.0.3:11211"))
    share = sum(two.server_of(k) for k in keys) / len(keys)
    assert 0.4 < share < 0.6
    assert 0.65 < sum(weighted.server_of(k) for k in keys) / len(keys) < 0.85
    moved = [k for k in keys if three.server_of(k) != two.server_of(k)]
    assert all(three.server_of(k) == 2 for k in moved)  # only keys the new server takes move
    assert 0.2 < len(moved) / len(keys) < 0.45


@pytest.fixture
async def pools() -> AsyncIterator[tuple[list[tuple[str, int]], list[tuple[str, int]], ExitStack]]:
    with ExitStack() as stack:
        n1 = [stack.enter_context(memcached_process()) for _ in range(2)]
        n2 = [stack.enter_context(memcached_process()) for _ in range(2)]
        yield n1, n2, stack


def _owner(addrs: list[tuple[str, int]], key: bytes) -> tuple[str, int]:
    return addrs[Ketama(parse_servers(spec(*addrs))).server_of(key)]


async def test_cow_through_pools_of_two_puts_each_key_on_its_ketama_server_on_both_sides(pools) -> None:
    n1, n2, _ = pools
    router = CacheRouter(spec(*n1), spec(*n2), mode="cow")
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    run = uuid.uuid4().hex[:6].encode()
    keys = [b"pool-%s-%d" % (run, i) for i in range(40)]
    try:
        def app() -> None:
            c = Client((HOST, listener.port), timeout=5)
            try:
                for key in keys:
                    assert c.set(key, b"v-" + key, noreply=False)
                assert c.get_many(keys) == {k: b"v-" + k for k in keys}
            finally:
                c.close()

        await asyncio.to_thread(app)
        await router.to_n2.drain(10)
        for side in (n1, n2):
            clients = {addr: Client(addr, timeout=5) for addr in side}
            for key in keys:
                owner = _owner(side, key)
                assert clients[owner].get(key) == b"v-" + key, (key, owner)
                for addr, client in clients.items():
                    if addr != owner:
                        assert client.get(key) is None, (key, addr)
            assert all(any(_owner(side, k) == addr for k in keys) for addr in side)  # both servers used
            for client in clients.values():
                client.close()
    finally:
        await listener.close()
        await router.close()


async def test_a_killed_server_is_named_marked_down_and_retried_while_the_other_serves(pools) -> None:
    n1, n2, stack = pools
    router = CacheRouter(spec(*n1), spec(*n2), mode="passthrough", fail_limit=2, retry_after=1.0)
    await router.start()
    route = router.route
    run = uuid.uuid4().hex[:6].encode()
    keys = [b"kill-%s-%d" % (run, i) for i in range(40)]
    dead, alive = n1[0], n1[1]
    on_dead = [k for k in keys if _owner(n1, k) == dead]
    on_alive = [k for k in keys if _owner(n1, k) == alive]
    assert on_dead and on_alive
    survivors = ExitStack()
    try:
        for key in keys:
            assert await route.set(key, b"x")
        stack.close()  # every private memcached stops …
        survivors.enter_context(memcached_process(alive[1]))  # … and the second of N1 comes back (empty)
        for _ in range(2):  # the first server's keys fail, naming it
            with pytest.raises(MemcacheUnavailable, match=f"n1 {dead[0]}:{dead[1]}"):
                await route.get(on_dead[0])
        with pytest.raises(MemcacheUnavailable, match=f"{dead[0]}:{dead[1]}: marked down after 2 consecutive"):
            await route.get(on_dead[0])
        assert router.stats()["proxy_n1_servers_down"] == 1
        for key in on_alive:  # the other server's keys are served meanwhile
            assert await route.set(key, b"y")
            assert (await route.get(key)).value == b"y"
        # the dead server comes back on its port: after retry_after, its keys are served again
        survivors.enter_context(memcached_process(dead[1]))
        deadline = time.monotonic() + 30
        while True:
            try:
                assert await route.set(on_dead[0], b"back")
                break
            except MemcacheUnavailable:
                assert time.monotonic() < deadline, "the restarted server was never tried again"
                await asyncio.sleep(0.1)
        assert (await route.get(on_dead[0])).value == b"back"
        assert router.stats()["proxy_n1_servers_down"] == 0
    finally:
        await router.close()
        survivors.close()
