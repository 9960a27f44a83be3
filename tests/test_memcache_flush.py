"""``flush_all`` through the proxy: refused unless enabled; when enabled it flushes the side
the mode reads first, then — once every copy queued before it has run (the barrier) — the
other side, so no copy of a pre-flush value lands on N2 after N2's flush. Against private
memcacheds, with a recording relay in front of N2."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack

import pytest
from pymemcache.client.base import Client

from nxnw.services.endpoints import HOST
from proxy.cache import CacheListener, CacheRouter, SwitchError
from tests.memcached_harness import TcpRelay, memcached_process
from tests.test_memcache_fidelity import exchange


class RecordingRelay(TcpRelay):
    """A relay that records, in arrival order, the command lines sent up through any of its
    connections (data blocks are skipped by their declared length), and holds each chunk
    carrying an ``ms`` for ``slow_stores`` s before passing it on — a slow N2, so copies are
    still queued when the flush comes."""

    def __init__(self, upstream: tuple[str, int], slow_stores: float = 0.05) -> None:
        super().__init__(upstream)
        self.slow_stores = slow_stores
        self.lines: list[bytes] = []

    async def send_up(self, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        buf = b""
        skip = 0
        while data := await reader.read(65536):
            buf += data
            while True:
                if skip:
                    if len(buf) < skip:
                        break
                    buf, skip = buf[skip:], 0
                nl = buf.find(b"\r\n")
                if nl < 0:
                    break
                line, buf = buf[:nl], buf[nl + 2:]
                self.lines.append(line)
                if line.startswith(b"ms "):
                    skip = int(line.split()[2]) + 2
            if b"ms " in data:
                await asyncio.sleep(self.slow_stores)
            up_writer.write(data)
            await up_writer.drain()


@pytest.fixture
async def sides() -> AsyncIterator[tuple[tuple[str, int], tuple[str, int], RecordingRelay]]:
    with ExitStack() as stack:
        n1 = stack.enter_context(memcached_process())
        n2 = stack.enter_context(memcached_process())
        relay = RecordingRelay(n2)
        yield n1, n2, relay
        await relay.close()


async def test_flush_all_in_cow_lets_no_copy_queued_before_it_land_on_n2_after_it(sides) -> None:
    n1, n2, relay = sides
    router = CacheRouter(n1, await relay.start(), mode="cow", copy_workers=1)
    await router.start()
    run = uuid.uuid4().hex[:6].encode()
    keys = [b"flush-%s-%d" % (run, i) for i in range(600)]
    try:
        # many writes at once: their copies queue up behind one copy worker
        assert all(await asyncio.gather(*(router.route.set(k, b"before-" + k) for k in keys)))
        assert router.to_n2.pending > 0, "no copy was still queued: the test would prove nothing"
        await router.flush_all()
        await router.to_n2.drain(30)  # whatever was still queued has run now
        flushed_at = relay.lines.index(b"flush_all")
        late = [line for line in relay.lines[flushed_at + 1:] if line.startswith(b"ms ")]
        assert not late, f"{len(late)} copies reached N2 after its flush, e.g. {late[0]!r}"
        assert relay.lines.count(b"flush_all") == 1
        for side in (n1, n2):
            client = Client(side, timeout=5)
            assert client.get_many(keys[:100]) == {}, f"a pre-flush value survives on {side}"
            client.close()
        assert await router.route.set(keys[0], b"after")  # the proxy serves on after the flush
        assert (await router.route.get(keys[0])).value == b"after"
    finally:
        await router.close()


async def test_flush_all_is_refused_unless_enabled_and_then_answers_like_memcached(sides) -> None:
    n1, n2, _ = sides
    router = CacheRouter(n1, n2, mode="proxy")
    await router.start()
    refusing = CacheListener(router, HOST, 0)
    serving = CacheListener(router, HOST, 0, enable_flush=True)
    await refusing.start()
    await serving.start()
    try:
        assert await exchange(refusing.port, b"set a 0 0 1\r\nx\r\nflush_all\r\nflush_all noreply\r\nget a\r\n") == (
            b"STORED\r\n" + 2 * (b"SERVER_ERROR flush_all is disabled on the nxnw cache proxy: the memcached behind "
                                 b"it is shared by every app of the deployment (start it with --enable-flush-cmd to "
                                 b"serve it)\r\n") + b"VALUE a 0 1\r\nx\r\nEND\r\n")
        assert await exchange(serving.port, b"flush_all 0\r\nget a\r\nset a 0 0 1\r\ny\r\nflush_all noreply\r\n"
                                            b"get a\r\n") == b"OK\r\nEND\r\nSTORED\r\nEND\r\n"
        assert await exchange(serving.port, b"set b 0 0 1\r\nz\r\nflush_all 2\r\nget b\r\n") == (
            b"STORED\r\nOK\r\nVALUE b 0 1\r\nz\r\nEND\r\n")  # a delayed flush: still there now …
        for _ in range(100):  # … and gone once the delay has passed, on both sides
            if await exchange(serving.port, b"get b\r\n") == b"END\r\n":
                break
            await asyncio.sleep(0.1)
        assert await exchange(serving.port, b"get b\r\n") == b"END\r\n"
        assert Client(n1, timeout=5).get(b"b") is None
    finally:
        await refusing.close()
        await serving.close()
        await router.close()


async def test_a_flush_through_the_proxy_clears_an_overflowed_copy_queue_so_the_switch_can_go_on(sides) -> None:
    n1, n2, relay = sides
    router = CacheRouter(n1, await relay.start(), mode="cow", copy_queue_size=1, copy_workers=1)
    await router.start()
    router.to_n2.max_dropped = 3
    run = uuid.uuid4().hex[:6].encode()
    try:
        # many writes at once behind a queue of one: most copies are dropped, past max_dropped
        await asyncio.gather(*(router.route.set(b"over-%s-%d" % (run, i), b"v") for i in range(200)))
        assert router.to_n2.overflowed, "no copy queue overflowed: the test would prove nothing"
        with pytest.raises(SwitchError, match="flush_all"):
            await router.switch("proxy")  # keys were lost: only a flush of N2 is safe now
        await router.flush_all()
        assert not router.to_n2.overflowed and not router.to_n2.dropped
        assert await router.switch("proxy") == {"dropped_at_drain_n2": 0, "dropped_at_drain_n1": 0,
                                                "invalidated_n2": 0, "invalidated_n1": 0}
    finally:
        await router.close()
