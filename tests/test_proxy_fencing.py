"""The mode machine's promises, through real proxies, ZooKeeper, engines and memcacheds:
the transition table, the journal checked after the drain, writes that survive a client
disconnect, fencing of in-flight work (session expiry, SIGSTOP), a failed adoption
retried, N2's cache after a proxy died in cow, one key twice in a batch.

N2 is slowed, where a test needs a write in flight, by a real lock on its sqlite file
(``BEGIN IMMEDIATE`` from another connection): the proxy's N2 leg waits for it, and fails
("database is locked") once the engine's 10 s busy timeout passes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymemcache.client.base import Client

from datastore import EntityRef, open_engine
from nxnw.services.endpoints import HOST, MEMCACHED, ZOOKEEPER, engine_url
from proxy.control import SwitchBlocked, journal_depth, members, switch_mode
from snapshot import verify_app
from sync import layout
from sync.aio import run_blocking, zk_wait_executor
from sync.mode import read_mode
from tests.conftest import require
from nxnw.fleet import free_port
from nxnw.partition import Partition
from tests.memcached_harness import memcached_process
from tests.proxy_harness import TEST_PLAN, key_path, proxy_config, register_plan, running_proxy, switch, zk_namespace
from tests.zk_harness import client_behind_partition

AUTH = {"Authorization": "Bearer test-token"}


@contextmanager
def locked_sqlite(path: str) -> Iterator[sqlite3.Connection]:
    """Hold the write lock of the sqlite file at ``path`` until the block ends."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def wait_for(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        await asyncio.sleep(0.05)


async def journal_names(zk, target: str, key: bytes) -> bool:
    def names() -> bool:
        root = layout.journal(TEST_PLAN, target)
        return any(json.loads(zk.get(f"{root}/{n}")[0])["key"] == base64.b64encode(key).decode()
                   for n in zk.get_children(root))
    return await run_blocking(names)


@asynccontextmanager
async def engines(n1_url: str, n2_url: str) -> AsyncIterator[tuple]:
    n1, n2 = open_engine(n1_url), open_engine(n2_url)
    await n1.open()
    await n2.open()
    try:
        yield n1, n2
    finally:
        await n1.close()
        await n2.close()


@dataclass
class BehindRelay:
    """A proxy in ``cow`` whose N1 ZooKeeper connection passes through ``relay`` (``cut`` it
    to take ZooKeeper out of its reach), with both engines and a direct ZooKeeper client."""

    server: Any
    http: aiohttp.ClientSession
    zk: Any
    n1: Any
    n2: Any
    relay: Partition


@asynccontextmanager
async def proxy_behind_zk_relay(n1_url: str, n2_url: str, app: str) -> AsyncIterator[BehindRelay]:
    relay = Partition((HOST, ZOOKEEPER["n1"]))
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        port = await relay.start()
        stack.push_async_callback(relay.close)
        chroot = zk_hosts[zk_hosts.index("/"):]
        server, http = await stack.enter_async_context(
            running_proxy(proxy_config("p1", n1_url, n2_url, f"{HOST}:{port}{chroot}")))
        stack.callback(relay.heal)  # first: the proxy's cleanup needs its ZooKeeper back
        await switch(zk, "cow", apps=[app])
        yield BehindRelay(server, http, zk, n1, n2, relay)


async def answer_within(request: asyncio.Future, seconds: float) -> tuple[int, Any]:
    """The status and JSON body of the started ``request``; the test fails if no answer
    comes within ``seconds`` while ZooKeeper stays out of reach."""
    done, _ = await asyncio.wait([request], timeout=seconds)
    if not done:
        request.cancel()
        pytest.fail(f"no answer within {seconds:g} s while ZooKeeper stayed out of reach")
    response = request.result()
    return response.status, await response.json()


# --- the transition table (item 11) -------------------------------------------------------


