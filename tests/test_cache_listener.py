"""The memcached-protocol listener: an unchanged pymemcache client, meta commands, bad input
and slow clients, against a router in ``cow`` mode over the real N1 and N2 memcacheds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from nxnw.services.endpoints import HOST, MEMCACHED
from proxy.cache import CacheListener, CacheRouter
from tests.conftest import require

N1 = (HOST, MEMCACHED["n1"])
N2 = (HOST, MEMCACHED["n2"])


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}-"


@pytest.fixture
async def router() -> AsyncIterator[CacheRouter]:
    require("memcached-n1", "memcached-n2")
    router = CacheRouter(N1, N2, mode="cow")
    await router.start()
    yield router
    await router.close()


@pytest.fixture
async def listener(router: CacheRouter) -> AsyncIterator[CacheListener]:
    listener = CacheListener(router, HOST, 0, command_timeout=0.5)
    await listener.start()
    yield listener
    await listener.close()


class Raw:
    """A bare TCP connection speaking bytes, for what pymemcache cannot send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, listener: CacheListener) -> Raw:
        return cls(*await asyncio.open_connection(HOST, listener.port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 30)

    async def ask(self, data: bytes, lines: int = 1) -> bytes:
        await self.send(data)
        return b"".join([await self.line() for _ in range(lines)])

    def close(self) -> None:
        self.writer.close()


async def _in_thread(fn, *args):
    """pymemcache is blocking; the listener runs on this event loop."""
    return await asyncio.to_thread(fn, *args)


async def test_an_unchanged_pymemcache_client_works_through_the_listener(listener: CacheListener, router: CacheRouter,
                                                                         prefix: str) -> None:
    def app() -> dict:
        c = Client((HOST, listener.port), timeout=2)
        seen = {}
        try:
            k = prefix + "k"
            seen["set"] = c.set(k, b"hello", expire=300, noreply=False)
            seen["get"] = c.get(k)
            value, cas = c.gets(k)
            seen["cas"] = c.cas(k, b"world", cas, noreply=False)
            seen["cas-stale"] = c.cas(k, b"nope", cas, noreply=False)
            seen["after-cas"] = c.get(k)
            seen["add"] = c.add(prefix + "a", b"1", noreply=False)
            seen["add-again"] = c.add(prefix + "a", b"2", noreply=False)
            seen["replace"] = c.replace(prefix + "a", b"10", noreply=False)
            seen["append"] = c.append(prefix + "a", b"0", noreply=False)
            seen["prepend"] = c.prepend(prefix + "a", b"1", noreply=False)
            seen["incr"] = c.incr(prefix + "a", 5)
            seen["decr"] = c.decr(prefix + "a", 6)
            seen["incr-missing"] = c.incr(prefix + "missing", 1)
            seen["touch"] = c.touch(k, 1000, noreply=False)
            seen["many"] = c.get_many([k, prefix + "a", prefix + "missing"])
            c.set(prefix + "quiet", b"q", noreply=True)
            seen["quiet"] = c.get(prefix + "quiet")
            seen["delete"] = c.delete(k, noreply=False)
            seen["deleted"] = c.get(k)
            seen["version"] = c.version()
        finally:
            c.close()
        return seen

    seen = await _in_thread(app)
    assert seen == {
        "set": True, "get": b"hello", "cas": True, "cas-stale": False, "after-cas": b"world",
        "add": True, "add-again": False, "replace": True, "append": True, "prepend": True,
        "incr": 1105, "decr": 1099, "incr-missing": None, "touch": True,
        "many": {prefix + "k": b"world", prefix + "a": b"1099"}, "quiet": b"q",
        "delete": True, "deleted": None, "version": b"1.6.18-nxnw-proxy",
    }
    await router.to_n2.drain(5)
    n2 = Client(N2)
    assert n2.get(prefix + "a") == b"1099" and n2.get(prefix + "quiet") == b"q" and n2.get(prefix + "k") is None
    n2.close()


async def test_meta_commands_through_the_listener(listener: CacheListener, router: CacheRouter, prefix: str) -> None:
    raw = await Raw.open(listener)
    k = prefix.encode() + b"m"
    try:
        assert (await raw.ask(b"ms %b 5 F7 T300 c k O42\r\nhello\r\n" % k)).startswith(b"HD c")
        hit = await raw.ask(b"mg %b v f t c k s O9\r\n" % k, 2)
        head, value = hit.split(b"\r\n")[:2]
        tokens = head.split()
        assert tokens[:2] == [b"VA", b"5"] and b"f7" in tokens and b"s5" in tokens and b"O9" in tokens
        assert b"k" + k in tokens and value == b"hello"
        ttl = int(next(t for t in tokens if t.startswith(b"t"))[1:])
        assert 298 <= ttl <= 300
        cas = int(next(t for t in tokens if t.startswith(b"c"))[1:])
        assert await raw.ask(b"ms %b 3 C%d\r\nnew\r\n" % (k, cas + 1000)) == b"EX\r\n"
        assert await raw.ask(b"ms %b 3 C%d\r\nnew\r\n" % (k, cas)) == b"HD\r\n"
        assert await raw.ask(b"ms %b 1 MA\r\n!\r\n" % k) == b"HD\r\n"
        assert await raw.ask(b"mg %b v\r\n" % k, 2) == b"VA 4\r\nnew!\r\n"
        assert await raw.ask(b"mg %b T100 t\r\n" % k) == b"HD t100\r\n"
        assert await raw.ask(b"ms %bn 1 ME\r\n5\r\n" % k) == b"HD\r\n"
        assert await raw.ask(b"ma %bn D10 v\r\n" % k, 2) == b"VA 2\r\n15\r\n"
        assert await raw.ask(b"ma %bn MD D20\r\n" % k) == b"HD\r\n"
        assert await raw.ask(b"mg %bn v\r\n" % k, 2) == b"VA 2\r\n0 \r\n"  # memcached keeps the length
        assert await raw.ask(b"md %b q\r\nmg %b v q\r\nmd %b\r\nmn\r\n" % (k, k, k), 2) == b"NF\r\nMN\r\n"
        assert await raw.ask(b"mg %b v\r\n" % k) == b"EN\r\n"
        assert await raw.ask(b"ma %b\r\n" % k) == b"NF\r\n"
        assert await raw.ask(b"set %b 3 0 2\r\nhi\r\ngat 700 %b %bn\r\n" % (k, k, k), 6) == (
            b"STORED\r\nVALUE %b 3 2\r\nhi\r\nVALUE %bn 0 2\r\n0 \r\nEND\r\n" % (k, k))
        assert (await raw.ask(b"gats 800 %b\r\n" % k, 3)).startswith(b"VALUE %b 3 2 " % k)
        assert await raw.ask(b"mg %b t\r\n" % k) == b"HD t800\r\n"
        assert await raw.ask(b"mg %b v b\r\n" % k) == (
            b"CLIENT_ERROR flag b of mg is not supported through the nxnw proxy\r\n")
        assert await raw.ask(b"ms %b 2 I\r\nxx\r\nmn\r\n" % k, 2) == (
            b"CLIENT_ERROR flag I of ms is not supported through the nxnw proxy\r\nMN\r\n")
        assert await raw.ask(b"mg %b v x\r\n" % k) == b"CLIENT_ERROR invalid flag\r\n"  # memcached's words
    finally:
        raw.close()
    await router.to_n2.drain(5)
    n2 = Client(N2)
    assert n2.get(prefix + "mn") == b"0 "
    n2.close()


async def test_a_data_block_of_the_wrong_length_is_refused_and_the_connection_keeps_serving(
        listener: CacheListener, prefix: str) -> None:
    raw = await Raw.open(listener)
    k = prefix.encode() + b"k"
    try:
        # memcached's rule: the declared 5 bytes and two more are consumed ("abcdefg"), the
        # rest of the line ("\r\n") is read as an empty command
        assert await raw.ask(b"set %b 0 0 5\r\nabcdefg\r\n" % k, 2) == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
        assert await raw.ask(b"get %b\r\n" % k) == b"END\r\n"          # nothing stored
        assert await raw.ask(b"set %b 0 0 5\r\nabcde\r\n" % k) == b"STORED\r\n"
        assert await raw.ask(b"get %b\r\n" % k, 3) == b"VALUE %b 0 5\r\nabcde\r\nEND\r\n" % k
    finally:
        raw.close()


@pytest.mark.parametrize("request_bytes, reply", [
    (b"set {k} 0 0 -1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set {k} 0 0 2000000\r\n" + b"x" * 2000000 + b"\r\n", b"SERVER_ERROR object too large for cache\r\n"),
    (b"set {k} 0 0 abc\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set {k} x 0 1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"set " + b"k" * 251 + b" 0 0 1\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"get {k}\x01x\r\n", b"CLIENT_ERROR bad command line format\r\n"),
    (b"incr {k} -5\r\n", b"CLIENT_ERROR invalid numeric delta argument\r\n"),
    (b"bogus {k}\r\n", b"ERROR\r\n"),
    (b"\r\n", b"ERROR\r\n"),
    (b"flush_all\r\n", b"SERVER_ERROR flush_all is disabled on the nxnw cache proxy"),
    (b"x" * 3000, b"CLIENT_ERROR line too long\r\n"),
    (b"mg {k} v v\r\n", b"CLIENT_ERROR duplicate flag\r\n"),
])
async def test_bad_input_gets_an_error_and_the_connection_keeps_serving(
        listener: CacheListener, prefix: str, request_bytes: bytes, reply: bytes) -> None:
    raw = await Raw.open(listener)
    k = prefix.encode() + b"k"
    try:
        answer = await raw.ask(request_bytes.replace(b"{k}", k))
        assert answer.startswith(reply)
        if request_bytes.startswith(b"x" * 10):
            await raw.send(b"still the same line\r\n")   # the rest of the overlong line is discarded
        assert await raw.ask(b"set %b 0 0 2\r\nok\r\n" % k) == b"STORED\r\n"
        assert await raw.ask(b"get %b\r\n" % k, 3) == b"VALUE %b 0 2\r\nok\r\nEND\r\n" % k
    finally:
        raw.close()


async def test_a_slow_client_does_not_block_others_and_is_dropped_after_the_command_timeout(
        listener: CacheListener, prefix: str) -> None:
    slow = await Raw.open(listener)
    await slow.send(b"set %b 0 0 10\r\nabc" % prefix.encode())      # and then nothing
    fast = await Raw.open(listener)
    try:
        for i in range(20):                                             # answered while the slow one waits
            assert await fast.ask(b"set %bf%d 0 0 1\r\nx\r\n" % (prefix.encode(), i)) == b"STORED\r\n"
        assert await asyncio.wait_for(slow.reader.read(), 30) == b""    # closed after its 0.5 s
        p = prefix.encode()
        assert await fast.ask(b"get %bf0\r\n" % p, 3) == b"VALUE %bf0 0 1\r\nx\r\nEND\r\n" % p
    finally:
        slow.close()
        fast.close()


async def test_an_idle_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not(
        router: CacheRouter, prefix: str) -> None:
    listener = CacheListener(router, HOST, 0, idle_timeout=0.5)
    await listener.start()
    idle = await Raw.open(listener)
    busy = await Raw.open(listener)
    try:
        key = prefix.encode() + b"busy"
        deadline = time.monotonic() + 30
        idle_closed = asyncio.create_task(idle.reader.read())
        while not idle_closed.done():                                   # the idle one goes …
            assert await busy.ask(b"get %b\r\n" % key) == b"END\r\n"  # … while this one keeps asking
            assert time.monotonic() < deadline, "the idle connection was never closed"
            await asyncio.sleep(0.05)
        assert idle_closed.result() == b""
        assert await busy.ask(b"get %b\r\n" % key) == b"END\r\n"
    finally:
        idle.close()
        busy.close()
        await listener.close()


async def test_fenced_listener_refuses_reads_and_writes_but_lets_every_delete_through_to_both_sides(
        listener: CacheListener, router: CacheRouter, prefix: str) -> None:
    """Item 15: a delete can never make a cache stale, so a fenced proxy never refuses one,
    nor drops a noreply one: text ``delete`` (with and without noreply) and meta ``md``
    (with and without q) all reach N1 and, in cow, N2."""
    keys = [prefix + k for k in ("text", "text-noreply", "meta", "meta-q")]

    def app() -> tuple:
        c = Client((HOST, listener.port), timeout=2)
        n1, n2 = Client(N1, timeout=2), Client(N2, timeout=2)
        try:
            for key in keys:
                c.set(key, b"v", noreply=False)
                n2.set(key, b"v", noreply=False)
            router.fence = lambda write: "test fence"
            with pytest.raises(MemcacheServerError, match="test fence"):
                c.set(keys[0], b"w", noreply=False)
            with pytest.raises(MemcacheServerError, match="test fence"):
                c.get(keys[0])
            deleted = c.delete(keys[0], noreply=False)
            c.delete(keys[1], noreply=True)
            meta = c.raw_command(b"md " + keys[2].encode(), b"\r\n")
            quiet = c.raw_command(b"md " + keys[3].encode() + b" q\r\nmn", b"\r\n")
            assert (meta, quiet) == (b"HD", b"MN")
            return deleted, [n1.get(k) for k in keys], keys
        finally:
            router.fence = lambda write: None
            c.close()
            n1.close()
            n2.close()

    deleted, on_n1, _ = await _in_thread(app)
    assert deleted is True
    assert on_n1 == [None] * 4
    n2 = Client(N2, timeout=2)
    try:
        for _ in range(200):  # the mirrored deletes reach N2 asynchronously
            if all(n2.get(k) is None for k in keys):
                break
            await asyncio.sleep(0.05)
        assert [n2.get(k) for k in keys] == [None] * 4
    finally:
        n2.close()


async def test_flush_all_is_refused_by_default_with_the_reason(listener: CacheListener) -> None:
    def app() -> None:
        c = Client((HOST, listener.port), timeout=2)
        try:
            with pytest.raises(MemcacheServerError, match="shared by every app.*--enable-flush-cmd"):
                c.flush_all(noreply=False)
        finally:
            c.close()

    await _in_thread(app)


async def test_a_mode_switch_takes_effect_on_open_connections(listener: CacheListener, router: CacheRouter,
                                                              prefix: str) -> None:
    raw = await Raw.open(listener)
    k = prefix.encode() + b"k"
    n2 = Client(N2)
    try:
        n2.set(k, b"n2-only", noreply=False)
        assert await raw.ask(b"get %b\r\n" % k) == b"END\r\n"                 # cow reads N1
        await router.switch("proxy")
        assert await raw.ask(b"get %b\r\n" % k, 3) == b"VALUE %b 0 7\r\nn2-only\r\nEND\r\n" % k
    finally:
        raw.close()
        n2.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(max_size=600) | st.lists(
    st.sampled_from([b"get", b"set", b"cas", b"mg", b"ms", b"md", b"ma", b"incr", b"touch", b"gat", b" ", b"\r\n",
                     b"\n", b"-1", b"0", b"99999999999999999999", b"noreply", b"k" * 251, b"\x00", b"T", b"v"]),
    max_size=30).map(b"".join))
