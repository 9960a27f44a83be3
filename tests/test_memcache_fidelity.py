"""The listener answers like memcached 1.6: the same request bytes go to a real memcached
and to the proxy's listener (in front of another real memcached), and the same bytes must
come back — for every command the listener accepts and every error class, noreply
variants, meta commands, ``flush_all`` when enabled. Only ``stats`` values, ``version``
and CAS tokens (per server) are compared by shape.

The memcacheds are this test's own processes: ``flush_all`` must not touch the shared ones.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import ExitStack

import pytest

from nxnw.services.endpoints import HOST
from proxy.cache import CacheListener, CacheRouter
from tests.memcached_harness import memcached_process


async def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` then ``mn``; everything answered before the ``MN`` that ends it
    (with ``<no MN>`` appended if it never came: the server still waits for something)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    data = b""
    try:
        writer.write(request + b"mn\r\n")
        await writer.drain()
        async with asyncio.timeout(timeout):
            while not data.endswith(b"MN\r\n"):
                chunk = await reader.read(65536)
                if not chunk:
                    return data + b"<closed>"
                data += chunk
        return data[:-4]
    except TimeoutError:
        return data + b"<no MN>"
    finally:
        writer.close()


_CAS_TEXT = re.compile(rb"^(VALUE \S+ \d+ \d+) \d+\r\n", re.M)
_CAS_META = re.compile(rb"(?<= )c\d+(?=[ \r])")


def normalised(reply: bytes) -> bytes:
    """CAS tokens belong to one server: compare their place, not their value."""
    return _CAS_META.sub(b"c<cas>", _CAS_TEXT.sub(rb"\1 <cas>\r\n", reply))


BIG = 2 * 1024 * 1024


def cases(k: bytes) -> list[tuple[str, bytes]]:
    """(name, request bytes). Each case is complete: the connection is back at a command boundary."""
    long_key = b"x" * 251
    return [
        ("set", b"set %b1 5 0 3\r\nabc\r\n" % k),
        ("get hit", b"get %b1\r\n" % k),
        ("get miss", b"get %bmissing\r\n" % k),
        ("get multi", b"get %b1 %bmissing %b1\r\n" % (k, k, k)),
        ("gets", b"gets %b1\r\n" % k),
        ("add existing", b"add %b1 0 0 1\r\nz\r\n" % k),
        ("add new", b"add %b2 7 0 2\r\nhi\r\n" % k),
        ("replace missing", b"replace %bnone 0 0 1\r\nz\r\n" % k),
        ("replace", b"replace %b2 8 0 3\r\nbye\r\n" % k),
        ("append", b"append %b1 0 0 2\r\nde\r\nget %b1\r\n" % (k, k)),
        ("prepend", b"prepend %b1 0 0 2\r\nzz\r\nget %b1\r\n" % (k, k)),
        ("append missing", b"append %bnone 0 0 2\r\nde\r\n" % k),
        ("cas mismatch", b"cas %b1 0 0 1 99999999\r\nx\r\n" % k),
        ("cas missing", b"cas %bnone 0 0 1 1\r\nx\r\n" % k),
        ("incr", b"set %bn 0 0 2\r\n10\r\nincr %bn 5\r\ndecr %bn 100\r\nincr %bn 18446744073709551615\r\n" % (k, k, k, k)),
        ("incr wraps", b"set %bw 0 0 20\r\n18446744073709551615\r\nincr %bw 2\r\n" % (k, k)),
        ("incr missing", b"incr %bnone 1\r\n" % k),
        ("incr non-numeric", b"incr %b1 1\r\n" % k),
        ("incr bad delta", b"incr %bn abc\r\n" % k),
        ("decr negative delta", b"decr %bn -1\r\n" % k),
        ("touch", b"touch %b1 100\r\ntouch %bnone 100\r\n" % (k, k)),
        ("touch bad exptime", b"touch %b1 abc\r\n" % k),
        ("gat", b"gat 100 %b1 %bmissing\r\n" % (k, k)),
        ("gats", b"gats 100 %b1\r\n" % k),
        ("gat bad exptime", b"gat abc %b1\r\n" % k),
        ("gat no key", b"gat 100\r\n"),
        ("gat nothing", b"gat\r\n"),
        ("get nothing", b"get\r\n"),
        ("noreply storage", b"set %b3 0 0 1 noreply\r\na\r\nadd %b3 0 0 1 noreply\r\nb\r\n"
                            b"append %b3 0 0 1 noreply\r\nc\r\nget %b3\r\n" % (k, k, k, k)),
        ("noreply others", b"set %b4 0 0 1\r\n1\r\nincr %b4 5 noreply\r\ntouch %b4 10 noreply\r\n"
                           b"delete %bnone noreply\r\nget %b4\r\ndelete %b4 noreply\r\nget %b4\r\n" % (k, k, k, k, k, k, k)),
        ("delete", b"delete %b2\r\ndelete %b2\r\n" % (k, k)),
        ("delete with 0", b"delete %b2 0\r\n" % k),
        ("delete with time", b"delete %b2 5\r\n" % k),
        ("delete nothing", b"delete\r\n"),
        ("negative length", b"set %b5 0 0 -1\r\n" % k),
        ("length not a number", b"set %b5 0 0 abc\r\n" % k),
        ("flags not a number", b"set %b5 abc 0 1\r\n" % k),
        ("exptime not a number", b"set %b5 0 abc 1\r\n" % k),
        ("too few tokens", b"set %b5 0 0\r\n" % k),
        ("bad data chunk", b"set %b5 0 0 3\r\nabcd\r\n" % k),
        ("too large", b"set %b6 0 0 %d\r\n%b\r\nget %b6\r\n" % (k, BIG, b"v" * BIG, k)),
        ("too large noreply", b"set %b6 0 0 %d noreply\r\n%b\r\n" % (k, BIG, b"v" * BIG)),
        ("bad data chunk noreply", b"set %b5 0 0 3 noreply\r\nabcd\r\n" % k),
        ("ms too large", b"ms %b6 %d\r\n%b\r\nmg %b6 v\r\n" % (k, BIG, b"v" * BIG, k)),
        ("ms negative length", b"ms %b6 -1\r\n" % k),
        ("ms bad data chunk", b"ms %b6 2\r\nabc\r\n" % k),
        ("cas noreply", b"cas %b1 0 0 1 1 noreply\r\nx\r\ngets %bnone\r\n" % (k, k)),
        ("key too long", b"get %b\r\n" % long_key),
        ("key too long set", b"set %b 0 0 1\r\na\r\n" % long_key),
        ("unknown command", b"bogus\r\n"),
        ("empty line", b"\r\n"),
        ("verbosity", b"verbosity 1\r\nverbosity 1 noreply\r\nverbosity\r\n"),
        ("ms", b"ms %bm 3 T0 F5\r\nabc\r\n" % k),
        ("mg", b"mg %bm v f t s k\r\nmg %bm c v\r\nmg %bnone v\r\nmg %bnone v q\r\n" % (k, k, k, k)),
        ("mg opaque", b"mg %bm O123 v\r\n" % k),
        ("ms modes", b"ms %bm 2 MA\r\nde\r\nms %bnone 1 MR\r\nx\r\nms %bm 1 ME\r\nx\r\nmg %bm v\r\n" % (k, k, k, k)),
        ("ms quiet", b"ms %bq 1 q\r\nx\r\nmg %bq v\r\n" % (k, k)),
        ("ms invalid", b"ms %bm\r\n" % k),
        ("ms bad flag", b"ms %bm 2 Z\r\nab\r\n" % k),
        ("mg bad flag", b"mg %bm x\r\n" % k),
        ("mg nothing", b"mg\r\n"),
        ("md", b"md %bm\r\nmd %bm\r\nmd %bq q\r\nmg %bq v\r\n" % (k, k, k, k)),
        ("ma", b"ms %bc 1\r\n5\r\nma %bc\r\nma %bc v D10\r\nma %bc v MD D100\r\nma %bnone\r\n" % (k, k, k, k, k)),
        ("stats unknown", b"stats bogus\r\n"),
    ]


FLUSH_CASES = [
    ("flush_all", b"flush_all\r\n"),
    ("flush_all noreply", b"flush_all noreply\r\n"),
    ("flush_all delay", b"flush_all 0\r\n"),
    ("flush_all delay noreply", b"flush_all 0 noreply\r\n"),
    ("flush_all bad delay", b"flush_all abc\r\n"),
]


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, CacheListener]]:
    """(direct memcached's port, listener in passthrough over a second memcached)."""
    with ExitStack() as stack:
        direct = stack.enter_context(memcached_process())
        behind = stack.enter_context(memcached_process())
        other = stack.enter_context(memcached_process())
        router = CacheRouter(behind, other, mode="passthrough")
        await router.start()
        listener = CacheListener(router, HOST, 0, enable_flush=True)
        await listener.start()
        try:
            yield direct[1], listener
        finally:
            await listener.close()
            await router.close()


@pytest.mark.parametrize("mode", ["passthrough", "cow", "proxy"])
async def test_every_command_and_error_gets_memcacheds_own_reply(servers, mode: str) -> None:
    direct_port, listener = servers
    if mode != "passthrough":
        await listener.router.switch(mode)
    k = b"f-%s-" % uuid.uuid4().hex[:8].encode()
    differences = []
    for name, request in cases(k) + FLUSH_CASES:
        want = await exchange(direct_port, request)
        got = await exchange(listener.port, request)
        if normalised(got) != normalised(want):
            differences.append(f"{name}: memcached {want[:200]!r}, listener {got[:200]!r}")
    assert not differences, "\n".join(differences)


async def test_version_and_stats_have_memcacheds_shape(servers) -> None:
    direct_port, listener = servers
    version = await exchange(listener.port, b"version\r\n")
    assert re.fullmatch(rb"VERSION \S+\r\n", version), version
    stats = await exchange(listener.port, b"get nothing-here\r\nstats\r\n")
    lines = stats.split(b"\r\n")
    assert lines[0] == b"END" and lines[-2:] == [b"END", b""], stats
    stat = dict(line.split(b" ")[1:3] for line in lines[1:-2])
    assert all(line.startswith(b"STAT ") for line in lines[1:-2]), stats
    assert int(stat[b"cmd_get"]) >= 1 and int(stat[b"get_misses"]) >= 1, stat
    assert int(stat[b"curr_connections"]) >= 1 and int(stat[b"uptime"]) >= 0, stat