async def test_admin_mode_refuses_transitions_outside_the_table_with_409_and_the_reason(tmp_path: Path,
                                                                                       app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with zk_namespace() as (zk_hosts, zk):
        await run_blocking(register_plan, zk, [app_name])
        async with running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)) as (server, http):
            refused = await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "proxy"}, headers=AUTH)
            body = await refused.json()
            assert refused.status == 409 and body["error"] == "transition refused"
            assert "passthrough (epoch 0) cannot change to proxy" in body["reason"]
            assert (await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "cow"}, headers=AUTH)).status == 200
            unverified = await http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "proxy"}, headers=AUTH)
            assert unverified.status == 409 and "no verification is recorded" in (await unverified.json())["reason"]
            assert (await run_blocking(read_mode, zk, path=layout.mode(TEST_PLAN))).mode == "cow"
            assert server.core.plan_mode(TEST_PLAN) == "cow"


# --- one key twice (item 2, proxy side) ----------------------------------------------------


async def test_a_batch_naming_one_key_twice_is_refused_and_the_sides_stay_identical(sqlite_dir: str,
                                                                                   app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2", "cassandra")
    n1_url, n2_url = engine_url("sqlite", "n1", sqlite_dir), engine_url("cassandra", "n2", sqlite_dir)
    async with zk_namespace() as (zk_hosts, zk), engines(n1_url, n2_url) as (n1, n2):
        async with running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)) as (server, http):
            await switch(zk, "cow", apps=[app_name])
            twice = {"writes": [{"kind": "K", "key": "aw==", "value": "YQ=="},
                                {"kind": "K", "key": "aw==", "value": "Yg=="}]}
            resp = await http.post(f"/v1/apps/{app_name}/batch", json=twice)
            body = await resp.json()
            assert resp.status == 400, body
            assert "K/aw==" in body["reason"] and "twice" in body["reason"]
            txn = {"group": "g", "writes": twice["writes"]}
            resp = await http.post(f"/v1/apps/{app_name}/transactions", json=txn)
            assert resp.status == 400 and "K/aw==" in (await resp.json())["reason"]
            ok = await http.post(f"/v1/apps/{app_name}/batch", json={"writes": twice["writes"][:1]})
            assert ok.status == 200
        try:
            report = await verify_app(n1, n2, app_name)
            assert report.identical, report.summary()
            assert (await n1.get(EntityRef(app_name, "K", b"k"))).value == b"a"
        finally:
            await n1.drop_app(app_name)
            await n2.drop_app(app_name)


# --- the journal is checked after the drain (item 1) ---------------------------------------