async def test_garbage_never_stops_the_listener(listener: CacheListener, garbage: bytes) -> None:
    raw = await Raw.open(listener)
    await raw.send(garbage)
    raw.writer.write_eof()
    replies = await asyncio.wait_for(raw.reader.read(), 3)   # answered, then closed at EOF
    raw.close()
    assert b"SERVER_ERROR" not in replies                      # no handler blew up
    fresh = await Raw.open(listener)
    try:
        assert await fresh.ask(b"version\r\n") == b"VERSION 1.6.18-nxnw-proxy\r\n"
    finally:
        fresh.close()


async def test_a_client_that_does_not_read_its_replies_is_dropped_and_others_are_served(
        listener: CacheListener, prefix: str) -> None:
    key = prefix.encode() + b"big"
    Client(N1).set(key, b"v" * 500_000, noreply=False)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((HOST, listener.port))
    stuck.setblocking(False)
    other = await Raw.open(listener)
    try:
        with contextlib.suppress(BlockingIOError):
            stuck.send(b"get %b\r\n" % key * 200)  # 100 MB of replies it will never read
        deadline = time.monotonic() + 30
        while listener.connections > 1:
            assert time.monotonic() < deadline, "the client that reads nothing was never dropped"
            await asyncio.sleep(0.05)
        assert await other.ask(b"get %bnone\r\n" % prefix.encode()) == b"END\r\n"
    finally:
        stuck.close()
        other.close()
