"""The repair journal stays bounded: one entry per key, range marks past the bound, and
everything journalled reaches N2 once it is back (real ZooKeeper, real sqlite engines).

N2's outage is real for the proxy: the N2 engine the proxy holds is closed under it, so
every N2 call raises ``EngineUnavailable`` at once (as a lost connection does), and is
opened again when "N2 returns". A closed engine fails fast, which is what lets 20,000
writes run in a test; a locked sqlite file would make each N2 leg wait its busy timeout.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.security import OPEN_ACL_UNSAFE, make_acl
from prometheus_client import REGISTRY

from datastore import Entity, EntityRef, open_engine
from proxy.journal import ENTRY_PREFIX, MARK_BUCKETS, MARK_PREFIX, RepairJournal
from proxy.range_repair import bucket_of, repair_buckets
from proxy.server import ProxyServer
from snapshot import verify_app
from sync.aio import run_blocking
from tests.conftest import require
from sync import layout
from tests.proxy_harness import TEST_PLAN, key_path, proxy_config, running_proxy, switch, zk_namespace


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"plan": TEST_PLAN, "target": "n2"}) or 0.0


async def wait_for(predicate, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.2)


async def journal_children(zk) -> list[str]:
    return await run_blocking(zk.get_children, layout.journal(TEST_PLAN, "n2"))


async def write_load(http, app: str, keys: int, rounds: int, *, clients: int, batch: int) -> int:
    """``rounds`` writes of every one of ``keys`` keys, in batches of ``batch`` distinct keys
    from ``clients`` concurrent clients, each retried until acknowledged. Returns writes made."""
    jobs: asyncio.Queue[list[int]] = asyncio.Queue()
    order = list(range(keys))
    for r in range(rounds):
        random.Random(r).shuffle(order)
        for start in range(0, keys, batch):
            jobs.put_nowait(order[start:start + batch])
    written = 0

    async def client() -> None:
        nonlocal written
        while not jobs.empty():
            chunk = jobs.get_nowait()
            writes = [{"kind": "K", "key": base64.b64encode(b"key-%05d" % k).decode(),
                       "value": base64.b64encode(b"value-%d-%d" % (k, written)).decode()} for k in chunk]
            while True:
                response = await http.post(f"/v1/apps/{app}/batch", json={"writes": writes})
                if response.status == 200:
                    break
                # "refused": nothing reached an engine (e.g. the clock bound on a loaded
                # machine), and a client retries; anything else is a failure of the test
                assert response.status == 503 and (await response.json())["error"] == "refused", \
                    await response.text()
                await asyncio.sleep(0.1)
            written += len(chunk)

    await asyncio.gather(*(client() for _ in range(clients)))
    return written


@dataclass
class Outage:
    zk: KazooClient
    server: ProxyServer
    n1_url: str
    n2_url: str
    written: int
    #: the journal's children once every write was answered, N2 still down
    while_down: list[str]


@asynccontextmanager
async def n2_outage_under_load(tmp_path: Path, app: str, *, bound: int, keys: int, rounds: int, clients: int,
                               batch: int) -> AsyncIterator[Outage]:
    """A cow proxy (journal ``bound``) writes the load while N2 is away; N2 stays away until
    the caller brings it back (``n2_returns``)."""
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        server, http = await stack.enter_async_context(
            running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts, journal_bound=bound,
                                       max_clock_offset_ms=2_000)))
        await switch(zk, "cow", apps=[app])
        await server.n2.close()  # N2 goes away: every N2 leg fails, every write is journalled
        written = await write_load(http, app, keys, rounds, clients=clients, batch=batch)
        yield Outage(zk, server, n1_url, n2_url, written, await journal_children(zk))


async def n2_returns_and_verify_finds_it_identical(outage: Outage, app: str, keys: int) -> None:
    await outage.server.n2.open()  # N2 is back: the replayer drains the journal

    async def drained() -> bool:
        return not await journal_children(outage.zk)
    await wait_for(drained, "the journal toward N2 drained")
    n1, n2 = open_engine(outage.n1_url), open_engine(outage.n2_url)
    await n1.open()
    await n2.open()
    try:
        report = await verify_app(n1, n2, app)
        assert report.identical, report.summary()
        assert report.n1.count == keys
    finally:
        await n1.close()
        await n2.close()


async def test_twenty_thousand_failed_writes_to_two_thousand_keys_leave_one_entry_per_key(
        tmp_path: Path, app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    async with n2_outage_under_load(tmp_path, app_name, bound=10_000, keys=2_000, rounds=10, clients=8,
                                    batch=10) as outage:
        assert outage.written == 20_000
        assert len(outage.while_down) == 2_000, f"{len(outage.while_down)} journal znodes for 2,000 keys"
        assert all(name.startswith(ENTRY_PREFIX) for name in outage.while_down)
        await n2_returns_and_verify_finds_it_identical(outage, app_name, 2_000)


async def test_past_its_bound_the_journal_records_range_marks_that_a_range_repair_resolves(
        tmp_path: Path, app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    marked_before, repairs_before = metric("nxnw_journal_keys_marked_total"), metric("nxnw_journal_range_repairs_total")
    clients, batch, bound = 4, 10, 50
    async with n2_outage_under_load(tmp_path, app_name, bound=bound, keys=600, rounds=2, clients=clients,
                                    batch=batch) as outage:
        entries = [n for n in outage.while_down if n.startswith(ENTRY_PREFIX)]
        marks = [n for n in outage.while_down if n.startswith(MARK_PREFIX)]
        # records running at once may each see the journal just below its bound
        assert bound <= len(entries) <= bound + clients * batch, entries
        assert 0 < len(marks) <= MARK_BUCKETS
        assert metric("nxnw_journal_keys_marked_total") - marked_before >= 600 - len(entries)
        await n2_returns_and_verify_finds_it_identical(outage, app_name, 600)

        async def counted() -> bool:  # the replayer counts right after its deletes, which the drain saw
            return metric("nxnw_journal_range_repairs_total") - repairs_before >= len(marks)
        await wait_for(counted, "every range mark counted as resolved by a range repair", timeout=30)


async def test_a_key_recorded_again_while_its_entry_is_replayed_keeps_the_entry(tmp_path: Path, app_name: str) -> None:
    """Replay reads an entry (and a mark) before it reads the source; a failed write of the
    same key recorded in between bumps it, so replay's removal leaves it for the next pass."""
    require("zookeeper-n1")
    async with zk_namespace() as (_, zk):
        journal = await run_blocking(RepairJournal, zk, "n2", plan=TEST_PLAN, bound=1)
        first, second = EntityRef(app_name, "K", b"a"), EntityRef(app_name, "K", b"b")
        await journal.record_late([first], "n2 down")
        await journal.record_late([second], "n2 down")  # past the bound of 1: a range mark
        entries = await run_blocking(journal._entries, 10)
        marks = await run_blocking(journal._marks)
        assert [ref for _, _, ref in entries] == [first] and len(marks) == 1
        await journal.record_late([first, second], "n2 still down")
        assert await run_blocking(journal._remove, [(name, version) for name, version, _ in entries]) == 0
        assert await run_blocking(journal._remove, [(m.name, m.version) for m in marks]) == 0
        assert await journal.depth() == 2