async def test_switch_to_proxy_returns_only_once_the_journal_of_writes_in_flight_is_empty(tmp_path: Path,
                                                                                         app_name: str) -> None:
    """A cow write whose N2 leg is still running when the switch starts journals its failure
    after the old pre-switch check: the switch must not return with that entry pending."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_path = f"sqlite:///{tmp_path}/n1.db", f"{tmp_path}/n2.db"
    n2_url = f"sqlite:///{n2_path}"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        server, http = await stack.enter_async_context(running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)))
        await switch(zk, "cow", apps=[app_name])
        assert (await http.put(key_path(app_name, "K", b"first"), data=b"0")).status == 200  # creates N2's table
        ref = EntityRef(app_name, "K", b"in-flight")
        lock = locked_sqlite(n2_path)
        lock.__enter__()
        put = asyncio.create_task(http.put(key_path(app_name, "K", b"in-flight"), data=b"v"))
        await wait_for(lambda: n1.get(ref), "the N1 leg")
        switching = asyncio.create_task(switch(zk, "proxy", drain_timeout=60, ack_timeout=60))
        await wait_for(lambda: journal_names(zk, "n2", b"in-flight"), "the N2 leg's failure journalled")
        done, _ = await asyncio.wait([switching], timeout=3)  # the old code returns here
        lock.__exit__(None, None, None)
        await switching
        assert await run_blocking(journal_depth, zk, TEST_PLAN, "n2") == 0, "switch_mode returned with the journal not empty"
        assert done == set() or (await n2.get(ref)) is not None
        response = await put
        assert response.status in (200, 503)
        if response.status == 200:
            got = await http.get(key_path(app_name, "K", b"in-flight"))
            assert await got.read() == b"v"
        assert (await n2.get(ref)).value == b"v"


# --- a client disconnect never cancels a dual write (item 4) -------------------------------


async def test_a_client_that_disconnects_mid_dual_write_leaves_both_sides_holding_it_or_the_journal_naming_it(
        tmp_path: Path, app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_path = f"sqlite:///{tmp_path}/n1.db", f"{tmp_path}/n2.db"
    n2_url = f"sqlite:///{n2_path}"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        server, http = await stack.enter_async_context(running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)))
        await switch(zk, "cow", apps=[app_name])
        assert (await http.put(key_path(app_name, "K", b"first"), data=b"0")).status == 200
        ref = EntityRef(app_name, "K", b"gone")
        with locked_sqlite(n2_path):
            impatient = aiohttp.ClientTimeout(total=1)
            with pytest.raises(TimeoutError):
                await http.put(key_path(app_name, "K", b"gone"), data=b"v", timeout=impatient)
            await wait_for(lambda: n1.get(ref), "the N1 leg")

            async def n2_failed_and_journalled() -> bool:
                return await journal_names(zk, "n2", b"gone")
            # the N2 leg fails at the busy timeout: the shielded task journals it
            await wait_for(n2_failed_and_journalled, "the journal naming the key", timeout=30)

        async def both_hold_it() -> bool:
            entity = await n2.get(ref)
            return entity is not None and entity.value == b"v"
        await wait_for(both_hold_it, "the journal replayed to N2", timeout=30)


async def test_a_journal_record_zookeeper_refuses_is_answered_503_and_recorded_once_it_can(
        tmp_path: Path, app_name: str) -> None:
    """N2's leg fails and ZooKeeper refuses the journal entry (an ACL that forbids creating it):
    the client gets 503 "unknown outcome", never a silent success with N1 ahead, and the key
    is journalled — and replayed to N2 — once ZooKeeper takes it."""
    from kazoo.security import OPEN_ACL_UNSAFE, make_acl

    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_path = f"sqlite:///{tmp_path}/n1.db", f"{tmp_path}/n2.db"
    n2_url = f"sqlite:///{n2_path}"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        server, http = await stack.enter_async_context(running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts)))
        await switch(zk, "cow", apps=[app_name])
        assert (await http.put(key_path(app_name, "K", b"first"), data=b"0")).status == 200
        ref = EntityRef(app_name, "K", b"unjournalled")
        await run_blocking(zk.set_acls, layout.journal(TEST_PLAN, "n2"), [make_acl("world", "anyone", read=True, admin=True)])
        try:
            with locked_sqlite(n2_path):
                response = await http.put(key_path(app_name, "K", b"unjournalled"), data=b"v")
            assert response.status == 503, await response.text()
            assert (await response.json())["error"] == "unknown outcome"
            assert (await n1.get(ref)).value == b"v"
            assert server.modes.journals[0].held, "the key is not held for the journal"
        finally:
            await run_blocking(zk.set_acls, layout.journal(TEST_PLAN, "n2"), OPEN_ACL_UNSAFE)

        async def on_n2() -> bool:
            entity = await n2.get(ref)
            return entity is not None and entity.value == b"v"
        await wait_for(on_n2, "the held key journalled and replayed to N2", timeout=30)
        assert not server.modes.journals[0].held


async def test_a_journal_record_while_zookeeper_is_out_of_reach_is_answered_503_within_its_deadline(
        tmp_path: Path, app_name: str) -> None:
    """N2's leg fails while N1's ZooKeeper is out of reach (its connection dark, not closed).
    kazoo queues a call made while it reconnects until it is connected again, so the journal
    record, and the client with it, waited as long as ZooKeeper stayed dark. The client gets
    503 "unknown outcome" within the record's deadline, the key is held, and it is journalled
    and replayed to N2 once ZooKeeper is back."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_path = f"sqlite:///{tmp_path}/n1.db", f"{tmp_path}/n2.db"
    n2_url = f"sqlite:///{n2_path}"
    async with proxy_behind_zk_relay(n1_url, n2_url, app_name) as run:
        server, http, n1, n2, relay = run.server, run.http, run.n1, run.n2, run.relay
        ref = EntityRef(app_name, "K", b"dark")

        async def on_n1() -> bool:
            entity = await n1.get(ref)
            return entity is not None and entity.value == b"v"

        with locked_sqlite(n2_path):
            put = asyncio.ensure_future(http.put(key_path(app_name, "K", b"dark"), data=b"v"))
            await wait_for(on_n1, "the write on N1, its N2 leg waiting for the lock")
            relay.cut()
            # N2's leg fails when the engine's 10 s busy timeout passes; the record's deadline is 10 s.
            status, body = await answer_within(put, 40)
        assert status == 503 and body["error"] == "unknown outcome", body
        assert "held" in body["reason"], body
        assert server.modes.journals[0].held, "the key is not held for the journal"
        relay.heal()

        async def on_n2() -> bool:
            entity = await n2.get(ref)
            return entity is not None and entity.value == b"v"
        await wait_for(on_n2, "the held key journalled and replayed to N2 once ZooKeeper is back", timeout=60)
        assert not server.modes.journals[0].held


