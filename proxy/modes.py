"""The proxy's mode machines: a mode is one object (data route + cache route), adopted in
one place, with one fence, one drain and one acknowledgement — per plan.

Modes are per app. Every registered plan (``sync.layout``: ``/nxnw/plans/<plan>``, its apps
and memcache key prefixes fixed at registration) has its own ``ModeMachine``, following
its own mode znode, with its own journals, cache tenant (``CacheRouter.add_tenant``),
epoch and drain; ``Tenants`` maps each app to its plan's machine and every other app to
``Unclaimed`` (``passthrough`` to N1, for good). Several plans over disjoint apps run at
once, each in its own mode. One ephemeral ``Membership`` znode per instance names, per
plan, the mode and epoch the instance acknowledged.

Responsible for: building each mode (``Mode``: the mode znode's state and the data route;
its cache route is the cache router's composition for the same mode), admitting each
request under the mode in force (``admit`` → ``Admission``), fencing (``fence_reason``),
and adopting the mode the znode names (``offer`` → ``_adopt``): close the gate, mark N2's
cache dirty when entering ``cow``, switch the cache half (quiesce, drain the copy
queues, invalidate dropped keys), swap the data route and wait until no request of the old
mode still runs (its shielded write-and-journal tasks included), record every journal
entry still held in memory, clear the dirty marker after a clean drain out of ``cow``, and
only then acknowledge the new epoch in the instance's membership znode. An adoption that
fails is retried with backoff until it succeeds; meanwhile requests are refused (503, the
reason), except cache deletes.

Must never: admit a request under a mode the instance is not counted for by
``switch_mode``; acknowledge a mode while a request of the old one can still complete;
refuse or drop a cache delete.

Fencing: why no request admitted under a plan's old mode completes after ``switch_mode`` returned
--------------------------------------------------------------------------------------------------
Everything below holds per plan: ``switch_mode(zk, plan, mode)`` sets that plan's mode
znode and returns once every *registered* instance (an ephemeral membership znode in N1's
ZooKeeper) acknowledged the plan's new epoch in its membership, and every instance that
vanished from that set has had the time of its lease to notice. A live, registered
instance acknowledges only after its drain of that plan's old mode, so nothing of it runs
there afterwards. An instance that has not learnt of the plan yet names no epoch for it,
so the switch waits for it too; when it learns of the plan, it moves the plan's apps and
key prefixes to the plan's machine and waits for every request ``Unclaimed`` had admitted
(data and cache) before that machine acknowledges its first mode — so no request of a
plan's app served as ``passthrough`` before can complete after the plan's first switch.
``Unclaimed`` admits only while the instance is registered on its current session *and*
has read the plan list since (``Membership.ready``): an instance that was not counted when
a plan was switched never serves that plan's apps as unclaimed. The danger is an instance that is *not* counted: its session expired (the
server ended it, or the process was paused — SIGSTOP — past the session timeout) while it
still believes in the old mode. Three rules close that:

1. **Lease** (``proxy/lease.py``): the instance acts only while its last successful
   ZooKeeper round trip began less than ``lease`` = session timeout / 2 ago. A session
   cannot expire on the server before ``that start + session timeout``, so the instance
   stops before the server can drop it — unless the session is *closed* early (a second
   client with the same session id; an operator). For that case ``switch_mode`` waits a
   lease (the instance's lease record names it) after it sees a registered instance's
   membership vanish, and by then the instance's lease has run out too. Monotonic time
   runs on while the process is stopped, so a resumed instance finds its lease expired
   before it answers anything.
2. **Session generation**: each request notes the mode watcher's session generation when
   it is admitted, and is admitted only under a mode the instance registered on that same
   session. ``Admission.check()`` — before each datastore leg, before the journal record,
   before answering — fails once the session was interrupted, even if the instance has
   reconnected since and reads a newer mode: its registration on the old session is what
   made ``switch_mode`` wait, and it is gone.
3. **Journal transaction** (``proxy/journal.py``): a repair-journal entry is created in
   one ZooKeeper transaction with a check of the version of the plan's mode znode the
   request was admitted under, so a request of the old mode cannot add a checked entry to
   the plan's journal after the switch's journal check; it gets 503 instead.

Residual window, and why it is harmless: a datastore leg already sent to an engine when
the instance is fenced lands after the check. It carries the request's timestamp, engines
apply last-write-wins, and the client is answered 503 (not acknowledged), so the late leg
is indistinguishable from an unacknowledged write that was slow — it never overwrites a
write acknowledged after it began (that one has a larger timestamp). A cache copy already
sent to N2's memcached likewise lands late; every copy is verified against its source
after it is stored and undone if the source changed (``proxy/cache/copies.py``), and once
fenced the copy queues send deletes only. A copy lost with an instance that died in
``cow`` is covered by the durable dirty marker (one per plan and run of an instance):
``switch_mode`` flushes N2's memcached before and after the plan's switch to ``proxy`` while
a marker of an instance that did not drain remains, so N2 holds no such value at hand-off.
The flush is of the whole pool (memcached has no per-prefix flush), other plans' keys
included; that is harmless to them: a flush never makes a value stale, only cold.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent
from prometheus_client import Counter

from proxy.cache import CacheRoute, CacheRouter
from proxy.cache.errors import SwitchError
from proxy.journal import JournalReplayer, RepairJournal
from proxy.lease import ZooKeeperLease
from datastore import Engine
from proxy.routes import DataRoute, DualWriteRoute, EngineRoute, ShadowReadRoute
from sync import layout
from sync._zk import put
from sync.aio import run_blocking, zk_wait_executor
from sync.mode import MODES, ModeState, ModeWatcher
from sync.state import RegisteredPlan, parse_plan

log = logging.getLogger("nxnw.proxy.modes")

ADOPTION_FAILURES = Counter("nxnw_mode_adoption_failures_total", "Mode adoptions that failed and are retried")


def data_route(mode: str, n1: Engine, n2: Engine, to_n2: RepairJournal, to_n1: RepairJournal,
               shadow_rate: float) -> DataRoute:
    """The data half of each mode, as a composition of routes (see proxy/routes.py)."""
    if mode == "passthrough":
        return EngineRoute(n1)
    if mode == "cow":
        dual = DualWriteRoute(n1, n2, to_n2, parallel=True)
        if not shadow_rate:
            return dual
        return ShadowReadRoute(dual, n2, shadow_rate, lambda ref, _n1, _n2: to_n2.record_late([ref], "shadow read divergence"))
    if mode == "proxy":
        return DualWriteRoute(n2, n1, to_n1, parallel=False)
    raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(MODES)}")


class Fenced(RuntimeError):
    """This instance may not act now (lease, session, or a mode it has not adopted); nothing
    of the request reached an engine unless the message says otherwise."""


@dataclass(eq=False)
class Mode:
    """One mode in force on this instance: the znode's state, the data route, the cache
    route (the cache router hands it to every cache operation and counts those in flight),
    and the data requests still running on it (a switch waits for none of either)."""

    state: ModeState
    data: DataRoute
    cache: CacheRoute
    #: the session generation on which this instance's membership counts it for the
    #: *next* switch; requests are admitted only on that session (None: not registered)
    generation: int | None = None
    running: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def name(self) -> str:
        return self.state.mode


class Admission:
    """A request admitted under ``mode`` on session ``generation``; ``release`` when done."""

    __slots__ = ("machine", "mode", "generation", "_released")

    def __init__(self, machine: ModeMachine, mode: Mode, generation: int) -> None:
        self.machine = machine
        self.mode = mode
        self.generation = generation
        self._released = False
        mode.running += 1
        mode.idle.clear()

    @property
    def version(self) -> int:
        return self.mode.state.version

    def check(self) -> None:
        """Raise ``Fenced`` if the instance may no longer act on the mode it was admitted under."""
        reason = self.machine.fence_reason(self.generation)
        if reason is not None:
            raise Fenced(reason)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.mode.running -= 1
            if not self.mode.running:
                self.mode.idle.set()


class ModeMachine:
    """One plan's machine: adopts the modes its watcher reports, in order; admits requests
    of the plan's apps under the one in force."""

    def __init__(self, *, plan: str, membership: Membership, zk: KazooClient, watcher: ModeWatcher,
                 lease: ZooKeeperLease, cache: CacheRouter, journals: list[RepairJournal],
                 build_data: Callable[[str], DataRoute], admit_wait: float = 10.0) -> None:
        self.plan = plan
        self.membership = membership
        self.instance = membership.instance
        self.incarnation = membership.incarnation
        self.zk = zk
        self.watcher = watcher
        self.lease = lease
        self.cache = cache
        self.journals = journals
        self.build_data = build_data
        self.admit_wait = admit_wait
        self.current: Mode | None = None
        #: why the mode the znode names could not be adopted (None: no failure)
        self.failure: str | None = None
        self._latest: ModeState | None = None
        self._clean_cow_exit = False
        #: earlier Mode objects of the mode in force, still draining (``retire``)
        self._retired: list[Mode] = []
        self._wanted = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        cache.fence = self.cache_fence

    @property
    def dirty_path(self) -> str:
        return f"{layout.cache_dirty(self.plan)}/{self.instance}@{self.incarnation}"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"mode-machine-{self.instance}-{self.plan}")

    def offer(self, state: ModeState | None) -> None:
        """The watcher's latest view (on the event loop); None is ignored: the fence covers it."""
        if state is not None:
            self._latest = state
            self._wanted.set()

    async def wait_adopted(self, timeout: float) -> Mode:
        async with asyncio.timeout(timeout):
            while self.current is None or self.current.generation is None:
                await self._wait_changed()
        return self.current

    def retire(self) -> Mode | None:
        """Admit new requests on a fresh Mode of the mode in force (same routes) and return
        the old one, to be waited for: a later plan took some of this plan's apps over
        (``Tenants``). The next adoption waits for it too."""
        old = self.current
        if old is None:
            return None
        self.current = Mode(old.state, old.data, old.cache, generation=old.generation)
        self._retired.append(old)
        return old

    async def close(self) -> None:
        """Stop following; wait for the requests still running on the mode in force."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.current is not None:
            for mode in (*self._retired, self.current):
                await mode.idle.wait()
            await self.current.data.close()

    # --- the fence -----------------------------------------------------------------------

    def fence_reason(self, generation: int | None = None) -> str | None:
        """Why this instance may not act now, or None. With ``generation`` (a request's):
        also if the session it was admitted on was interrupted since."""
        if not self.lease.valid():
            return f"proxy {self.instance} is fenced: {self.lease.reason()}"
        state, now = self.watcher.view()
        if state is None:
            return (f"proxy {self.instance} is fenced for plan {self.plan}: no ZooKeeper session or no valid mode, so "
                    "it does not know the mode all instances agree on; requests are refused until it does")
        if generation is not None and now != generation:
            return (f"proxy {self.instance} is fenced: its ZooKeeper session was interrupted while the request ran, "
                    "so a mode switch may not have waited for it")
        return None

    def cache_fence(self, write: bool) -> str | None:
        """The cache router's fence: the instance's fence, a mode not adopted on this session,
        or a failed adoption (writes only)."""
        reason = self.fence_reason()
        if reason is not None:
            return reason
        _, generation = self.watcher.view()
        mode = self.current
        if mode is None or mode.generation != generation:
            return f"proxy {self.instance} has not adopted the mode on its current ZooKeeper session yet"
        if write and self.failure is not None:
            return self.failure
        return None

    async def admit(self, *, write: bool) -> Admission:
        """Admit a request under the mode in force; ``Fenced`` (503) if the instance may not.

        Waits (up to ``admit_wait``) while a mode is being adopted or the instance has not yet
        registered the mode on its current session.
        """
        deadline = time.monotonic() + self.admit_wait
        while True:
            reason = self.fence_reason()
            if reason is not None:
                raise Fenced(reason)
            state, generation = self.watcher.view()
            mode = self.current
            if mode is not None and mode.generation == generation and (self.failure is None or not write):
                return Admission(self, mode, generation)  # a failed adoption refuses writes only
            if self.failure is not None:
                raise Fenced(self.failure)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Fenced(f"proxy {self.instance} has not adopted mode {state.mode if state else None} on its "
                             f"current ZooKeeper session within {self.admit_wait:g} s")
            try:
                async with asyncio.timeout(remaining):
                    await self._wait_changed()
            except TimeoutError:
                pass

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- adoption ------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = 0.2
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            state = self._latest
            assert state is not None
            try:
                await self._adopt(state)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — reported, refused meanwhile, retried
                ADOPTION_FAILURES.inc()
                self.failure = (f"proxy {self.instance} could not adopt plan {self.plan}'s mode {state.mode} "
                                f"(epoch {state.epoch}): "
                                f"{type(exc).__name__}: {exc}; writes are refused while it retries")
                log.error("%s (retry in %.1f s)", self.failure, backoff)
                self._notify()
                try:
                    await asyncio.wait_for(self._wanted.wait(), backoff)  # a newer mode: adopt that one
                except TimeoutError:
                    self._wanted.set()  # retry the same one
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if self.failure is not None:
                log.info("proxy %s adopted mode %s after failures", self.instance, state.mode)
            self.failure = None
            self._notify()

    async def _adopt(self, state: ModeState) -> None:
        """Every step is safe to repeat: a failed adoption is retried from the top."""
        old = self.current
        if old is None or old.state.version != state.version:
            if state.mode == "cow":
                await run_blocking(self._mark_cache_dirty)  # before anything can be copied to N2
            await self.cache.switch(state.mode)  # the cache drain; raises (old mode kept) if unclean
            # Requests admitted from here on run the new mode. It inherits the old mode's
            # session generation: this instance's registration for the old epoch still makes
            # switch_mode wait for it, so they may run before the acknowledgement.
            new = Mode(state, self.build_data(state.mode), self.cache.route,
                       generation=old.generation if old else None)
            self.current = new
            self._notify()
            if old is not None:
                for mode in (*self._retired, old):
                    await mode.idle.wait()  # the data drain, shielded write-and-journal tasks included
                self._retired.clear()
                await old.data.close()
                self._clean_cow_exit = old.name == "cow" and state.mode != "cow"
        for journal in self.journals:
            await journal.flush_held()
        if self._clean_cow_exit:
            await run_blocking(self._clear_cache_dirty)
            self._clean_cow_exit = False
        await self._acknowledge(self.current)
        log.info("proxy %s in mode %s (epoch %d), acknowledged", self.instance, state.mode, state.epoch)

    async def _acknowledge(self, mode: Mode) -> None:
        _, generation = self.watcher.view()
        if mode.name == "cow":
            await run_blocking(self._mark_cache_dirty)
        await run_blocking(self._register, mode.state)
        if self.watcher.view()[1] == generation:
            mode.generation = generation
        self._notify()

    # --- ZooKeeper writes (blocking; run off the event loop) -------------------------------

    def _register(self, state: ModeState) -> None:
        self.membership.put(self.plan, state)

    def _mark_cache_dirty(self) -> None:
        # Always a write (never "exists, leave it"): switch_mode deletes a marker only at the
        # version it read, so a marker renewed meanwhile by a live instance survives.
        put(self.zk, self.dirty_path, json.dumps({"instance": self.instance, "plan": self.plan,
                                                  "at": time.time()}).encode())

    def _clear_cache_dirty(self) -> None:
        try:
            self.zk.delete(self.dirty_path)
        except NoNodeError:
            pass

    def describe(self) -> dict[str, object]:
        mode = self.current
        return {"plan": self.plan, "mode": mode.name if mode else None, "epoch": mode.state.epoch if mode else None,
                "routes": {"data": type(mode.data).__name__, "cache": repr(mode.cache)} if mode else None,
                "adoption_failure": self.failure, "lease_age": round(self.lease.age(), 3),
                "fenced": self.fence_reason()}


class Membership:
    """The instance's one membership znode (ephemeral) and its lease record.

    The document names, per plan, the mode and epoch this instance acknowledged
    (``layout.proxy_member``); every plan's machine and ``Tenants`` write it whole, under a
    lock (blocking calls, off the event loop). ``generation`` changes on every SUSPENDED or
    LOST of the session; ``ready`` is the generation on which ``Tenants`` wrote the znode and
    then read the plan list: requests of apps no plan names are admitted on it only.
    """

    def __init__(self, zk: KazooClient, instance: str, lease: ZooKeeperLease) -> None:
        self.zk = zk
        self.instance = instance
        self.lease = lease
        #: this process's run of the instance: a dirty marker of an earlier run (one that died
        #: in cow) is told apart from ours even after a restart under the same name
        self.incarnation = uuid.uuid4().hex[:12]
        self.generation = 0
        self.ready: int | None = None
        #: called (on kazoo's thread; must not block) each time the session is CONNECTED
        self.on_connected: Callable[[], None] | None = None
        self._acks: dict[str, dict[str, object]] = {}
        self._lock = threading.Lock()
        zk.add_listener(self._on_session)

    def _on_session(self, state: str) -> None:
        if state == KazooState.CONNECTED:
            if self.on_connected is not None:
                self.on_connected()
        else:
            self.generation += 1  # only this (kazoo's) thread writes it

    def put(self, plan: str | None = None, state: ModeState | None = None) -> None:
        """Blocking: write the lease record and the membership, with ``plan``'s ack updated."""
        with self._lock:
            if plan is not None and state is not None:
                self._acks[plan] = {"mode": state.mode, "epoch": state.epoch}
            put(self.zk, layout.proxy_lease(self.instance),
                json.dumps({"instance": self.instance, "lease": self.lease.lease}).encode())
            session = self.zk.client_id[0] if self.zk.client_id else None
            doc = json.dumps({"instance": self.instance, "incarnation": self.incarnation,
                              "session": f"{session:x}" if session is not None else None,
                              "plans": self._acks}).encode()
            path = layout.proxy_member(self.instance)
            try:
                self.zk.create(path, doc, ephemeral=True, makepath=True)
                return
            except NodeExistsError:
                pass
            _, stat = self.zk.get(path)
            if stat.ephemeralOwner == session:
                self.zk.set(path, doc, version=stat.version)
            else:  # left by an earlier session of this instance name: it must not speak for us
                self.zk.delete(path, version=stat.version)
                self.zk.create(path, doc, ephemeral=True, makepath=True)

    def deregister(self) -> None:
        """Blocking: remove the membership and the lease record (a clean shutdown)."""
        self.zk.remove_listener(self._on_session)
        for path in (layout.proxy_member(self.instance), layout.proxy_lease(self.instance)):
            try:
                self.zk.delete(path)
            except NoNodeError:
                pass


#: The mode of the apps no plan names, for good.
UNCLAIMED_STATE = ModeState("passthrough", 0, 0, 0.0)


class Unclaimed:
    """The apps and memcache keys no plan names: ``passthrough`` to N1, for good.

    No switch ever changes them, but a plan registered later takes some of them over:
    ``retire`` hands out a fresh ``Mode`` so that the old one's requests can be waited for
    (``Tenants``). Fenced by the lease, and until the instance is registered on its current
    session *and* has read the plan list since (``Membership.ready``): otherwise a plan
    switched while this instance was not counted could have apps served here in the wrong
    mode. Cache deletes are never refused (the router's rule).
    """

    plan: str | None = None
    failure: str | None = None

    def __init__(self, *, membership: Membership, lease: ZooKeeperLease, n1: Engine, cache: CacheRouter,
                 admit_wait: float = 10.0) -> None:
        self.membership = membership
        self.instance = membership.instance
        self.lease = lease
        self.n1 = n1
        self.cache = cache
        self.admit_wait = admit_wait
        self.current = self._mode()
        cache.fence = self.cache_fence

    def _mode(self) -> Mode:
        return Mode(UNCLAIMED_STATE, EngineRoute(self.n1), self.cache.route)

    def retire(self) -> Mode:
        """Admit new requests on a fresh Mode; the old one (returned) drains."""
        old, self.current = self.current, self._mode()
        return old

    def fence_reason(self, generation: int | None = None) -> str | None:
        if not self.lease.valid():
            return f"proxy {self.instance} is fenced: {self.lease.reason()}"
        now = self.membership.generation
        if self.membership.ready != now:
            return (f"proxy {self.instance} has not registered on its current ZooKeeper session and read the plans "
                    "since; requests are refused until it has")
        if generation is not None and generation != now:
            return (f"proxy {self.instance} is fenced: its ZooKeeper session was interrupted while the request ran, "
                    "so a plan's mode switch may not have waited for it")
        return None

    def cache_fence(self, write: bool) -> str | None:
        return self.fence_reason()

    async def admit(self, *, write: bool) -> Admission:
        deadline = time.monotonic() + self.admit_wait
        while (reason := self.fence_reason()) is not None:
            if time.monotonic() > deadline or not self.lease.valid():
                raise Fenced(reason)
            await asyncio.sleep(0.05)
        return Admission(self, self.current, self.membership.generation)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        return {"mode": "passthrough", "fenced": self.fence_reason()}


class Tenants:
    """Which mode machine serves each app: one ``ModeMachine`` per registered plan (its
    apps, and its memcache key prefixes through a tenant of the cache router), and
    ``Unclaimed`` for every other app; follows ``layout.PLANS``.

    A plan found (at start, on a change of ``plans/``'s children, after every reconnect):
    its journals and their replayers, its watcher and machine are built; its apps and key
    prefixes move to it (the latest registered plan naming an app wins: an app is claimed
    by one live plan at a time, and a finished plan's apps stay with it until another
    plan claims them); the requests admitted before for those apps (by ``Unclaimed``, or by
    the finished plan) are waited for, data and cache; only then does the machine adopt
    and acknowledge the plan's mode. Until that acknowledgement ``switch_mode`` for the plan
    waits for this instance, and the plan's requests wait too (data: ``admit``; cache: the
    tenant's first gate), bounded by ``admit_wait``.

    On session loss: the membership is written again and the plan list read again before
    ``Unclaimed`` serves (``Membership.ready``); each plan's machine re-acknowledges its own
    mode through its watcher. Plans are never forgotten while the process runs.
    """

    def __init__(self, *, zk: KazooClient, membership: Membership, lease: ZooKeeperLease, cache: CacheRouter,
                 n1: Engine, n2: Engine, shadow_rate: float = 0.0, journal_bound: int | None = None,
                 admit_wait: float = 10.0) -> None:
        self.zk = zk
        self.membership = membership
        self.lease = lease
        self.cache = cache
        self.n1 = n1
        self.n2 = n2
        self.shadow_rate = shadow_rate
        self.journal_bound = journal_bound
        self.admit_wait = admit_wait
        self.unclaimed = Unclaimed(membership=membership, lease=lease, n1=n1, cache=cache, admit_wait=admit_wait)
        self.machines: dict[str, ModeMachine] = {}
        #: app -> the plan whose mode it follows
        self.owner: dict[str, str] = {}
        self._replayers: list[JournalReplayer] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def for_app(self, app: str) -> ModeMachine | Unclaimed:
        plan = self.owner.get(app)
        return self.unclaimed if plan is None else self.machines[plan]

    @property
    def journals(self) -> list[RepairJournal]:
        return [journal for machine in self.machines.values() for journal in machine.journals]

    async def start(self) -> None:
        """Register, find the plans, and follow them from now on."""
        self._loop = asyncio.get_running_loop()
        self.membership.on_connected = self._wake_soon
        await self._sync()
        self._task = asyncio.create_task(self._follow(), name=f"tenants-{self.membership.instance}")

    async def wait_adopted(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            for machine in list(self.machines.values()):
                await machine.wait_adopted(timeout)

    def _wake_soon(self, *_: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_plans(self, event: WatchedEvent) -> None:
        if event.type != EventType.NONE:  # NONE: the connection dropped; on_connected follows
            self._wake_soon()

    async def _follow(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — Unclaimed stays fenced; tried again
                log.warning("proxy %s could not read the plans (%s: %s); retrying", self.membership.instance,
                            type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                self._wake.set()

    def _read_plans(self) -> list[tuple[int, RegisteredPlan]]:
        """Blocking: every plan not followed yet, with its creation zxid (oldest first)."""
        try:
            names = self.zk.get_children(layout.PLANS, watch=self._on_plans)
        except NoNodeError:
            if self.zk.exists(layout.PLANS, watch=self._on_plans) is not None:
                self._wake_soon()  # created between the two reads
            return []
        found = []
        for name in names:
            if name in self.machines:
                continue
            data, stat = self.zk.get(layout.plan(name))
            found.append((stat.czxid, parse_plan(name, data)))
        return sorted(found, key=lambda item: item[0])

    async def _sync(self) -> None:
        generation = self.membership.generation
        await run_blocking(self.membership.put)
        for _, plan in await run_blocking(self._read_plans):
            await self._add(plan)
        if self.membership.generation == generation:
            self.membership.ready = generation

    async def _add(self, plan: RegisteredPlan) -> None:
        bound = {} if self.journal_bound is None else {"bound": self.journal_bound}
        to_n2 = await run_blocking(RepairJournal, self.zk, "n2", plan=plan.name, **bound)
        to_n1 = await run_blocking(RepairJournal, self.zk, "n1", plan=plan.name, **bound)
        cache = self.cache.add_tenant([prefix.encode() for prefix in plan.key_prefixes.values()])
        watcher = ModeWatcher(self.zk, path=layout.mode(plan.name))
        try:  # until the watcher's first read, the plan's apps would be refused rather than wait
            await run_blocking(watcher.wait_until, lambda state: state is not None, self.admit_wait,
                               executor=zk_wait_executor())
        except TimeoutError as exc:
            log.warning("proxy %s: plan %s's mode is not readable yet (%s); its apps are refused until it is",
                        self.membership.instance, plan.name, exc)
        machine = ModeMachine(plan=plan.name, membership=self.membership, zk=self.zk, watcher=watcher,
                              lease=self.lease, cache=cache, journals=[to_n2, to_n1],
                              build_data=functools.partial(data_route, n1=self.n1, n2=self.n2, to_n2=to_n2,
                                                           to_n1=to_n1, shadow_rate=self.shadow_rate),
                              admit_wait=self.admit_wait)
        previous = sorted({self.owner[app] for app in plan.apps if app in self.owner})
        self.machines[plan.name] = machine
        for app in plan.apps:
            self.owner[app] = plan.name
        # Data requests of the plan's apps admitted before it was known (as unclaimed, or by
        # an earlier, finished plan that named them), then cache requests of its keys.
        retired = [self.unclaimed.retire(), *(self.machines[name].retire() for name in previous)]
        for mode in retired:
            if mode is not None:
                await mode.idle.wait()
        for cache_router in (self.cache, *(self.machines[name].cache for name in previous)):
            while True:  # the plan is followed already: its machine must start, after the drain
                try:
                    await cache_router.settle()
                    break
                except SwitchError as exc:
                    log.warning("proxy %s: cache requests of plan %s's keys still run (%s); waiting again",
                                self.membership.instance, plan.name, exc)
        loop = asyncio.get_running_loop()
        machine.start()
        watcher.add_callback(lambda state: loop.call_soon_threadsafe(machine.offer, state))
        machine.offer(watcher.current)  # read before the callback was added
        try:  # the tenant's cache requests wait (gate closed) rather than be refused meanwhile
            await machine.wait_adopted(self.admit_wait)
        except TimeoutError:
            log.warning("proxy %s has not adopted plan %s's mode within %g s: its apps are refused until it has",
                        self.membership.instance, plan.name, self.admit_wait)
        finally:
            cache.open()
        self._replayers += [JournalReplayer(to_n2, self.n1, self.n2), JournalReplayer(to_n1, self.n2, self.n1)]
        for replayer in self._replayers[-2:]:
            replayer.start()
        log.info("proxy %s follows plan %s: apps %s, memcache key prefixes %s", self.membership.instance, plan.name,
                 ", ".join(plan.apps), plan.key_prefixes)

    async def close(self) -> None:
        """Stop following; wait for every plan's requests; stop the replayers and watchers."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for machine in self.machines.values():
            await machine.close()
        await self.unclaimed.current.idle.wait()
        for replayer in self._replayers:
            await replayer.stop()
        for machine in self.machines.values():
            await run_blocking(machine.watcher.close)

    def describe(self) -> dict[str, object]:
        return {"plans": {name: machine.describe() for name, machine in sorted(self.machines.items())},
                "unclaimed": self.unclaimed.describe(), "owners": dict(sorted(self.owner.items())),
                "lease_age": round(self.lease.age(), 3)}
