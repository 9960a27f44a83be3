"""The HBase engine on a stock Thrift1 server: what ``open`` detects and logs, the calls the
stock write path makes and in which order, and the gateway run alone beside a cluster.

The stock server is nxnw's gateway on its stock port (``HBASE_THRIFT_STOCK``): it serves
HBase's Thrift1 ``Hbase`` processor alone, so it answers ``mutateRowsTsEach`` as HBase's own
Thrift server does. The conformance suite and tests/test_hbase_bulk.py run on it too
(``hbase-stock``); the tests here pin down what those cannot see.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

from datastore import Entity, EntityRef, EngineUnavailable
from datastore.engines.hbase import BATCH_ROWS, GatewayConnection, HBaseEngine, TsCall, has_extension, stock_calls
from nxnw.services.endpoints import HBASE_THRIFT_STOCK, HBASE_ZOOKEEPER, HOST, engine_url
from nxnw.services.hbase import gateway_command
from tests.conftest import require


class RecordingEngine(HBaseEngine):
    """The real engine; every stock ``mutateRowsTs`` it makes is recorded before it is sent."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.sent: list[tuple[int, int]] = []  # (timestamp, rows) in the order sent
        self._sent_lock = threading.Lock()

    def _mutate_ts(self, client: Any, table: bytes, calls: list[TsCall]) -> None:
        for call in calls:
            with self._sent_lock:
                self.sent.append((call.ts, len(call.rows)))
            client.mutateRowsTs(table, call.rows, call.ts, {})


class BrokenWritesEngine(HBaseEngine):
    """The real engine, whose stock calls at ``broken_ts`` fail as a dropped connection would."""

    broken_ts = 0

    def _mutate_ts(self, client: Any, table: bytes, calls: list[TsCall]) -> None:
        if any(call.ts == self.broken_ts for call in calls):
            raise TTransportException(TTransportException.END_OF_FILE, "connection dropped (injected)")
        super()._mutate_ts(client, table, calls)


@pytest.fixture
def stock_url(sqlite_dir: str) -> str:
    require("hbase")
    return engine_url("hbase-stock", "n1", sqlite_dir)


async def test_open_finds_the_extension_only_on_the_gateway_and_logs_the_write_path(
        caplog: pytest.LogCaptureFixture, sqlite_dir: str, stock_url: str) -> None:
    caplog.set_level(logging.INFO, logger="nxnw.engines.hbase")
    for url, extension, says in ((engine_url("hbase", "n1", sqlite_dir), True, "nxnw's gateway (mutateRowsTsEach)"),
                                 (stock_url, False, "stock Thrift1 (no mutateRowsTsEach)")):
        caplog.clear()
        engine = HBaseEngine(url)
        await engine.open()
        try:
            assert engine.extension is extension
            lines = [r.getMessage() for r in caplog.records if r.name == "nxnw.engines.hbase"]
            assert len(lines) == 1 and says in lines[0], lines
        finally:
            await engine.close()


def test_a_stock_server_answers_mutateRowsTsEach_as_an_unknown_method_and_the_connection_lives_on(
        stock_url: str) -> None:
    conn = GatewayConnection(HOST, HBASE_THRIFT_STOCK, 15_000)
    try:
        with pytest.raises(TApplicationException) as refused:
            conn.client.mutateRowsTsEach(b"", [])
        assert refused.value.type == TApplicationException.UNKNOWN_METHOD
        assert not has_extension(conn.client)
        assert isinstance(conn.client.getTableNames(), list)
    finally:
        conn.close()


async def test_a_call_the_server_does_not_know_is_engine_unavailable_naming_it(stock_url: str) -> None:
    engine = HBaseEngine(stock_url)
    await engine.open()
    try:
        with pytest.raises(EngineUnavailable, match="could not run a gateway-only call: .*mutateRowsTsEach"):
            await engine._run("a gateway-only call", lambda client: client.mutateRowsTsEach(b"t", []))
    finally:
        await engine.close()