# --- fencing of in-flight work (item 5) ------------------------------------------------------


async def test_a_request_in_flight_when_the_session_expired_does_not_complete_after_the_switch(
        tmp_path: Path, app_name: str, expire_zk_session) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_path = f"sqlite:///{tmp_path}/n1.db", f"{tmp_path}/n2.db"
    n2_url = f"sqlite:///{n2_path}"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        cache = "%s:%d" % stack.enter_context(memcached_process())
        server, http = await stack.enter_async_context(
            running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts).model_copy(update={"n2_memcached": cache})))
        await switch(zk, "cow", apps=[app_name])
        assert (await http.put(key_path(app_name, "K", b"first"), data=b"0")).status == 200
        ref = EntityRef(app_name, "K", b"old-mode")
        switched: list[float] = []
        with locked_sqlite(n2_path):
            put = asyncio.create_task(http.put(key_path(app_name, "K", b"old-mode"), data=b"v"))
            await wait_for(lambda: n1.get(ref), "the N1 leg")

            def switch_while_the_proxy_has_no_session() -> None:
                epoch = read_mode(zk, path=layout.mode(TEST_PLAN)).epoch
                from sync.mode import mark_load_verified
                mark_load_verified(zk, epoch, path=layout.mode(TEST_PLAN))
                switch_mode(zk, TEST_PLAN, "proxy", drain_timeout=30, ack_timeout=30, n2_memcached=cache)
                switched.append(time.monotonic())

            await run_blocking(expire_zk_session, server.zk, "n1", switch_while_the_proxy_has_no_session, 60.0)
        response = await put
        assert switched, "switch_mode did not return"
        assert response.status == 503, f"a request of the old mode completed after the switch: {response.status}"
        assert (await response.json())["error"] == "unknown outcome"
        await wait_for(lambda: asyncio.sleep(0, server.core.plan_mode(TEST_PLAN) == "proxy"), "the proxy adopting proxy mode")


PLAN = """
name = "fencing-test"
apps = ["{app}"]
sync_paths = ["/apps"]

[n1]
engine = "{n1}"
zookeeper = "{zk}"
memcached = "{mc1}"
proxies = ["http://127.0.0.1:{port}"]

[n2]
engine = "{n2}"
zookeeper = "{zk2}"
memcached = "{mc2}"
proxies = ["http://127.0.0.1:{port}"]

[dns]
provider = "rfc2136"
name = "app.example.org."
n1_values = ["10.0.0.5"]
n2_values = ["10.0.1.5"]
ttl = 5

[dns.rfc2136]
server = "127.0.0.1:53"
zone = "example.org."
key_name = "k."
key_secret = "c2VjcmV0"
"""


