"""The proxy's one mode machine: a mode is one object (data route + cache route), adopted in
one place, with one fence, one drain and one acknowledgement.

Responsible for: building each mode (``Mode``: the mode znode's state and the data route;
its cache route is the cache router's composition for the same mode), admitting each
request under the mode in force (``admit`` → ``Admission``), fencing (``fence_reason``),
and adopting the mode the znode names (``offer`` → ``_adopt``): close the gate, mark N2's
cache dirty when entering ``cow``, switch the cache half (quiesce, drain the mirror
queues, invalidate dropped keys), swap the data route and wait until no request of the old
mode still runs (its shielded write-and-journal tasks included), record every journal
entry still held in memory, clear the dirty marker after a clean drain out of ``cow``, and
only then acknowledge the new epoch in the instance's membership znode. An adoption that
fails is retried with backoff until it succeeds; meanwhile requests are refused (503, the
reason), except cache deletes.

Must never: admit a request under a mode the instance is not counted for by
``switch_mode``; acknowledge a mode while a request of the old one can still complete;
refuse or drop a cache delete.

Fencing: why no request admitted under an old mode completes after ``switch_mode`` returned
---------------------------------------------------------------------------------------------
``switch_mode`` sets the mode znode and returns once every *registered* instance (an
ephemeral membership znode in N1's ZooKeeper) acknowledged the new epoch, and every
instance that vanished from that set has had the time of its lease to notice. A live,
registered instance acknowledges only after its drain, so nothing of the old mode runs on
it afterwards. The danger is an instance that is *not* counted: its session expired (the
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
   one ZooKeeper transaction with a check of the mode version the request was admitted
   under, so a request of the old mode cannot add a checked entry after the switch's
   journal check; it gets 503 instead.

Residual window, and why it is harmless: a datastore leg already sent to an engine when
the instance is fenced lands after the check. It carries the request's timestamp, engines
apply last-write-wins, and the client is answered 503 (not acknowledged), so the late leg
is indistinguishable from an unacknowledged write that was slow — it never overwrites a
write acknowledged after it began (that one has a larger timestamp). A cache copy already
sent to N2's memcached likewise lands late; every copy is verified against its source
after it is stored and undone if the source changed (``proxy/cache/mirror.py``), and once
fenced the mirror queues send deletes only. A copy lost with an instance that died in
``cow`` is covered by the durable dirty marker: ``switch_mode`` flushes N2's memcached
before and after the switch to ``proxy`` while a marker of an instance that did not drain
remains, so N2 holds no such value at hand-off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError
from prometheus_client import Counter

from proxy.cache import CacheRoute, CacheRouter
from proxy.control import CACHE_DIRTY_ROOT, LEASES_ROOT, PROXIES_ROOT
from proxy.journal import RepairJournal
from proxy.lease import ZooKeeperLease
from datastore import Engine
from proxy.routes import DataRoute, DualWriteRoute, EngineRoute, ShadowReadRoute
from sync._zk import put
from sync.aio import run_blocking
from sync.mode import MODES, ModeState, ModeWatcher

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
    """Adopts the modes the watcher reports, in order; admits requests under the one in force."""

    def __init__(self, *, instance: str, zk: KazooClient, watcher: ModeWatcher, lease: ZooKeeperLease,
                 cache: CacheRouter, journals: list[RepairJournal], build_data: Callable[[str], DataRoute],
                 admit_wait: float = 10.0) -> None:
        self.instance = instance
        #: this process's run of the instance: a dirty marker of an earlier run (one that died
        #: in cow) is told apart from ours even after a restart under the same name
        self.incarnation = uuid.uuid4().hex[:12]
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
        self._wanted = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        cache.fence = self.cache_fence

    # --- paths ---------------------------------------------------------------------------

    @property
    def member_path(self) -> str:
        return f"{PROXIES_ROOT}/{self.instance}"

    @property
    def lease_path(self) -> str:
        return f"{LEASES_ROOT}/{self.instance}"

    @property
    def dirty_path(self) -> str:
        return f"{CACHE_DIRTY_ROOT}/{self.instance}@{self.incarnation}"

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow(), name=f"mode-machine-{self.instance}")

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

    async def close(self) -> None:
        """Stop following; wait for the requests still running on the mode in force."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.current is not None:
            await self.current.idle.wait()
            await self.current.data.close()

    def deregister(self) -> None:
        """Blocking: remove the membership and the lease record (a clean shutdown)."""
        for path in (self.member_path, self.lease_path):
            try:
                self.zk.delete(path)
            except NoNodeError:
                pass

    # --- the fence -----------------------------------------------------------------------

    def fence_reason(self, generation: int | None = None) -> str | None:
        """Why this instance may not act now, or None. With ``generation`` (a request's):
        also if the session it was admitted on was interrupted since."""
        if not self.lease.valid():
            return f"proxy {self.instance} is fenced: {self.lease.reason()}"
        state, now = self.watcher.view()
        if state is None:
            return (f"proxy {self.instance} is fenced: no ZooKeeper session or no valid mode, so it does not know "
                    "the mode all instances agree on; requests are refused until it does")
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
                self.failure = (f"proxy {self.instance} could not adopt mode {state.mode} (epoch {state.epoch}): "
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
                await old.idle.wait()  # the data drain, shielded write-and-journal tasks included
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
        put(self.zk, self.lease_path, json.dumps({"instance": self.instance, "lease": self.lease.lease}).encode())
        session = self.zk.client_id[0] if self.zk.client_id else None
        doc = json.dumps({"instance": self.instance, "incarnation": self.incarnation, "mode": state.mode,
                          "epoch": state.epoch, "session": f"{session:x}" if session is not None else None}).encode()
        try:
            self.zk.create(self.member_path, doc, ephemeral=True, makepath=True)
            return
        except NodeExistsError:
            pass
        _, stat = self.zk.get(self.member_path)
        if stat.ephemeralOwner == session:
            self.zk.set(self.member_path, doc, version=stat.version)
        else:  # left by an earlier session of this instance name: it must not speak for us
            self.zk.delete(self.member_path, version=stat.version)
            self.zk.create(self.member_path, doc, ephemeral=True, makepath=True)

    def _mark_cache_dirty(self) -> None:
        # Always a write (never "exists, leave it"): switch_mode deletes a marker only at the
        # version it read, so a marker renewed meanwhile by a live instance survives.
        put(self.zk, self.dirty_path, json.dumps({"instance": self.instance, "at": time.time()}).encode())

    def _clear_cache_dirty(self) -> None:
        try:
            self.zk.delete(self.dirty_path)
        except NoNodeError:
            pass

    def describe(self) -> dict[str, object]:
        mode = self.current
        return {"mode": mode.name if mode else None, "epoch": mode.state.epoch if mode else None,
                "routes": {"data": type(mode.data).__name__, "cache": repr(mode.cache)} if mode else None,
                "adoption_failure": self.failure, "lease_age": round(self.lease.age(), 3),
                "fenced": self.fence_reason()}
