"""Cache routes, copy queue and mode switch against the real N1 and N2 memcacheds.

Each test uses its own key prefix and flushes nothing. N1/N2 are checked with pymemcache
(an independent client), never through the code under test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from pymemcache.client.base import Client

from nxnw.services.endpoints import HOST, MEMCACHED
from proxy.cache import (
    CacheFencedError, CacheRouter, InvalidKeyError, MemcacheClient, MemcacheTimeout, MemcacheUnavailable, Outcome,
    StoreMode, ValueTooLargeError,
)
from proxy.cache.errors import MAX_ITEM_BYTES
from tests.conftest import require

N1 = (HOST, MEMCACHED["n1"])
N2 = (HOST, MEMCACHED["n2"])


class _WithFlags:
    """pymemcache serde that hands back (value, flags) untouched."""

    def serialize(self, key, value):
        return value, 0

    def deserialize(self, key, value, flags):
        return value, flags


@pytest.fixture
def prefix() -> bytes:
    return b"t-%s-" % uuid.uuid4().hex[:12].encode()


@pytest.fixture
def n1() -> Client:
    require("memcached-n1", "memcached-n2")
    client = Client(N1, serde=_WithFlags(), timeout=2)
    yield client
    client.close()


@pytest.fixture
def n2() -> Client:
    require("memcached-n1", "memcached-n2")
    client = Client(N2, serde=_WithFlags(), timeout=2)
    yield client
    client.close()


async def _router(mode: str, **kwargs) -> CacheRouter:
    require("memcached-n1", "memcached-n2")
    router = CacheRouter(N1, N2, mode=mode, **kwargs)
    await router.start()
    return router


@pytest.fixture
async def cow() -> AsyncIterator[CacheRouter]:
    router = await _router("cow")
    yield router
    await router.close()


async def _ttl(addr: tuple[str, int], key: bytes) -> int | None:
    client = MemcacheClient(*addr)
    try:
        item = await client.get(key)
        return None if item is None else item.ttl
    finally:
        await client.close()


class Gate:
    """A ``before_fill`` seam: the fill of ``key`` stops in the window between its read on
    N1 and its store on N2 until the test has done what it wants there."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, key: bytes) -> None:
        if key == self.key:
            self.reached.set()
            await asyncio.wait_for(self.release.wait(), 5)


# --- modes -------------------------------------------------------------------------------


async def test_passthrough_serves_n1_and_writes_nothing_to_n2(prefix: bytes, n1: Client, n2: Client) -> None:
    router = await _router("passthrough")
    try:
        assert await router.route.set(prefix + b"k", b"v", 3, 100)
        assert (await router.route.get(prefix + b"k")).value == b"v"
        await router.to_n2.drain(5)
    finally:
        await router.close()
    assert n1.get(prefix + b"k") == (b"v", 3)
    assert n2.get(prefix + b"k") is None