@asynccontextmanager
async def proxy_process(tmp_path: Path, name: str, n1_url: str, n2_url: str, zk_hosts: str,
                        app: str, n2_memcached: str | None = None) -> AsyncIterator[tuple[subprocess.Popen, str]]:
    """``nxnw proxy serve`` as a child process; yields it and its base URL once it is healthy."""
    port = free_port(HOST)
    plan = tmp_path / f"{name}.toml"
    plan.write_text(PLAN.format(app=app, n1=n1_url, n2=n2_url, zk=zk_hosts, zk2=f"{HOST}:{ZOOKEEPER['n2']}",
                                mc1=f"{HOST}:{MEMCACHED['n1']}", mc2=n2_memcached or f"{HOST}:{MEMCACHED['n2']}",
                                port=port))
    log = open(tmp_path / f"{name}.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "nxnw"), "proxy", "serve", str(plan), "--instance", name,
                             "--port", str(port)],
                            env={**os.environ, "NXNW_ADMIN_TOKEN": "test-token"}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def healthy() -> bool:
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
                try:
                    return (await http.get(f"{base}/healthz")).status == 200
                except aiohttp.ClientError:
                    return False
            await wait_for(healthy, f"proxy {name} healthy", timeout=60)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


async def test_a_proxy_stopped_past_its_session_timeout_answers_nothing_under_the_old_mode_when_resumed(
        tmp_path: Path, app_name: str) -> None:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        n1, n2 = await stack.enter_async_context(engines(n1_url, n2_url))
        proc, base = await stack.enter_async_context(
            proxy_process(tmp_path, "p-stop", n1_url, n2_url, zk_hosts, app_name))
        http = await stack.enter_async_context(aiohttp.ClientSession(base))
        await switch(zk, "cow", apps=[app_name])
        assert (await http.put(key_path(app_name, "K", b"before"), data=b"0")).status == 200
        assert await n2.get(EntityRef(app_name, "K", b"before")) is not None
        proc.send_signal(signal.SIGSTOP)

        async def gone() -> bool:
            return "p-stop" not in await run_blocking(members, zk)
        await wait_for(gone, "the stopped proxy's session expiring", timeout=40)
        await switch(zk, "passthrough")  # rollback: N2 is no longer written
        # sent while the proxy is stopped: the kernel queues them, the resumed loop serves them first
        queued = [asyncio.create_task(http.put(key_path(app_name, "K", b"after%d" % i), data=b"v"))
                  for i in range(5)]
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGCONT)
        for i, task in enumerate(queued):
            response = await task
            assert response.status in (200, 503), await response.text()
            if response.status == 200:
                assert await n2.get(EntityRef(app_name, "K", b"after%d" % i)) is None, \
                    "a request was served under the old mode (cow wrote N2) after the switch to passthrough"
            else:
                assert (await response.json())["error"] == "refused"

        async def back_in_passthrough() -> bool:
            return (await http.get("/healthz")).status == 200 and \
                (await (await http.get("/healthz")).json())["plans"] == {TEST_PLAN: "passthrough"}
        await wait_for(back_in_passthrough, "the resumed proxy adopting passthrough", timeout=40)


