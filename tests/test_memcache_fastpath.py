"""The fast path: single-key text commands relayed untouched to the key's server in every
mode, and what ``cow`` still owes N2 for them — a write mirrored by its reply line, a hit
filled by key (the worker reads flags, TTL and CAS itself) — never a stale N2 value.
Against the real N1 and N2 memcacheds (unique keys; nothing is flushed)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from pymemcache.client.base import Client

from nxnw.services.endpoints import HOST, MEMCACHED
from proxy.cache import CacheListener, CacheRouter
from tests.conftest import require
from tests.test_cache_routes import Gate
from tests.test_memcache_fidelity import exchange

N1 = (HOST, MEMCACHED["n1"])
N2 = (HOST, MEMCACHED["n2"])


@pytest.fixture
def key() -> bytes:
    return b"fast-%s" % uuid.uuid4().hex[:12].encode()


async def _listening(mode: str, **kwargs) -> tuple[CacheRouter, CacheListener]:
    require("memcached-n1", "memcached-n2")
    router = CacheRouter(N1, N2, mode=mode, **kwargs)
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    return router, listener


async def _n2_ttl(key: bytes) -> tuple[bytes | None, int | None]:
    reader, writer = await asyncio.open_connection(*N2)
    writer.write(b"mg %b v t f\r\n" % key)
    head = await reader.readuntil(b"\r\n")
    value = None
    ttl = None
    if head.startswith(b"VA "):
        value = (await reader.readuntil(b"\r\n"))[:-2]
        ttl = int(next(t for t in head.split() if t.startswith(b"t"))[1:])
    writer.close()
    return value, ttl


async def test_a_relayed_get_in_cow_fills_n2_with_flags_and_ttl(key: bytes) -> None:
    router, listener = await _listening("cow")
    try:
        Client(N1).set(key, b"cold", expire=300, noreply=False, flags=5)
        assert await exchange(listener.port, b"get %b\r\n" % key) == b"VALUE %b 5 4\r\ncold\r\nEND\r\n" % key
        assert listener.stats.forwarded == 1
        await router.to_n2.drain(10)
        value, ttl = await _n2_ttl(key)
        assert value == b"cold" and 290 <= ttl <= 300, (value, ttl)
        assert Client(N2).get(key, default=None) == b"cold"
    finally:
        await listener.close()
        await router.close()


async def test_a_relayed_get_in_cow_never_leaves_on_n2_a_value_n1_overwrote_meanwhile(key: bytes) -> None:
    gate = Gate(key)
    router, listener = await _listening("cow", before_fill=gate)
    try:
        n1 = Client(N1)
        n1.set(key, b"old", noreply=False)
        assert await exchange(listener.port, b"get %b\r\n" % key) == b"VALUE %b 0 3\r\nold\r\nEND\r\n" % key
        await asyncio.wait_for(gate.reached.wait(), 10)  # the worker read "old" from N1
        n1.set(key, b"new", noreply=False)  # written through another instance: its copy is not ours
        gate.release.set()
        await router.to_n2.drain(10)
        assert Client(N2).get(key) is None  # a miss, never "old"
    finally:
        await listener.close()
        await router.close()


async def test_relayed_writes_in_cow_reach_n2_and_a_delete_removes_the_copy(key: bytes) -> None:
    router, listener = await _listening("cow")
    n2 = Client(N2)
    try:
        got = await exchange(listener.port, b"set %b 3 300 2\r\nv1\r\nappend %b 0 0 1\r\n!\r\nincr %bn 1\r\n"
                                            b"set %bn 0 0 1\r\n7\r\nincr %bn 5\r\ntouch %b 200\r\n" % (key, key, key, key, key, key))
        assert got == b"STORED\r\nSTORED\r\nNOT_FOUND\r\nSTORED\r\n12\r\nTOUCHED\r\n"
        assert listener.stats.forwarded == 4  # the sets take the parsed path in cow: their copy needs the CAS
        await router.to_n2.drain(10)
        assert n2.get(key) == b"v1!" and n2.get(key + b"n") == b"12"
        assert 190 <= (await _n2_ttl(key))[1] <= 200
        assert await exchange(listener.port, b"delete %b\r\n" % key) == b"DELETED\r\n"
        await router.to_n2.drain(10)
        assert n2.get(key) is None
    finally:
        await listener.close()
        await router.close()


async def test_proxy_mode_relays_reads_from_n2_and_mirrors_writes_to_n1(key: bytes) -> None:
    router, listener = await _listening("proxy")
    try:
        Client(N2).set(key, b"on-n2", noreply=False)
        assert await exchange(listener.port, b"get %b\r\n" % key) == b"VALUE %b 0 5\r\non-n2\r\nEND\r\n" % key
        assert await exchange(listener.port, b"set %b 0 0 3\r\nnew\r\n" % key) == b"STORED\r\n"
        await router.to_n1.drain(10)
        assert Client(N1).get(key) == b"new"
        assert listener.stats.forwarded == 1  # the get; the set is parsed (its copy needs the CAS)
    finally:
        await listener.close()
        await router.close()


async def test_a_pipelining_client_gets_its_replies_in_order(key: bytes) -> None:
    router, listener = await _listening("passthrough")
    try:
        burst = b"".join(b"set %b%d 0 0 %d\r\n%d\r\n" % (key, i, len(b"%d" % i), i) for i in range(200))
        burst += b"".join(b"get %b%d\r\n" % (key, i) for i in range(200))
        start = time.monotonic()
        got = await exchange(listener.port, burst, timeout=60)
        assert got == b"STORED\r\n" * 200 + b"".join(
            b"VALUE %b%d 0 %d\r\n%d\r\nEND\r\n" % (key, i, len(b"%d" % i), i) for i in range(200)), time.monotonic() - start
    finally:
        await listener.close()
        await router.close()