async def test_cow_mirrors_every_write_op_to_n2(cow: CacheRouter, prefix: bytes, n1: Client, n2: Client) -> None:
    r = cow.route
    k = lambda name: prefix + name.encode()  # noqa: E731
    assert await r.set(k("set"), b"s", 1, 300)
    assert await r.add(k("add"), b"a", 2, 300)
    assert await r.set(k("replace"), b"old", 0, 300) and await r.replace(k("replace"), b"new", 3, 300)
    assert await r.set(k("append"), b"ab", 4, 300) and await r.append(k("append"), b"cd")
    assert await r.set(k("prepend"), b"cd", 5, 300) and await r.prepend(k("prepend"), b"ab")
    assert await r.set(k("cas"), b"one", 6, 300)
    assert await r.cas(k("cas"), b"two", (await r.gets(k("cas"))).cas, 6, 300) is Outcome.STORED
    assert await r.set(k("incr"), b"10", 7, 300) and await r.incr(k("incr"), 5) == 15
    assert await r.set(k("decr"), b"10", 8, 300) and await r.decr(k("decr"), 3) == 7
    assert await r.set(k("touch"), b"t", 9, 300) and await r.touch(k("touch"), 1000)
    assert await r.set(k("gat"), b"g", 10, 300) and (await r.gat(k("gat"), 2000)).value == b"g"
    assert await r.set(k("delete"), b"d", 0, 300) and await r.delete(k("delete"))
    await cow.to_n2.drain(5)

    for name in ("set", "add", "replace", "append", "prepend", "cas", "incr", "decr", "touch", "gat"):
        assert n2.get(k(name)) == n1.get(k(name)) is not None, name
    assert n2.get(k("append"))[0] == b"abcd" and n2.get(k("prepend"))[0] == b"abcd"
    assert n2.get(k("incr"))[0] == b"15" and n2.get(k("cas"))[0] == b"two"
    assert n1.get(k("delete")) is None and n2.get(k("delete")) is None
    assert 998 <= await _ttl(N2, k("touch")) <= 1000
    assert 1998 <= await _ttl(N2, k("gat")) <= 2000
    assert not cow.to_n2.dropped


async def test_cow_failed_conditional_writes_change_nothing_on_n2(cow: CacheRouter, prefix: bytes, n2: Client) -> None:
    r = cow.route
    assert not await r.replace(prefix + b"absent", b"x")
    assert await r.set(prefix + b"here", b"1") and not await r.add(prefix + b"here", b"2")
    assert await r.cas(prefix + b"here", b"3", 1) is Outcome.EXISTS
    await cow.to_n2.drain(5)
    assert n2.get(prefix + b"absent") is None
    assert n2.get(prefix + b"here") == (b"1", 0)


async def test_cor_copies_a_hit_to_n2_with_its_flags_and_ttl(cow: CacheRouter, prefix: bytes, n1: Client,
                                                              n2: Client) -> None:
    n1.set(prefix + b"k", b"warm", expire=500, flags=42, noreply=False)
    item = await cow.route.get(prefix + b"k")
    assert (item.value, item.flags) == (b"warm", 42)
    await cow.to_n2.drain(5)
    assert n2.get(prefix + b"k") == (b"warm", 42)
    assert 497 <= await _ttl(N2, prefix + b"k") <= 500


async def test_cor_does_not_overwrite_a_value_already_on_n2(cow: CacheRouter, prefix: bytes, n1: Client,
                                                            n2: Client) -> None:
    n1.set(prefix + b"k", b"n1", noreply=False)
    n2.set(prefix + b"k", b"n2-newer", noreply=False)
    await cow.route.get(prefix + b"k")
    await cow.to_n2.drain(5)
    assert n2.get(prefix + b"k") == (b"n2-newer", 0)


# --- the COR race: a write on N1 between the fill's read and its store on N2 -------------


@pytest.mark.parametrize("write", ["delete", "set"])
async def test_cor_fill_never_restores_a_value_overwritten_or_deleted_through_the_proxy(
        write: str, prefix: bytes, n1: Client, n2: Client) -> None:
    key = prefix + b"race"
    gate = Gate(key)
    router = await _router("cow", before_fill=gate)
    try:
        n1.set(key, b"old", noreply=False)
        assert (await router.route.get(key)).value == b"old"       # the fill has read "old"
        await asyncio.wait_for(gate.reached.wait(), 5)
        if write == "delete":
            assert await router.route.delete(key)
        else:
            assert await router.route.set(key, b"new")
        # the write's mirror is queued behind the held fill (same key, same worker)
        gate.release.set()
        await router.to_n2.drain(5)
    finally:
        await router.close()
    assert n2.get(key) == (None if write == "delete" else (b"new", 0))