async def test_a_committed_transaction_whose_lock_cannot_be_released_is_not_answered_refused(
        tmp_path: Path, app_name: str) -> None:
    """ZooKeeper goes dark after a transaction's writes are in and before its group lock is
    released: the release fails after its deadline. "refused" would tell the client that
    nothing reached an engine, and the history checker counts a read of that value as a
    phantom (the fault matrix saw one, expire-session during snapshot+load); the committed
    transaction is acknowledged."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with proxy_behind_zk_relay(n1_url, n2_url, app_name) as run:
        server, http, n1, relay = run.server, run.http, run.n1, run.relay
        locked = server.core.lock

        @asynccontextmanager
        async def dark_before_the_unlock(app: str, group: str) -> AsyncIterator[Callable[[], None]]:
            async with locked(app, group) as ensure_held:
                yield ensure_held
                relay.cut()  # the writes are in; the release goes out into the dark

        server.core.lock = dark_before_the_unlock
        txn = {"group": "g", "writes": [{"kind": "K", "key": base64.b64encode(b"k").decode(),
                                         "value": base64.b64encode(b"committed").decode()}]}
        resp = await http.post(f"/v1/apps/{app_name}/transactions", json=txn)
        body = await resp.json()
        assert relay.is_cut, "the transaction did not reach its unlock"
        assert (await n1.get(EntityRef(app_name, "K", b"k"))).value == b"committed"
        assert resp.status == 200, body


async def test_a_transaction_while_zookeeper_is_out_of_reach_is_refused_within_the_lock_timeout(
        tmp_path: Path, app_name: str) -> None:
    """N1's ZooKeeper goes dark (not closed) just before a transaction: kazoo queues the lock
    recipe's calls until it reconnects, and the client got no answer for as long as that
    took. It is refused (nothing reached an engine) once the lock's 10 s timeout passes."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with proxy_behind_zk_relay(n1_url, n2_url, app_name) as run:
        http, n1, relay = run.http, run.n1, run.relay
        txn = {"group": "g", "writes": [{"kind": "K", "key": base64.b64encode(b"k").decode(),
                                         "value": base64.b64encode(b"dark").decode()}]}
        relay.cut()
        post = asyncio.ensure_future(http.post(f"/v1/apps/{app_name}/transactions", json=txn))
        status, body = await answer_within(post, 30)
        assert status == 503 and body["error"] == "refused", body
        assert await n1.get(EntityRef(app_name, "K", b"k")) is None


async def test_a_switch_while_zookeeper_is_out_of_reach_is_blocked_within_its_timeouts_saying_the_mode_changed(
) -> None:
    """ZooKeeper goes dark while ``switch_mode`` waits for an instance's acknowledgement. The
    wait's reads went to kazoo as they were: the one in flight when kazoo dropped the
    connection failed with a bare ConnectionLoss (a 502 "backend failure" from
    ``POST /admin/mode``, an unexplained error in the orchestrator, nothing saying the mode
    had changed), and one made while kazoo reconnected waited for as long as ZooKeeper stayed
    dark, whatever the switch's timeouts. The switch is blocked within them now, and says
    that the mode did change."""
    require("zookeeper-n1")
    async with zk_namespace() as (zk_hosts, zk):
        # an instance on its own session that never acknowledges: the switch waits for it
        ghost = {"instance": "ghost", "incarnation": "x", "session": None, "plans": {}}
        await run_blocking(zk.create, layout.proxy_member("ghost"), json.dumps(ghost).encode(), ephemeral=True,
                           makepath=True)
        await run_blocking(register_plan, zk, ["w_dark"], "dark", {"w_dark": "dark:"})
        async with client_behind_partition(zk_hosts[zk_hosts.index("/"):]) as (client, relay):
            switching = asyncio.ensure_future(run_blocking(switch_mode, client, "dark", "cow", drain_timeout=3,
                                                           ack_timeout=3, executor=zk_wait_executor()))

            async def changed() -> bool:
                state = await run_blocking(read_mode, zk, path=layout.mode("dark"))
                return state is not None and state.mode == "cow"

            await wait_for(changed, "the switch set the mode")
            relay.cut()
            started = time.monotonic()
            done, _ = await asyncio.wait([switching], timeout=30)
            assert done, "switch_mode did not return within 30 s while ZooKeeper stayed out of reach"
            with pytest.raises(SwitchBlocked, match="mode is now cow .*ZooKeeper did not answer in time"):
                switching.result()
            assert time.monotonic() - started < 3 + 5


