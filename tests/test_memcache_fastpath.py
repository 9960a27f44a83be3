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
from proxy.cache.client import REPLY_VALUES, RelayConnection
from tests.conftest import require
from tests.memcached_harness import GatedRelay
from tests.test_cache_routes import Gate
from tests.test_memcache_fidelity import exchange, normalised

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
        assert listener.stats.forwarded == 6  # every one relayed; the sets as ``ms … c`` (their copy needs the CAS)
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
        assert listener.stats.forwarded == 2  # the get, and the set relayed as ``ms … c`` (its copy needs the CAS)
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


async def test_a_relayed_set_in_cow_copies_its_own_value_flags_and_ttl_to_n2(key: bytes) -> None:
    """A text set in ``cow`` is relayed as ``ms … c`` (the data block as it came); its copy
    carries the request's value, flags and exptime and the CAS N1 answered — nothing else
    touches the key, so only that copy can put it on N2."""
    router, listener = await _listening("cow")
    try:
        assert await exchange(listener.port, b"set %b 9 300 5\r\nhello\r\n" % key) == b"STORED\r\n"
        assert listener.stats.forwarded == 1
        await router.to_n2.drain(10)
        assert Client(N2).get(key) == b"hello"
        value, ttl = await _n2_ttl(key)
        assert 290 <= ttl <= 300, ttl
        assert await exchange(N2[1], b"mg %b f\r\n" % key) == b"HD f9\r\n"
    finally:
        await listener.close()
        await router.close()


async def test_a_pipelined_burst_mixing_relayed_and_parsed_commands_is_answered_in_order(key: bytes) -> None:
    """Relayed commands (answered by callbacks) and parsed ones (meta, multi-key, noreply:
    served by a task) in one write: each is served after the ones before it, replies in order."""
    router, listener = await _listening("cow")
    try:
        def burst(k: bytes) -> bytes:
            return (b"set %b1 0 0 1\r\na\r\n" b"mg %b1 v\r\n" b"append %b1 0 0 1\r\nb\r\n" b"get %b1 %b2\r\n"
                    b"set %b2 0 0 1\r\nc\r\n" b"delete %b1 noreply\r\n" b"get %b1\r\n" b"gets %b2\r\n"
                    b"incr %b1 1\r\n" b"ms %b3 1\r\nd\r\n" b"get %b3\r\n" % ((k,) * 12))

        def answers(k: bytes) -> bytes:
            return (b"STORED\r\n" b"VA 1\r\na\r\n" b"STORED\r\n" b"VALUE %b1 0 2\r\nab\r\nEND\r\n" b"STORED\r\n"
                    b"END\r\n" b"VALUE %b2 0 1 <cas>\r\nc\r\nEND\r\n" b"NOT_FOUND\r\n" b"HD\r\n"
                    b"VALUE %b3 0 1\r\nd\r\nEND\r\n" % (k, k, k))

        rounds = [key + b"-%d-" % i for i in range(3)]
        got = normalised(await exchange(listener.port, b"".join(burst(k) for k in rounds)))
        assert got == b"".join(answers(k) for k in rounds)
        key = rounds[-1]
        await router.to_n2.drain(10)
        n2 = Client(N2)
        assert n2.get(key + b"1") is None and n2.get(key + b"2") == b"c"
    finally:
        await listener.close()
        await router.close()


