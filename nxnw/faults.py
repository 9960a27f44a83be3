"""Fault injectors for ``nxnw demo --fault NAME --in PHASE`` and ``make faults``.

Each fault is one small class: a name, one line saying what it does, ``applies`` (why it
cannot run against a pair of engines, or None) and ``inject``, which does the harm, waits
until the harm is real (a session is gone, a service no longer answers), undoes it where
the fault says so, and returns only once the system has what it needs to carry on (a
replacement proxy answers, the engine answers again). Every step is printed with the
fault's name, so a demo's output says what was done and when.

A fault acts only on what the demo run owns — its proxy processes, its own N2 memcached,
its orchestrator child, its sqlite files — with one exception the campaign needs: the
``n2-engine-down`` fault stops the shared Cassandra or HBase service and always starts
it again (waiting until it answers), even when the run fails.

What a fault never does: touch data (the checker must find every anomaly the system
makes, and only those), or sleep in place of a condition, except for the length of an
outage, which is the fault itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from kazoo.client import KazooClient

from nxnw import services
from nxnw.fleet import MemcachedProcess, ProxyFleet
from nxnw.partition import Partition
from nxnw.zk import zk_session
from sync import layout
from sync.aio import io_executor, run_blocking

#: The phases a fault can be injected in, in the orchestrator's order.
FAULT_PHASES = ("cow", "snapshot+load", "verify", "proxy", "handoff")

#: How long an outage (N2's engine, N2's memcached) lasts before the service is back.
OUTAGE_SECONDS = 10.0
#: How long clients give up early during ``client-timeout``, and the timeouts they use in
#: turn (a second each): a spread, so that some give up before the proxy has the request,
#: some between its dual write's legs, some while it answers.
CLIENT_TIMEOUT_WINDOW = 8.0
CLIENT_TIMEOUTS = (0.002, 0.005, 0.010, 0.020)
#: How many times a stopped shared service is started before the fault gives up.
SERVICE_STARTS = 3
#: Deadline for a paused or expired instance to lose its ZooKeeper membership.
SESSION_LOSS_DEADLINE = 60.0


class FaultNotApplicable(RuntimeError):
    """The fault cannot be injected into this run; the message says why."""


@dataclass
class FaultTarget:
    """What a fault may act on: the demo run's own processes and settings."""

    fleet: ProxyFleet
    memcached_n2: MemcachedProcess
    source: str
    target: str
    n1_zookeeper: str
    n2_engine_url: str
    #: the proxy slot most clients used lately (the instance whose loss hurts most)
    busiest_slot: Callable[[], int]
    #: sets the clients' timeout (seconds) for the requests they start from now on
    set_client_timeout: Callable[[float | None], None]
    #: SIGKILLs the orchestrator child; the demo starts it again
    kill_orchestrator: Callable[[], Awaitable[str]]
    say: Callable[[str], None]
    #: each slot's path to N1's ZooKeeper, when the run was set up to partition them
    zk_partitions: list[Partition] = field(default_factory=list)