async def test_range_repair_copies_only_what_the_source_holds_newer(n1_n2, app_name: str) -> None:
    """On every pair of engines: the source's ranges, whatever they are, are scanned; only the
    dirty buckets are compared; the target keeps what is newer and what the source lacks."""
    source, target = n1_n2
    keys = [b"k%03d" % i for i in range(200)]
    dirty = frozenset({bucket_of(b"K\x00" + keys[0], 8)})
    in_dirty = [k for k in keys if bucket_of(b"K\x00" + k, 8) in dirty]
    missing, older, newer_on_target, deleted, target_only = in_dirty[:5]
    await source.apply([Entity(app_name, "K", k, b"src", 100) for k in keys if k not in (target_only, deleted)]
                       + [Entity(app_name, "K", deleted, None, 300)])
    await target.apply([Entity(app_name, "K", older, b"old", 50), Entity(app_name, "K", newer_on_target, b"new", 200),
                        Entity(app_name, "K", deleted, b"src", 100), Entity(app_name, "K", target_only, b"t", 100)])
    report = await repair_buckets(source, target, app_name, dirty, 8)
    got = {k: await target.read(EntityRef(app_name, "K", k)) for k in (missing, older, newer_on_target, deleted)}
    assert (got[missing].value, got[older].value, got[newer_on_target].value) == (b"src", b"src", b"new")
    assert got[deleted].deleted and got[deleted].ts == 300
    assert (await target.read(EntityRef(app_name, "K", target_only))).value == b"t"
    assert await source.read(EntityRef(app_name, "K", target_only)) is None
    outside = [k for k in keys if k not in in_dirty]
    assert [k for k in outside if await target.read(EntityRef(app_name, "K", k)) is not None] == [], \
        "copied outside the dirty buckets"
    assert report.examined == len(in_dirty) - 1 and report.copied == len(in_dirty) - 2


async def test_keys_held_while_zookeeper_refuses_are_bounded_too_and_all_reach_n2(tmp_path: Path, app_name: str) -> None:
    """N2 is down and ZooKeeper refuses journal entries (an ACL that forbids creating them):
    every write is answered 503 "unknown outcome" and held in memory — at most ``bound`` keys,
    the rest as range marks — and all of them reach N2 once ZooKeeper and N2 take them."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        server, http = await stack.enter_async_context(
            running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts, journal_bound=10,
                                       max_clock_offset_ms=2_000)))
        await switch(zk, "cow", apps=[app_name])
        journal = server.modes.journals[0]
        await run_blocking(zk.set_acls, layout.journal(TEST_PLAN, "n2"), [make_acl("world", "anyone", read=True, admin=True)])
        try:
            await server.n2.close()
            for i in range(40):
                response = await http.put(key_path(app_name, "K", b"held-%02d" % i), data=b"v%d" % i)
                assert response.status == 503 and (await response.json())["error"] == "unknown outcome", \
                    await response.text()
            assert len(journal.held) == 10, f"{len(journal.held)} keys held in memory, the bound is 10"
            assert journal.held_marks, "the keys past the bound are not held as range marks"
        finally:
            await run_blocking(zk.set_acls, layout.journal(TEST_PLAN, "n2"), OPEN_ACL_UNSAFE)

        async def flushed() -> bool:
            return not journal.held and not journal.held_marks
        await wait_for(flushed, "the held keys and marks recorded in ZooKeeper")
        outage = Outage(zk, server, n1_url, n2_url, 40, await journal_children(zk))
        assert any(name.startswith(MARK_PREFIX) for name in outage.while_down)
        await n2_returns_and_verify_finds_it_identical(outage, app_name, 40)