@pytest.mark.parametrize("write", ["delete", "set"])
async def test_cor_fill_never_restores_a_value_changed_through_another_instance_whose_mirror_landed_first(
        write: str, prefix: bytes, n1: Client, n2: Client) -> None:
    """The order that defeats a fill made with ``add`` alone: the other instance's delete
    reaches N1 and its mirror empties N2 *before* this instance's stale fill is stored."""
    key = prefix + b"race"
    gate = Gate(key)
    router = await _router("cow", before_fill=gate)
    other = await _router("cow")
    try:
        n1.set(key, b"old", noreply=False)
        await router.route.get(key)
        await asyncio.wait_for(gate.reached.wait(), 5)
        if write == "delete":
            assert await other.route.delete(key)
        else:
            assert await other.route.set(key, b"new")
        await other.to_n2.drain(5)                      # its mirror is on N2 now
        gate.release.set()
        await router.to_n2.drain(5)
    finally:
        await router.close()
        await other.close()
    assert n2.get(key) == (None if write == "delete" else (b"new", 0))


async def test_cor_fill_is_undone_when_n1_changed_and_its_mirror_has_not_landed_yet(
        prefix: bytes, n1: Client, n2: Client) -> None:
    key = prefix + b"race"
    gate = Gate(key)
    router = await _router("cow", before_fill=gate)
    try:
        n1.set(key, b"old", noreply=False)
        await router.route.get(key)
        await asyncio.wait_for(gate.reached.wait(), 5)
        n1.set(key, b"new", noreply=False)  # written elsewhere; its mirror is still on its way
        gate.release.set()
        await router.to_n2.drain(5)
    finally:
        await router.close()
    assert n2.get(key) is None  # a miss, never "old"


# --- copy queue: drops and the switch ---------------------------------------------------


async def test_full_mirror_queue_drops_and_switch_to_proxy_invalidates_dropped_keys_first(
        prefix: bytes, n1: Client, n2: Client) -> None:
    blocker = prefix + b"blocker"
    gate = Gate(blocker)
    router = await _router("cow", copy_queue_size=2, copy_workers=1, before_fill=gate)
    try:
        r = router.route
        assert await r.set(prefix + b"k", b"v1")
        await router.to_n2.drain(5)
        assert n2.get(prefix + b"k") == (b"v1", 0)

        n1.set(blocker, b"b", noreply=False)
        await r.get(blocker)                       # the only worker now waits in the fill
        await asyncio.wait_for(gate.reached.wait(), 5)
        assert await r.set(prefix + b"x1", b"x") and await r.set(prefix + b"x2", b"x")   # queue full
        assert await r.set(prefix + b"k", b"v2")  # acknowledged from N1; its mirror is dropped
        assert prefix + b"k" in router.to_n2.dropped
        assert n2.get(prefix + b"k") == (b"v1", 0)  # N2 is stale now

        gate.release.set()
        report = await router.switch("proxy")
        assert report["invalidated_n2"] >= 1
        assert not router.to_n2.dropped
        assert n2.get(prefix + b"k") is None
        assert await router.route.get(prefix + b"k") is None  # proxy mode reads N2: a miss, not v1
    finally:
        await router.close()


async def test_switch_drops_and_invalidates_what_the_drain_timeout_left(prefix: bytes, n1: Client,
                                                                       n2: Client) -> None:
    blocker = prefix + b"blocker"
    gate = Gate(blocker)
    router = await _router("cow", copy_workers=1, drain_timeout=0.1, before_fill=gate)
    try:
        r = router.route
        assert await r.set(prefix + b"k", b"v1")
        await router.to_n2.drain(5)
        n1.set(blocker, b"b", noreply=False)
        await r.get(blocker)
        await asyncio.wait_for(gate.reached.wait(), 5)
        assert await r.set(prefix + b"k", b"v2")   # queued behind the stuck fill
        asyncio.get_running_loop().call_later(0.3, gate.release.set)
        report = await router.switch("proxy")
        assert report["dropped_at_drain_n2"] == 1 and report["invalidated_n2"] >= 1
        assert n2.get(prefix + b"k") is None
    finally:
        await router.close()


