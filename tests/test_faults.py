"""The fault campaign, one cell per fault, and the proof that the demo sees a loss.

Each cell is a whole ``nxnw demo`` (sqlite N1 -> sqlite N2, two ``nxnw proxy serve``
processes, clients failing over between them, the orchestrator as a child) with one fault
in the phase where it bites hardest; it passes only when the history checker finds no
anomaly, the final verify finds N1 and N2 identical and the migration completed.
``make faults`` runs every fault in every phase, for sqlite->sqlite and cassandra->hbase.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import threading
from pathlib import Path

import pytest

from nxnw import cli
from nxnw.demo import DemoEnvironment, DemoOptions, run_demo
from nxnw.faults import FAULT_PHASES, FAULTS, parse_fault
from nxnw.history import check
from nxnw.workload import Endpoint, Workload
from nxnw.zk import zk_session
from proxy.control import switch_mode
from sync.aio import run_blocking
from sync.state import PlanRegistry

#: fault -> the phase where it bites hardest, and why
CELLS = {
    # dual writes in flight and cache copies queued on the instance that dies
    "kill-proxy": "cow",
    # paused in cow, the instance misses the switch to proxy; resumed, it must not serve cow
    "pause-proxy": "cow",
    # same, with the instance running on: it must fence itself before the server drops it
    "expire-session": "cow",
    # cut off from ZooKeeper while it runs on, serving clients and engines: it learns of it
    # only from its own lease, and must stop acting before the switch goes on without it
    "partition-zookeeper": "cow",
    # N2's leg of every dual write fails: the repair journal fills and must drain before proxy
    "n2-engine-down": "cow",
    # down across the cow -> proxy switch (verify is the phase just before it)
    "n2-memcached-down": "verify",
    # clients abandon dual writes between the legs
    "client-timeout": "cow",
    # killed in the middle of the mode switch to proxy
    "kill-orchestrator": "proxy",
}

SMALL = {"seed_entities": 300, "keys": 100, "ttl": 1}


def test_every_fault_has_a_cell() -> None:
    assert set(CELLS) == set(FAULTS)
    assert set(CELLS.values()) <= set(FAULT_PHASES)


@pytest.mark.parametrize("fault", list(CELLS))
async def test_fault_cell_loses_nothing(fault: str) -> None:
    figures, ok = await run_demo(DemoOptions(faults=[(fault, CELLS[fault])], **SMALL))
    anomalies = {k: v for k, v in figures.items() if k in (
        "lost writes", "resurrected deletes", "stale reads", "phantom reads", "wrong value reads", "unknown writes",
        "stale cache reads", "phantom cache reads") and v}
    assert ok, f"{fault} in {CELLS[fault]}: {anomalies or figures}"
    assert figures["final verify"] == "identical"
    assert figures["faults not injected"] == "none"


def test_demo_reports_a_row_changed_on_n2_behind_the_proxies_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """Rows deleted straight in N2's engine after the migration: the checker must see the loss."""
    code = cli.main(["demo", "--entities", "300", "--keys", "100", "--ttl", "1", "--tamper-n2", "5"])
    out = capsys.readouterr().out
    assert code == 1, out
    lost = int(next(line for line in out.splitlines() if line.startswith("lost writes:")).split(":")[1])
    assert lost >= 5, out
    assert "result: FAILED" in out


@pytest.mark.parametrize("argv, reason", [
    (["--fault", "unplug-the-moon", "--in", "cow"], "unknown fault 'unplug-the-moon'"),
    (["--fault", "kill-proxy", "--in", "complete"], "unknown phase 'complete'"),
    (["--fault", "kill-proxy"], "each --fault needs its --in PHASE"),
    (["--from", "cassandra", "--to", "cassandra", "--fault", "n2-engine-down", "--in", "cow"], "share one cassandra"),
])
def test_bad_fault_flags_exit_2_with_the_reason(argv: list[str], reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", *argv]) == 2
    assert reason in capsys.readouterr().err


def test_parse_fault_names_the_choices() -> None:
    with pytest.raises(ValueError, match="kill-proxy"):
        parse_fault("nope", "cow")


async def test_a_write_whose_proxy_died_after_n1_took_it_is_not_recorded_failed(tmp_path: Path) -> None:
    """kill -9 of a proxy mid dual write: N1 has the write, the client saw the connection drop.

    aiohttp retries a PUT once on a new connection after a dropped one; the retry's
    connection is refused, and the workload must not read that refusal as "never sent"
    (failed): the first attempt reached the proxy and N1 holds its value, so the checker
    would report an unknown write, or a phantom read of it.
    """
    env = DemoEnvironment(DemoOptions(seed_entities=0, workdir=tmp_path))
    env.slots = env.fleet.slots = env.slots[:1]  # one instance: nowhere to fail over to
    try:
        await env.setup()
        assert env.plan is not None
        async with zk_session(env.plan.n1.zookeeper, "N1's") as zk:
            await run_blocking(PlanRegistry(zk).register, env.plan.name, env.plan.apps, env.plan.key_prefixes)
            await run_blocking(switch_mode, zk, env.plan.name, "cow", drain_timeout=30)
        n2_path = str(tmp_path / "n2.db")
        locked, release = threading.Event(), threading.Event()

        def hold_n2() -> None:  # N2 busy: the dual write's N2 leg waits, N1's lands
            conn = sqlite3.connect(n2_path, isolation_level=None, timeout=30)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(60)
            conn.execute("ROLLBACK")
            conn.close()

        holder = threading.Thread(target=hold_n2)
        holder.start()
        locked.wait(30)
        host, port, _ = env.slots[0]
        clients = 4  # each blocked in its own dual write: four chances to see the misreading
        workload = Workload(env.app, lambda cid: Endpoint(port=port, address=host), clients=clients, keys=1000,
                            history=env.history, mix={"write": 1.0})
        workload.start()
        proxy = env.fleet.current[0]
        try:
            for _ in range(300):  # until N1 holds every client's first write (their N2 legs wait)
                if len(await env.final_state("n1")) >= clients:
                    break
                await asyncio.sleep(0.05)
            proxy.signal(signal.SIGKILL)
            assert proxy.popen is not None
            await run_blocking(proxy.popen.wait)
            for _ in range(300):  # until each client gave up on its write in flight
                if sum(1 for op in env.history.ops if not op.ok) >= clients:
                    break
                await asyncio.sleep(0.05)
            await workload.stop()
        finally:
            release.set()
            holder.join()
        held = await env.final_state("n1")
        assert len(held) >= clients
        report = check(env.history, held)
        assert report.ok, report.summary()
    finally:
        await env.cleanup()