def test_stock_calls_are_one_per_distinct_timestamp_for_writes_and_one_per_marker_timestamp() -> None:
    entities = [Entity("a", "K", b"k%d" % i, b"v", ts) for i, ts in enumerate([50, 50, 90, 50, 90, 120])]
    entities.append(Entity("a", "K", b"gone", None, 120))
    writes, markers = stock_calls([(e.row_key, e.value, e.ts) for e in entities])
    assert sorted((c.ts, len(c.rows)) for c in writes) == [(50, 3), (90, 2), (120, 2)]
    assert sorted((c.ts, len(c.rows)) for c in markers) == [(49, 3), (89, 2), (119, 2)]
    many = [(b"K\x00k%d" % i, b"v", 7) for i in range(BATCH_ROWS + 1)]
    writes, markers = stock_calls(many)
    assert [len(c.rows) for c in writes] == [BATCH_ROWS, 1] and [c.ts for c in writes] == [7, 7]


async def test_a_stock_apply_sends_every_write_before_any_marker_and_ends_last_write_wins(
        stock_url: str, app_name: str) -> None:
    engine = RecordingEngine(stock_url)
    await engine.open()
    try:
        await engine.apply([Entity(app_name, "K", b"k%03d" % i, b"old", 10) for i in range(30)])  # creates the table
        engine.sent.clear()
        batch = [Entity(app_name, "K", b"k%03d" % i, b"v%d" % ts, ts) for ts in (300, 200, 100) for i in range(30)]
        batch += [Entity(app_name, "K", b"k%03d" % i, None, 200) for i in range(0, 30, 3)]
        await engine.apply(batch)

        assert sorted(engine.sent[:3]) == [(100, 30), (200, 40), (300, 30)]  # one call per timestamp
        assert sorted(engine.sent[3:]) == [(99, 30), (199, 40), (299, 30)]  # then the markers
        for key in (b"k%03d" % i for i in range(30)):
            assert await engine.read(EntityRef(app_name, "K", key)) == Entity(app_name, "K", key, b"v300", 300)
    finally:
        await engine.drop_app(app_name)
        await engine.close()


async def test_a_failed_stock_write_leaves_no_marker_hiding_the_older_value(stock_url: str, app_name: str) -> None:
    """A marker alone would mask the value it was meant to supersede: the key would read as
    never written until the write is retried."""
    engine = BrokenWritesEngine(stock_url)
    await engine.open()
    try:
        ref = EntityRef(app_name, "K", b"k")
        await engine.put(Entity(app_name, "K", b"k", b"acknowledged", 100))
        engine.broken_ts = 200
        with pytest.raises(EngineUnavailable, match="connection dropped"):
            await engine.put(Entity(app_name, "K", b"k", b"newer", 200))
        assert await engine.read(ref) == Entity(app_name, "K", b"k", b"acknowledged", 100)
    finally:
        await engine.drop_app(app_name)
        await engine.close()


@pytest.mark.parametrize("quorum, port, reason", [
    ("zk1:2181/hbase", 9090, "must be host"), ("zk1 zk2", 9090, "must be host"), ("", 9090, "must be host"),
    ("zk1:70000", 9090, "not 1-65535"), ("zk1:2181", 0, "not 1-65535"),
])
def test_the_gateway_refuses_a_bad_quorum_or_port_naming_it(quorum: str, port: int, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        gateway_command(quorum, port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


async def test_run_gateway_serves_a_cluster_found_by_its_quorum_with_the_extension_off(
        stock_url: str, tmp_path: Path) -> None:
    """The gateway alone, as beside a real cluster: here the local HBase, found through its
    ZooKeeper. ``run_gateway`` replaces its process, so it runs in a child process."""
    port = _free_port()
    log_path = tmp_path / "gateway.log"
    code = (f"from nxnw.services.hbase import run_gateway; "
            f"run_gateway('{HOST}:{HBASE_ZOOKEEPER}', {port}, bind='{HOST}', extension=False)")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    app = f"t_{uuid.uuid4().hex[:12]}"
    engine = HBaseEngine(f"hbase://{HOST}:{port}/nxnw_gw_")
    try:
        deadline = time.monotonic() + 600  # the first run also builds the gateway
        while True:
            assert proc.poll() is None, f"the gateway exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            try:
                await engine.open()
                break
            except EngineUnavailable:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the gateway did not answer:\n{log_path.read_text()[-3000:]}") from None
                await asyncio.sleep(0.5)
        assert engine.extension is False
        entity = Entity(app, "K", b"k", b"through the quorum", 1_000)
        await engine.apply([entity, Entity(app, "K", b"k", b"older", 999)])
        assert await engine.read(entity.ref) == entity
        await engine.drop_app(app)
    finally:
        await engine.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert "stock surface, no mutateRowsTsEach" in log_path.read_text()