async def test_proxy_mode_reads_n2_and_mirrors_writes_to_n1(prefix: bytes, n1: Client, n2: Client) -> None:
    router = await _router("proxy")
    try:
        n1.set(prefix + b"only-n1", b"x", noreply=False)
        assert await router.route.get(prefix + b"only-n1") is None           # reads N2, no COR
        assert await router.route.set(prefix + b"k", b"from-proxy", 5, 300)
        assert await router.route.set(prefix + b"n", b"1") and await router.route.incr(prefix + b"n", 41) == 42
        n1.set(prefix + b"gone", b"old", noreply=False)
        await router.route.delete(prefix + b"gone")
        await router.to_n1.drain(5)
        assert n2.get(prefix + b"k") == n1.get(prefix + b"k") == (b"from-proxy", 5)
        assert n1.get(prefix + b"n") == (b"42", 0)
        assert n1.get(prefix + b"gone") is None
        assert n2.get(prefix + b"only-n1") is None
    finally:
        await router.close()


async def test_rollback_from_proxy_to_cow_serves_n1_with_proxy_writes(prefix: bytes, n1: Client) -> None:
    router = await _router("proxy")
    try:
        n1.set(prefix + b"k", b"before", noreply=False)
        assert await router.route.set(prefix + b"k", b"written-in-proxy")
        await router.switch("cow")
        assert (await router.route.get(prefix + b"k")).value == b"written-in-proxy"
    finally:
        await router.close()


async def test_a_route_held_across_a_switch_serves_in_the_new_mode(prefix: bytes, n1: Client, n2: Client) -> None:
    router = await _router("cow")
    try:
        held = router.route
        await router.switch("proxy")
        assert await held.set(prefix + b"k", b"v")
        assert n2.get(prefix + b"k") == (b"v", 0)
        await router.to_n1.drain(5)
        assert n1.get(prefix + b"k") == (b"v", 0)
    finally:
        await router.close()


async def test_requests_during_a_switch_wait_and_are_served_by_the_new_mode(prefix: bytes, n1: Client,
                                                                            n2: Client) -> None:
    blocker = prefix + b"blocker"
    gate = Gate(blocker)
    router = await _router("cow", copy_workers=1, before_fill=gate)
    try:
        n1.set(blocker, b"b", noreply=False)
        await router.route.get(blocker)
        await asyncio.wait_for(gate.reached.wait(), 5)
        switching = asyncio.create_task(router.switch("proxy"))
        await asyncio.sleep(0.05)
        write = asyncio.create_task(router.route.set(prefix + b"k", b"during"))
        await asyncio.sleep(0.05)
        assert not write.done()                      # held at the gate while the queue drains
        gate.release.set()
        await switching
        assert await write
        assert n2.get(prefix + b"k") == (b"during", 0)  # written in proxy mode: N2 first
    finally:
        await router.close()


# --- fencing and input limits -------------------------------------------------------------


async def test_fenced_router_refuses_reads_and_writes_and_lets_deletes_through(cow: CacheRouter, prefix: bytes,
                                                                              n1: Client) -> None:
    n1.set(prefix + b"k", b"v", noreply=False)
    n1.set(prefix + b"gone", b"v", noreply=False)
    cow.fence = lambda write: "proxy p1 is fenced: test"
    r = cow.route
    for call in (r.set(prefix + b"k", b"x"), r.add(prefix + b"n", b"x"), r.append(prefix + b"k", b"x"),
                 r.incr(prefix + b"k", 1), r.touch(prefix + b"k", 5), r.cas(prefix + b"k", b"x", 1),
                 r.gat(prefix + b"k", 5), r.get(prefix + b"k")):
        with pytest.raises(CacheFencedError, match="fenced: test"):
            await call
    assert await r.delete(prefix + b"gone") is True
    assert n1.get(prefix + b"k") == (b"v", 0)
    assert n1.get(prefix + b"gone") is None
    cow.fence = lambda write: None
    assert await r.set(prefix + b"k", b"x")