# --- a failed adoption is retried (item 6) --------------------------------------------------


async def test_an_instance_that_cannot_adopt_the_mode_refuses_writes_and_retries_until_it_can(
        tmp_path: Path, app_name: str) -> None:
    """N2's memcached is down, so leaving cow cannot invalidate the cache copies it dropped;
    once that memcached is back the instance adopts the mode by itself."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    dead_port = free_port(HOST)
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        config = proxy_config("p1", n1_url, n2_url, zk_hosts).model_copy(
            update={"n2_memcached": f"{HOST}:{dead_port}"})
        server, http = await stack.enter_async_context(running_proxy(config))
        await switch(zk, "cow", apps=[app_name])
        key = base64.urlsafe_b64encode(f"{app_name}:c".encode()).rstrip(b"=").decode()
        assert (await http.put(f"/v1/cache/{key}", data=b"x")).status == 200  # its copy to N2 fails: dropped
        tenant = server.modes.machines[TEST_PLAN].cache
        await wait_for(lambda: asyncio.sleep(0, bool(tenant.to_n2.dropped)), "the copy dropped")
        with pytest.raises(SwitchBlocked, match="not acknowledged"):
            await switch(zk, "passthrough", ack_timeout=3)
        refused = await http.put(key_path(app_name, "K", b"k"), data=b"v")
        assert refused.status == 503
        assert f"could not adopt plan {TEST_PLAN}'s mode passthrough" in (await refused.json())["reason"]
        health = await http.get("/healthz")
        assert health.status == 503 and "could not adopt" in (await health.json())["reason"]
        with memcached_process(dead_port):
            await switch(zk, "passthrough", ack_timeout=30)  # the same mode again: re-acknowledged
            assert server.core.plan_mode(TEST_PLAN) == "passthrough"
            assert (await http.put(key_path(app_name, "K", b"k"), data=b"v")).status == 200


# --- N2's cache after a proxy died in cow (item 7) --------------------------------------------


@pytest.mark.parametrize("restarted", [False, True], ids=["dead", "restarted-under-the-same-name"])
async def test_n2_cache_is_flushed_before_proxy_when_an_instance_died_in_cow(tmp_path: Path, app_name: str,
                                                                            restarted: bool) -> None:
    """A proxy killed in cow loses its queued copies: N2 may keep a value N1 overwrote. Here
    N2 holds such a value (as a lost overwrite's copy would leave it) when the switch runs —
    also when the killed instance was restarted under its name and drains cleanly itself."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    n1_url, n2_url = f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db"
    async with AsyncExitStack() as stack:
        zk_hosts, zk = await stack.enter_async_context(zk_namespace())
        cache = "%s:%d" % stack.enter_context(memcached_process())
        survivor, http = await stack.enter_async_context(
            running_proxy(proxy_config("p1", n1_url, n2_url, zk_hosts).model_copy(update={"n2_memcached": cache})))
        victim, _ = await stack.enter_async_context(
            proxy_process(tmp_path, "p-killed", n1_url, n2_url, zk_hosts, app_name, n2_memcached=cache))
        await switch(zk, "cow", apps=[app_name])
        victim.kill()  # kill -9: its mirror queue dies with it
        victim.wait()
        if restarted:
            await stack.enter_async_context(running_proxy(
                proxy_config("p-killed", n1_url, n2_url, zk_hosts).model_copy(update={"n2_memcached": cache})))
        key = f"{app_name}:k".encode()
        Client((HOST, MEMCACHED["n1"])).set(key, b"new", noreply=False)
        host, _, port = cache.rpartition(":")
        Client((host, int(port))).set(key, b"stale", noreply=False)
        await switch(zk, "proxy", ack_timeout=40, n2_memcached=cache)
        path = f"/v1/cache/{base64.urlsafe_b64encode(key).rstrip(b'=').decode()}"
        got = await http.get(path)
        assert got.status == 404 or await got.read() != b"stale", "N2 served a value N1 had overwritten"