async def test_a_relayed_write_out_when_the_fence_closes_is_answered_outcome_unknown(key: bytes) -> None:
    """The fence is asked again when a relayed reply comes back, as for the parsed path: a
    write that ran while the instance lost its session may belong to a mode the fleet has
    left, so the client is told its outcome is unknown, and the request leaves the count of
    requests in flight (a switch waits for that count)."""
    require("memcached-n1", "memcached-n2")
    held = GatedRelay(N1)
    fenced: list[str] = []
    router = CacheRouter(await held.start(), N2, mode="passthrough", fence=lambda write: fenced[0] if fenced else None)
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        ask = asyncio.create_task(exchange(listener.port, b"set %b 0 0 1\r\nx\r\nget %b\r\n" % (key, key)))
        await asyncio.wait_for(held.arrived.wait(), 10)
        assert router.route.inflight >= 1, "the set was not relayed by the callback path"
        fenced.append("session lost (test)")
        held.gate.set()
        got = await ask
        assert got == (b"SERVER_ERROR cache store not answered: session lost (test); it may have been applied\r\n"
                       b"SERVER_ERROR cache get not answered: session lost (test)\r\n"), got
        assert router.route.inflight == 0
        assert await exchange(listener.port, b"get %b\r\n" % key) == (
            b"SERVER_ERROR cache get refused: session lost (test); deletes are still served\r\n")
    finally:
        await listener.close()
        await router.close()
        await held.close()


async def test_a_server_that_stops_answering_fails_the_relayed_requests_with_its_name_and_is_reconnected(
        key: bytes) -> None:
    """One pipelined connection per server carries every client's relayed requests: a reply
    that does not come within the timeout fails the requests on it (naming the server) and
    drops the connection, whose place in the reply stream is lost; the next request gets a
    fresh one."""
    require("memcached-n1", "memcached-n2")
    held = GatedRelay(N1)
    upstream = await held.start()
    router = CacheRouter(upstream, N2, mode="passthrough", timeout=0.3)
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        got = await exchange(listener.port, b"get %b\r\nget %b\r\n" % (key, key))
        server = f"n1 {upstream[0]}:{upstream[1]}".encode()
        assert got == (b"SERVER_ERROR memcached %b: no reply within 0.3s\r\n" % server
                       + b"SERVER_ERROR memcached %b: connection dropped after a request got no reply within 0.3s\r\n"
                       % server), got
        held.gate.set()
        assert await exchange(listener.port, b"get %b\r\n" % key) == b"END\r\n"
    finally:
        await listener.close()
        await router.close()
        await held.close()


