"""A loader killed with SIGKILL resumes from its ZooKeeper checkpoints and ends identical."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from datastore import Entity, open_engine
from nxnw.services.endpoints import engine_url
from snapshot import verify_app
from sync.state import TaskRecordStore
from tests.conftest import require
from tests.proxy_harness import zk_namespace


async def test_killed_copy_resumes_from_checkpoints_and_ends_identical(sqlite_dir: str, app_name: str) -> None:
    require("zookeeper-n1", "hbase")
    source, target = engine_url("sqlite", "n1", sqlite_dir), engine_url("hbase", "n2", sqlite_dir)
    n1, n2 = open_engine(source), open_engine(target)
    await n1.open()
    await n2.open()
    try:
        await n1.apply([Entity(app_name, "K", b"k%05d" % i, b"v" * 200, 1000 + 16 * i) for i in range(4000)])
        await n1.apply([Entity(app_name, "K", b"k%05d" % i, None, 900_000) for i in range(0, 4000, 50)])
        async with zk_namespace() as (zk_hosts, zk):
            argv = [sys.executable, "-m", "nxnw.cli", "snapshot", "copy", "--from", source, "--to", target,
                    "--app", app_name, "--zookeeper", zk_hosts, "--task", "t1", "--ranges", "32"]
            first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            store = TaskRecordStore(zk)
            deadline = time.monotonic() + 120
            while len(store.list("t1")) < 6 and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert first.poll() is None, "the copy finished before it could be killed; make it bigger"
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
            done_before = len(store.list("t1")) - 1  # minus the saved plan
            second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
            assert second.returncode == 0, second.stderr
            assert f"{done_before} of 32 ranges were already done" in second.stdout
        report = await verify_app(n1, n2, app_name)
        assert report.identical, report.summary()
        assert report.n1.count == 4000
    finally:
        await n2.drop_app(app_name)
        await n1.close()
        await n2.close()