class Fault(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    #: injected the moment the migration reaches the phase, while the orchestrator works
    #: on it; otherwise once the phase's tasks are done (see nxnw/demo.py's driver)
    while_running: ClassVar[bool] = False

    def applies(self, source: str, target: str) -> str | None:
        """None when the fault can run against this pair of engines, else the reason."""
        return None

    @abstractmethod
    async def inject(self, t: FaultTarget, phase: str) -> None:
        """Do the harm (and undo it, where the fault says so); return once the run can go on."""

    def say(self, t: FaultTarget, phase: str, text: str) -> None:
        t.say(f"fault {self.name} in {phase}: {text}")


async def _member_session(zookeeper: str, instance: str) -> int | None:
    """The ZooKeeper session that holds ``instance``'s ephemeral membership, or None."""
    async with zk_session(zookeeper, "N1's") as zk:
        stat = await run_blocking(zk.exists, layout.proxy_member(instance))
    return None if stat is None else stat.ephemeralOwner


async def _wait_session_gone(zookeeper: str, instance: str, session: int | None) -> float:
    """Wait until ``session`` no longer holds ``instance``'s membership; seconds waited."""
    started = time.monotonic()
    async with zk_session(zookeeper, "N1's") as zk:
        while True:
            stat = await run_blocking(zk.exists, layout.proxy_member(instance))
            if stat is None or stat.ephemeralOwner != session:
                return time.monotonic() - started
            if time.monotonic() - started > SESSION_LOSS_DEADLINE:
                raise TimeoutError(f"proxy {instance}'s ZooKeeper session {stat.ephemeralOwner:#x} still holds its "
                                   f"membership after {SESSION_LOSS_DEADLINE:.0f} s")
            await asyncio.sleep(0.25)


class KillProxy(Fault):
    name = "kill-proxy"
    summary = "SIGKILL the busiest proxy instance, then start a replacement in its slot"

    async def inject(self, t: FaultTarget, phase: str) -> None:
        slot = t.busiest_slot()
        victim = t.fleet.current[slot]
        victim.signal(signal.SIGKILL)
        assert victim.popen is not None
        await run_blocking(victim.popen.wait, executor=io_executor())
        self.say(t, phase, f"killed proxy {victim.instance} (pid {victim.pid}) with SIGKILL")
        new = await t.fleet.replace(slot)
        self.say(t, phase, f"replacement proxy {new.instance} serves {new.url}")


class PauseProxy(Fault):
    name = "pause-proxy"
    summary = "SIGSTOP the busiest proxy past its ZooKeeper session timeout, then SIGCONT"

    async def inject(self, t: FaultTarget, phase: str) -> None:
        victim = t.fleet.current[t.busiest_slot()]
        session = await _member_session(t.n1_zookeeper, victim.instance)
        victim.signal(signal.SIGSTOP)
        self.say(t, phase, f"paused proxy {victim.instance} (pid {victim.pid}) with SIGSTOP")
        try:
            waited = await _wait_session_gone(t.n1_zookeeper, victim.instance, session)
            self.say(t, phase, f"its ZooKeeper session expired after {waited:.1f} s")
        finally:
            victim.signal(signal.SIGCONT)
        self.say(t, phase, f"resumed proxy {victim.instance} with SIGCONT")
        await victim.wait_ready()
        self.say(t, phase, f"proxy {victim.instance} serves again")


class ExpireSession(Fault):
    name = "expire-session"
    summary = "expire the busiest proxy's ZooKeeper session (a second client with its id and password)"

    async def inject(self, t: FaultTarget, phase: str) -> None:
        victim = t.fleet.current[t.busiest_slot()]
        state = await victim.admin_state()
        session = state.get("zookeeper_session") or {}
        if "id" not in session or "password" not in session:
            raise FaultNotApplicable(f"proxy {victim.instance} does not show its ZooKeeper session "
                                     "(id and password) in /admin/state")
        session_id, password = int(session["id"], 16), bytes.fromhex(session["password"])
        hosts = t.n1_zookeeper.split("/", 1)[0]
        intruder = KazooClient(hosts=hosts, client_id=(session_id, password), timeout=5)
        await run_blocking(intruder.start, 15)
        try:
            # kazoo quietly opens a new session when the server refuses the one asked for.
            attached = intruder.client_id is not None and intruder.client_id[0] == session_id
            if not attached:
                raise RuntimeError(f"could not attach to proxy {victim.instance}'s session {session_id:#x}: "
                                   "the server refused it (already expired?)")
        finally:
            # Closing the intruder closes the session on the server: the proxy's session is gone.
            await run_blocking(intruder.stop)
            await run_blocking(intruder.close)
        self.say(t, phase, f"expired proxy {victim.instance}'s ZooKeeper session {session_id:#x}")
        await _wait_session_gone(t.n1_zookeeper, victim.instance, session_id)
        await victim.wait_ready()
        self.say(t, phase, f"proxy {victim.instance} serves again")


class PartitionZookeeper(Fault):
    name = "partition-zookeeper"
    summary = ("cut the busiest proxy off from N1's ZooKeeper (its connection dark, not closed) until its session "
               "expired and ~10 s passed, while it goes on serving clients and reaching the engines; then heal")

    async def inject(self, t: FaultTarget, phase: str) -> None:
        if not t.zk_partitions:
            raise FaultNotApplicable("the run's proxies do not reach N1's ZooKeeper through a partition relay")
        slot = t.busiest_slot()
        victim, partition = t.fleet.current[slot], t.zk_partitions[slot]
        session = await _member_session(t.n1_zookeeper, victim.instance)
        started = time.monotonic()
        partition.cut()
        self.say(t, phase, f"cut proxy {victim.instance} off from N1's ZooKeeper")
        try:
            waited = await _wait_session_gone(t.n1_zookeeper, victim.instance, session)
            self.say(t, phase, f"its ZooKeeper session expired after {waited:.1f} s; the proxy still runs")
            await asyncio.sleep(max(0.0, started + OUTAGE_SECONDS - time.monotonic()))
        finally:
            partition.heal()
        self.say(t, phase, f"healed the partition after {time.monotonic() - started:.1f} s")
        await victim.wait_ready()
        self.say(t, phase, f"proxy {victim.instance} serves again")


class N2EngineDown(Fault):
    name = "n2-engine-down"
    summary = ("N2's engine down ~10 s, then back (Cassandra/HBase: the service stopped and started; "
               "sqlite: N2's file write-locked longer than the engine's busy timeout)")

    def applies(self, source: str, target: str) -> str | None:
        if target != "sqlite" and source == target:
            return f"N1 and N2 share one {target} service here; stopping N2's would stop N1's too"
        return None

    async def inject(self, t: FaultTarget, phase: str) -> None:
        if t.target == "sqlite":
            await self._lock_sqlite(t, phase)
        else:
            await self._stop_service(t, phase)

    async def _lock_sqlite(self, t: FaultTarget, phase: str) -> None:
        path = os.path.normpath(urlsplit(t.n2_engine_url).path)
        hold = OUTAGE_SECONDS + 5.0  # the engine waits 10 s on a busy file; hold it longer

        def hold_lock() -> None:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                t.say(f"fault {self.name} in {phase}: N2's sqlite file {path} write-locked for {hold:.0f} s")
                time.sleep(hold)
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        await run_blocking(hold_lock, executor=io_executor())
        self.say(t, phase, "N2's sqlite file unlocked")

    async def _stop_service(self, t: FaultTarget, phase: str) -> None:
        name = t.target
        await run_blocking(services.down, [name], executor=io_executor())
        self.say(t, phase, f"stopped N2's {name}")
        try:
            await asyncio.sleep(OUTAGE_SECONDS)
        finally:
            await self._bring_back(t, phase, name)

    async def _bring_back(self, t: FaultTarget, phase: str, name: str) -> None:
        """Start the shared service again, retrying: other people's tests need it back.

        A first start after a stop can miss its deadline (HBase waits for the stopped
        region server's ZooKeeper session to expire); ``services.up`` kills what it started,
        so a retry starts clean."""
        for attempt in range(1, SERVICE_STARTS + 1):
            try:
                took = await run_blocking(services.up, [name], executor=io_executor())
            except services.ServicesDown as exc:
                self.say(t, phase, f"{name} did not come back (start {attempt} of {SERVICE_STARTS}): "
                         f"{str(exc).splitlines()[0]}")
                if attempt == SERVICE_STARTS:
                    raise
                continue
            self.say(t, phase, f"{name} answers again (start took {took[name]:.1f} s)")
            return


class N2MemcachedDown(Fault):
    name = "n2-memcached-down"
    summary = "N2's memcached (the run's own) killed, ~10 s down, started again empty on its port"

    async def inject(self, t: FaultTarget, phase: str) -> None:
        await t.memcached_n2.stop()
        self.say(t, phase, f"killed N2's memcached on {t.memcached_n2.address}")
        try:
            await asyncio.sleep(OUTAGE_SECONDS)
        finally:
            await t.memcached_n2.start()
        self.say(t, phase, "N2's memcached answers again (empty)")


class ClientTimeout(Fault):
    name = "client-timeout"
    summary = "for ~8 s clients give up on their requests after 2 to 20 ms, mid-write"

    async def inject(self, t: FaultTarget, phase: str) -> None:
        self.say(t, phase, "clients time out after " + ", ".join(f"{s * 1000:.0f}" for s in CLIENT_TIMEOUTS)
                 + " ms in turn")
        started = time.monotonic()
        try:
            for n in range(int(CLIENT_TIMEOUT_WINDOW)):
                t.set_client_timeout(CLIENT_TIMEOUTS[n % len(CLIENT_TIMEOUTS)])
                await asyncio.sleep(max(0.0, started + n + 1 - time.monotonic()))
        finally:
            t.set_client_timeout(None)
        self.say(t, phase, "clients wait as long as usual again")


class KillOrchestrator(Fault):
    name = "kill-orchestrator"
    summary = "SIGKILL the orchestrator (nxnw migrate) while it works on the phase; it is started again and resumes"
    while_running = True

    async def inject(self, t: FaultTarget, phase: str) -> None:
        self.say(t, phase, await t.kill_orchestrator())


FAULTS: dict[str, Fault] = {f.name: f for f in (KillProxy(), PauseProxy(), ExpireSession(), PartitionZookeeper(),
                                                N2EngineDown(), N2MemcachedDown(), ClientTimeout(),
                                                KillOrchestrator())}


def parse_fault(name: str, phase: str) -> tuple[Fault, str]:
    """``(fault, phase)`` for ``--fault NAME --in PHASE``; ValueError naming what is wrong."""
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; the faults are: {', '.join(FAULTS)}")
    if phase not in FAULT_PHASES:
        raise ValueError(f"unknown phase {phase!r} for fault {name}; faults go in: {', '.join(FAULT_PHASES)}")
    return FAULTS[name], phase