async def test_relayed_requests_are_counted_and_timed_in_the_cache_metrics(key: bytes) -> None:
    """The callback path counts and times each request in plain numbers; they reach
    ``nxnw_cache_ops_total`` and ``nxnw_cache_op_seconds`` within a second (and when the
    listener closes)."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ops = dict(mode="passthrough", side="n1", op="get")
    before = sample("nxnw_cache_ops_total", **ops), sample("nxnw_cache_op_seconds_count", mode="passthrough", op="get")
    router, listener = await _listening("passthrough")
    try:
        assert await exchange(listener.port, b"get %b\r\n" % key * 3) == b"END\r\n" * 3
        assert listener.stats.forwarded == 3
        deadline = time.monotonic() + 30
        while sample("nxnw_cache_ops_total", **ops) < before[0] + 3:
            assert time.monotonic() < deadline, "the relayed gets never reached the metrics"
            await asyncio.sleep(0.05)
    finally:
        await listener.close()
        await router.close()
    assert sample("nxnw_cache_ops_total", **ops) == before[0] + 3
    assert sample("nxnw_cache_op_seconds_count", mode="passthrough", op="get") == before[1] + 3


async def test_a_relayed_sets_copy_is_undone_when_n1_changed_before_it_was_verified(key: bytes) -> None:
    """A relayed set's copy runs by callbacks (store on N2, re-read N1's CAS, undo): N1
    overwritten elsewhere while the copy is on its way to N2 — a write whose own copy never
    comes through this proxy — leaves N2 without the key, never with the old value."""
    require("memcached-n1", "memcached-n2")
    held = GatedRelay(N2)
    router = CacheRouter(N1, await held.start(), mode="cow")
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        assert await exchange(listener.port, b"set %b 0 300 3\r\nold\r\n" % key) == b"STORED\r\n"
        await asyncio.wait_for(held.arrived.wait(), 10)  # the copy's store is held on its way to N2
        assert router.to_n2.pending == 1
        Client(N1).set(key, b"new", noreply=False)       # written elsewhere meanwhile
        held.gate.set()
        assert await router.to_n2.drain(10) == 0
        assert Client(N2).get(key) is None
        assert Client(N1).get(key) == b"new"
    finally:
        await listener.close()
        await router.close()
        await held.close()


async def test_a_relayed_hits_fill_is_undone_when_n1_changed_before_it_was_verified(key: bytes) -> None:
    """A relayed get in ``cow`` is sent as ``mg`` (answered as text) and its hit fills N2 by
    callbacks (``add``, re-read N1's CAS, undo): N1 overwritten elsewhere while the fill is
    on its way leaves N2 without the key — the COR race mcrouter's WarmUpRoute leaves open."""
    require("memcached-n1", "memcached-n2")
    Client(N1).set(key, b"old", expire=300, noreply=False, flags=3)
    held = GatedRelay(N2)
    router = CacheRouter(N1, await held.start(), mode="cow")
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        got = normalised(await exchange(listener.port, b"get %b\r\ngets %b\r\n" % (key, key)))
        assert got == b"VALUE %b 3 3\r\nold\r\nEND\r\nVALUE %b 3 3 <cas>\r\nold\r\nEND\r\n" % (key, key)
        await asyncio.wait_for(held.arrived.wait(), 10)  # the fill's add is held on its way to N2
        assert router.to_n2.pending == 1                  # one fill for the key, the second hit shed
        Client(N1).set(key, b"new", noreply=False)       # written elsewhere meanwhile
        held.gate.set()
        assert await router.to_n2.drain(10) == 0
        assert Client(N2).get(key) is None
    finally:
        await listener.close()
        await router.close()
        await held.close()


async def test_a_server_that_refuses_connections_is_named_then_marked_down_through_the_listener(key: bytes) -> None:
    """The callback path reports each failure to the server's pool: after ``fail_limit`` of
    them the server is marked down, and its keys are answered at once with the reason."""
    from nxnw.fleet import free_port

    require("memcached-n2")
    dead = (HOST, free_port(HOST))
    router = CacheRouter(dead, N2, mode="passthrough", fail_limit=2, retry_after=60)
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        server = b"n1 %s:%d" % (dead[0].encode(), dead[1])
        for _ in range(2):
            got = await exchange(listener.port, b"get %b\r\n" % key)
            assert got.startswith(b"SERVER_ERROR memcached %b: cannot connect" % server), got
        got = await exchange(listener.port, b"get %b\r\n" % key)
        assert got.startswith(b"SERVER_ERROR memcached %b: marked down after 2 consecutive failures" % server), got
        assert router.stats()["proxy_n1_servers_down"] == 1
    finally:
        await listener.close()
        await router.close()


async def test_in_cow_only_a_get_that_may_need_a_fill_is_sent_as_mg(key: bytes) -> None:
    """A get whose hit could need a fill of N2 is sent to N1 as ``mg`` (the fill needs the
    item's flags, TTL and CAS); a get of a key N2 is known to hold — its copy just landed —
    goes as the app wrote it."""
    from tests.test_memcache_flush import RecordingRelay

    require("memcached-n1", "memcached-n2")
    Client(N1).set(key + b"-cold", b"c", noreply=False)
    relay = RecordingRelay(N1)
    router = CacheRouter(await relay.start(), N2, mode="cow")
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        assert await exchange(listener.port, b"set %b 0 0 1\r\nw\r\n" % key) == b"STORED\r\n"
        await router.to_n2.drain(10)
        got = await exchange(listener.port, b"get %b\r\nget %b-cold\r\n" % (key, key))
        assert got == b"VALUE %b 0 1\r\nw\r\nEND\r\nVALUE %b-cold 0 1\r\nc\r\nEND\r\n" % (key, key)
        await router.to_n2.drain(10)
        sent = [line for line in relay.lines  # what the clients' gets became, the copies' re-reads left out
                if key in line and not (line.startswith(b"mg ") and line.count(b" ") == 2 and line.endswith(b" c"))]
        assert sent[-2:] == [b"get %b" % key, b"mg %b-cold v f t c" % key], sent
    finally:
        await listener.close()
        await router.close()
        await relay.close()


class _Probe:
    """A ``RelayConnection`` entry that records what it got; ``then`` runs on a failure."""

    def __init__(self, then=None) -> None:
        self.framing = REPLY_VALUES
        self.deadline = 0.0
        self.got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.then = then

    def done(self, reply: bytes, cas: int) -> None:
        self.got.set_result(reply)

    def fail(self, exc: Exception) -> None:
        self.got.set_result(b"failed: %s" % str(exc).encode())
        if self.then is not None:
            self.then()


async def test_a_request_sent_right_after_a_timed_out_connection_goes_on_a_new_one(key: bytes) -> None:
    """The connection a timeout dropped reports its loss later; by then a request may wait
    for the next connection, and that request must not be failed with the old one."""
    require("memcached-n1")
    held = GatedRelay(N1)
    upstream = await held.start()
    relay = RelayConnection(*upstream, "n1 test", timeout=0.3, connect_timeout=5,
                            on_success=lambda: None, on_failure=lambda: None)
    try:
        second = _Probe()
        first = _Probe(then=lambda: (relay.send(second, b"get %b\r\n" % key), held.gate.set()))
        relay.send(first, b"get %b\r\n" % key)
        assert (await asyncio.wait_for(first.got, 30)).startswith(b"failed: memcached n1 test: no reply within")
        assert await asyncio.wait_for(second.got, 30) == b"END\r\n"
    finally:
        relay.close()
        await held.close()


async def test_a_switch_waits_for_a_relayed_sets_copy_still_on_its_way(key: bytes) -> None:
    """A copy run by callbacks counts as pending in its queue: a switch out of ``cow``
    drains it like a queued one, so it cannot land on N2 after the switch."""
    require("memcached-n1", "memcached-n2")
    held = GatedRelay(N2)
    router = CacheRouter(N1, await held.start(), mode="cow", timeout=30, drain_timeout=30)
    await router.start()
    listener = CacheListener(router, HOST, 0)
    await listener.start()
    try:
        assert await exchange(listener.port, b"set %b 0 0 2\r\nv1\r\n" % key) == b"STORED\r\n"
        await asyncio.wait_for(held.arrived.wait(), 10)  # the copy's store is held on its way to N2
        switch = asyncio.create_task(router.switch("proxy"))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not switch.done() and router.mode == "cow", "the switch did not wait for the copy"
        held.gate.set()
        report = await asyncio.wait_for(switch, 60)
        assert router.mode == "proxy" and report["dropped_at_drain_n2"] == 0
        assert Client(N2).get(key) == b"v1"
    finally:
        await listener.close()
        await router.close()
        await held.close()


async def test_relayed_requests_are_counted_in_the_listeners_stats(key: bytes) -> None:
    router, listener = await _listening("passthrough")
    try:
        got = await exchange(listener.port, b"set %b 0 0 1\r\n5\r\nget %b\r\nget %bx\r\nincr %b 1\r\n"
                                            b"decr %bx 1\r\ntouch %b 0\r\ndelete %b\r\ndelete %b\r\n" % ((key,) * 8))
        assert got == b"STORED\r\nVALUE %b 0 1\r\n5\r\nEND\r\nEND\r\n6\r\nNOT_FOUND\r\nTOUCHED\r\nDELETED\r\nNOT_FOUND\r\n" % key
        st = listener.stats
        assert (st.forwarded, st.cmd_set, st.cmd_get, st.get_hits, st.get_misses) == (8, 1, 2, 1, 1)
        assert (st.incr_hits, st.decr_misses, st.cmd_touch, st.touch_hits, st.delete_hits, st.delete_misses) == (
            1, 1, 1, 1, 1, 1)
    finally:
        await listener.close()
        await router.close()