async def test_bad_keys_and_values_raise_value_errors_naming_the_limit(cow: CacheRouter, prefix: bytes) -> None:
    r = cow.route
    with pytest.raises(InvalidKeyError, match="250-byte"):
        await r.set(b"k" * 251, b"v")
    with pytest.raises(ValueError, match="space or control"):
        await r.get(prefix + b"a key")
    with pytest.raises(ValueError, match="control"):
        await r.get(prefix + b"a\r\nflush_all")
    with pytest.raises(InvalidKeyError, match="bytes"):
        await r.get("text-key")  # type: ignore[arg-type]
    with pytest.raises(ValueTooLargeError, match=str(MAX_ITEM_BYTES)):
        await r.set(prefix + b"big", b"x" * (MAX_ITEM_BYTES + 1))
    with pytest.raises(ValueError, match="flags"):
        await r.set(prefix + b"k", b"v", flags=2**32)
    assert await r.set(prefix + b"max", b"x" * MAX_ITEM_BYTES) and await r.set(b"k" * 250, b"v")
    assert not cow.to_n2.dropped


# --- the client ---------------------------------------------------------------------------


async def _relay(upstream: tuple[str, int], *, dribble: bool = False, hold: bool = False):
    """A TCP relay in front of a real memcached: ``dribble`` sends replies one byte at a
    time; ``hold`` never forwards replies at all."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(*upstream)

        async def pump_up() -> None:
            while data := await reader.read(65536):
                up_w.write(data)

        async def pump_down() -> None:
            while data := await up_r.read(65536):
                if hold:
                    continue
                if not dribble:
                    writer.write(data)
                    continue
                for i in range(len(data)):
                    writer.write(data[i:i + 1])
                    await writer.drain()
                    await asyncio.sleep(0)

        try:
            await asyncio.gather(pump_up(), pump_down())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_w.close()

    return await asyncio.start_server(handle, HOST, 0)


async def test_client_reassembles_replies_split_into_single_bytes(prefix: bytes) -> None:
    require("memcached-n1")
    relay = await _relay(N1, dribble=True)
    client = MemcacheClient(HOST, relay.sockets[0].getsockname()[1], side="n1", timeout=5)
    try:
        value = bytes(range(256)) * 20 + b"\r\nEND\r\n"  # a value that looks like protocol
        reply = await client.store(prefix + b"k", value, flags=9, exptime=100)
        assert reply.outcome is Outcome.STORED and reply.cas > 0
        item = await client.get(prefix + b"k")
        assert (item.value, item.flags, item.cas) == (value, 9, reply.cas)
        assert (await client.store(prefix + b"n", b"41")).outcome is Outcome.STORED
        assert await client.arith(prefix + b"n", 1) == 42
        assert await client.delete(prefix + b"n") is Outcome.DELETED
        assert await client.delete(prefix + b"k") is Outcome.DELETED
        assert await client.get(prefix + b"k") is None
    finally:
        await client.close()
        relay.close()


async def test_client_timeout_names_the_server_and_the_connection_is_not_reused(prefix: bytes) -> None:
    require("memcached-n1")
    relay = await _relay(N1, hold=True)
    port = relay.sockets[0].getsockname()[1]
    client = MemcacheClient(HOST, port, side="n1", timeout=0.2)
    try:
        with pytest.raises(MemcacheTimeout, match=f"n1 {HOST}:{port}.*no reply within 0.2s"):
            await client.get(prefix + b"k")
        assert client._idle == []
    finally:
        await client.close()
        relay.close()


async def test_client_unreachable_server_error_names_it() -> None:
    client = MemcacheClient(HOST, 1, side="n2")
    with pytest.raises(MemcacheUnavailable, match=f"n2 {HOST}:1: cannot connect"):
        await client.store(b"k", b"v", mode=StoreMode.SET)
