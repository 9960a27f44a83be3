"""The cache router: which route serves each key and each mode, fencing, and the safe mode switch.

Keys and plans: a proxy's router is the cache half of every app. Each registered plan has
a *tenant* router of its own (``add_tenant``: its own mode routes, copy queues, switch
lock and fence, on the shared memcached pools) that follows that plan's mode; a key
belongs to the plan whose configured key prefix it starts with (the plan's
``key_prefixes``, ``"<app>:"`` by default; the longest matching prefix wins), and
``route_for(key)`` hands it that tenant's route. A key no plan's prefix matches is served
by the top router itself, which stays in ``passthrough`` (N1) for good.

Responsible for: owning the two memcached pools (N1, N2: each one or more servers, keys
spread by ketama — ``pool.py``), the two copy queues
(N1→N2 for ``cow``, N2→N1 for ``proxy``), the three mode routes, and ``switch(mode)``,
which changes the route only after every asynchronous copy of the old mode has landed or
its key has been invalidated on the side it was meant for (DESIGN invariant 5).

Must never: serve a request of the new mode while a request of the old mode still runs or
a copy of the old mode can still land; serve anything but a delete while fenced.

Fencing: ``fence(write)`` (the proxy's mode machine, ``proxy/modes.py``) returns the
reason this instance may not serve now, or None. Every operation asks it as it starts:
reads and writes are refused (``CacheFencedError`` with the reason) while it names one;
deletes are never refused — removing a key from a cache can never make it stale — and go
to the sides the current mode names (the copied delete included). While fenced, the
copy queues copy no values either: a queued copy becomes a delete on its destination.

A switch, step by step (under one lock; requests arriving meanwhile wait, bounded):
1. close the gate: new requests wait for the switch to end;
2. wait until no request runs on the old route (bounded: each request has the client's
   timeout), so no new copy can be queued;
3. drain both copy queues (bounded by ``drain_timeout``); jobs still queued then are not
   run and their keys join ``dropped``;
4. delete on each queue's destination every key in its ``dropped`` set — so N2 never
   serves a value N1 has since overwritten or deleted, and after a rollback N1 never
   serves one N2 has;
5. swap the route object and open the gate. Requests that waited, and callers still
   holding the old route object, are served by the new route.
If step 2, 3 or 4 fails, the switch raises ``SwitchError`` and the old mode stays.

``flush_all(delay)`` runs under the same lock and gate: no request runs while it does. It
flushes the side the mode reads first (N1 in ``passthrough`` and ``cow``, N2 in ``proxy``),
then waits for the copy queue toward the other side to run every copy queued before
(the barrier: a copy of a pre-flush value can no longer land after the flush), then
flushes the other side (none in ``passthrough``, which writes only N1). A copy of a value
written after the first flush that lands before the second is flushed with it: lost
warmth, never a stale value.

Not guaranteed: that N2 starts ``cow`` empty of this deployment's keys — a value left on
N2 by an earlier ``cow`` period followed by ``passthrough`` (no copies) would survive a
fill's ``add``; the orchestrator flushes N2 before ``cow`` begins. That other proxy
instances have finished their own switch — each instance drains its own queues; the
orchestrator waits for every instance to acknowledge the mode. Surviving a crash: the
queues and ``dropped`` live in memory; the mode machine keeps a durable "cow cache dirty"
marker for that, and ``switch_mode`` flushes N2 when an instance died in ``cow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from proxy.cache import metrics
from proxy.cache.client import Item, Outcome, StoreMode, StoreReply
from proxy.cache.errors import CacheFencedError, CacheOutcomeUnknown, SwitchError
from proxy.cache.copies import BeforeFill, CopyQueue
from proxy.cache.pool import MemcachePool, ServerSpec, parse_servers
from proxy.cache.routes import METRIC_OP, CacheRoute, CopyWritesRoute, MemcachedRoute, WarmUpRoute
from sync.mode import MODES

#: ``fence(write)``: why this instance may not serve a read (write False) or a write now, or None.
Fence = Callable[[bool], "str | None"]


def never_fenced(write: bool) -> str | None:
    """The fence of a router used on its own (tests, benchmarks): always open."""
    return None

log = logging.getLogger("nxnw.proxy.cache.router")


#: one server as ``(host, port)``, a pool spec ``"h1:p[:weight],h2:p[:weight],…"``, or
#: the servers of a pool already parsed
Address = tuple[str, int] | str | list[ServerSpec]


def _servers(addr: Address) -> list[ServerSpec]:
    if isinstance(addr, str):
        return parse_servers(addr)
    if isinstance(addr, list):
        return list(addr)
    return [ServerSpec(addr[0], int(addr[1]))]


class ModeRoute(CacheRoute):
    """The route the router hands out for one mode: the mode's composition, plus the
    router's rules for every operation.

    Every operation: if a switch is under way, or this mode is no longer current, wait for
    the switch and hand the operation to the current mode's route. Reads (get/gets/
    meta_get) and writes (everything else but deletes) raise ``CacheFencedError`` with the
    fence's reason, before they start and again before they answer; deletes always go through. Requests in flight are counted (a switch
    waits for zero) and timed (latency metric).
    """

    def __init__(self, router: CacheRouter, mode: str, inner: CacheRoute) -> None:
        self.mode = mode
        self.inner = inner
        self.retired = True
        self.inflight = 0
        self._router = router
        self._idle: asyncio.Future[None] | None = None
        self._latency = {op: metrics.LATENCY.labels(mode, op).observe
                         for op in ("get", "gat", "store", "delete", "arith", "touch")}
        self._forwards = inner.forwards

    def __repr__(self) -> str:
        return f"ModeRoute({self.mode}: {self.inner!r})"

    async def _call(self, op: str, write: bool | None, name: str, *args):
        """``write``: True for a write, False for a read, None for a delete (never fenced)."""
        router = self._router
        if router._gate is not None or self.retired:
            current = await router._after_switch()
            return await getattr(current, name)(*args)
        if write is not None and (reason := router.fence(write)) is not None:
            raise CacheFencedError(f"cache {op} refused: {reason}; deletes are still served")
        self.inflight += 1
        start = time.perf_counter()
        try:
            result = await getattr(self.inner, name)(*args)
            if write is not None and (reason := router.fence(write)) is not None:
                # fenced while it ran: the answer may belong to a mode the fleet has left
                if write:
                    raise CacheOutcomeUnknown(f"cache {op} not answered: {reason}; it may have been applied")
                raise CacheFencedError(f"cache {op} not answered: {reason}")
            return result
        finally:
            self.inflight -= 1
            self._latency[op](time.perf_counter() - start)
            if not self.inflight and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    def enter(self, write: bool | None) -> bool:
        """The listener's callback path (no coroutine per request) asks before relaying:
        True, and the request counts as in flight, when this route is current, no switch
        runs and the fence is open; False: take the awaitable path, which waits for the
        switch or refuses with the reason. ``write`` as in ``_call``."""
        router = self._router
        if router._gate is not None or self.retired or (write is not None and router.fence(write) is not None):
            return False
        self.inflight += 1
        return True

    def leave(self, write: bool | None) -> str | None:
        """A request ``enter`` admitted has its reply (or failed): no longer in flight (the
        caller times it); the fence's reason if it closed meanwhile (the reply must not be given)."""
        self.inflight -= 1
        if not self.inflight and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        return None if write is None else self._router.fence(write)

    async def quiesce(self, timeout: float) -> None:
        """Return once no operation runs on this route; SwitchError after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while self.inflight:
                    self._idle = asyncio.get_running_loop().create_future()
                    await self._idle
        except TimeoutError:
            raise SwitchError(f"{self.inflight} cache requests still running in mode {self.mode} "
                              f"after {timeout}s") from None
        finally:
            self._idle = None

    async def forward(self, op: str, key: bytes, request: bytes, reply_kind: int) -> bytes | None:
        """The fast path: relay a text request untouched, under the same rules as every
        operation; None when this mode does not relay that request (then the caller takes
        the parsed path) — also when a switch hands it to a mode that does not."""
        if op not in self._forwards:
            return None
        return await self._call(METRIC_OP[op], None if op == "delete" else op != "get", "forward", op, key, request,
                                reply_kind)

    async def meta_get(self, key: bytes) -> Item | None:
        return await self._call("get", False, "meta_get", key)

    async def gat(self, key: bytes, exptime: int) -> Item | None:
        return await self._call("gat", True, "gat", key, exptime)

    async def store(self, mode: StoreMode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                    cas: int | None = None) -> StoreReply:
        return await self._call("store", True, "store", mode, key, value, flags, exptime, cas)

    async def delete_item(self, key: bytes, cas: int | None = None) -> Outcome:
        return await self._call("delete", None, "delete_item", key, cas)

    async def arith(self, key: bytes, delta: int, incr: bool = True) -> int | None:
        return await self._call("arith", True, "arith", key, delta, incr)

    async def touch(self, key: bytes, exptime: int) -> bool:
        return await self._call("touch", True, "touch", key, exptime)


class CacheRouter:
    """The cache half of one proxy instance.

    ``n1``/``n2``: ``(host, port)`` of each deployment's memcached, or a pool spec
    (``"h1:p,h2:p:2"``, see ``pool.py``); a server of a pool is marked down after
    ``fail_limit`` consecutive failures and tried again after ``retry_after`` s.
    ``copy_queue_size`` bounds each copy queue; ``drain_timeout`` bounds step 3 of a
    switch; ``timeout`` is every memcached request's deadline. ``before_fill`` is the COR
    test seam (see ``CopyQueue``). ``fence`` is asked by every operation and every copy
    (see the module docstring); it may be replaced before ``start``.
    """

    def __init__(self, n1: Address, n2: Address, *, copy_queue_size: int = 10000, mode: str = "passthrough",
                 copy_workers: int = 4, drain_timeout: float = 5.0, timeout: float = 1.0,
                 max_connections: int = 16, before_fill: BeforeFill | None = None, instance: str = "",
                 fence: Fence = never_fenced, fail_limit: int = 3, retry_after: float = 2.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; the modes are {', '.join(MODES)}")
        self.n1_servers = _servers(n1)
        self.n2_servers = _servers(n2)
        self.instance = instance
        self.drain_timeout = drain_timeout
        self._initial_mode = mode
        self._options = dict(copy_queue_size=copy_queue_size, copy_workers=copy_workers, timeout=timeout,
                             max_connections=max_connections, before_fill=before_fill, fail_limit=fail_limit,
                             retry_after=retry_after)
        self.fence = fence
        self._gate: asyncio.Future[None] | None = None
        self._switch_lock = asyncio.Lock()
        self._route: ModeRoute | None = None
        self._routes: dict[str, ModeRoute] = {}
        #: (prefix, tenant router), longest prefix first
        self._tenants: list[tuple[bytes, CacheRouter]] = []
        self._children: list[CacheRouter] = []
        #: a tenant's gate until its plan's first mode is adopted (``add_tenant``, ``open``)
        self._first_gate: asyncio.Future[None] | None = None

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        o = self._options
        limits = dict(timeout=o["timeout"], max_connections=o["max_connections"], fail_limit=o["fail_limit"],
                      retry_after=o["retry_after"])
        self.n1 = MemcachePool(self.n1_servers, side="n1", **limits)
        self.n2 = MemcachePool(self.n2_servers, side="n2", **limits)
        self._start_routes()

    def _start_routes(self) -> None:
        o = self._options
        copying = self._copying
        self.to_n2 = CopyQueue(self.n1, self.n2, maxsize=o["copy_queue_size"], workers=o["copy_workers"],
                               before_fill=o["before_fill"], may_copy=copying)
        self.to_n1 = CopyQueue(self.n2, self.n1, maxsize=o["copy_queue_size"], workers=o["copy_workers"],
                               may_copy=copying)
        self.to_n2.start()
        self.to_n1.start()
        self._routes = {
            "passthrough": ModeRoute(self, "passthrough", MemcachedRoute(self.n1, mode="passthrough")),
            "cow": ModeRoute(self, "cow", WarmUpRoute(MemcachedRoute(self.n1, mode="cow"),
                                                      MemcachedRoute(self.n2, mode="cow"), self.to_n2)),
            "proxy": ModeRoute(self, "proxy", CopyWritesRoute(MemcachedRoute(self.n2, mode="proxy"), self.to_n1)),
        }
        self._route = self._routes[self._initial_mode]
        self._route.retired = False

    def add_tenant(self, prefixes: list[bytes], fence: Fence = never_fenced) -> CacheRouter:
        """A tenant router (one plan's) on this router's pools, in ``passthrough``, serving
        every key that starts with one of ``prefixes`` (unless a longer prefix of another
        tenant matches) from now on; a prefix an earlier tenant had moves to this one (a
        later plan took the app over). Call ``settle`` afterwards to wait for the requests
        this router itself had admitted for those keys. The tenant starts with its gate
        closed: its requests wait (as during a switch) until ``open``, once its plan's first
        mode is adopted."""
        child = CacheRouter(self.n1_servers, self.n2_servers, instance=self.instance, fence=fence,
                            drain_timeout=self.drain_timeout, **self._options)
        child.n1, child.n2 = self.n1, self.n2
        child._start_routes()
        child._gate = child._first_gate = asyncio.get_running_loop().create_future()
        self._children.append(child)
        kept = [(prefix, tenant) for prefix, tenant in self._tenants if prefix not in prefixes]
        self._tenants = sorted(kept + [(prefix, child) for prefix in prefixes], key=lambda t: -len(t[0]))
        return child

    def open(self) -> None:
        """Open the gate a tenant starts with (``add_tenant``); the requests waiting go on."""
        first = self._first_gate
        if first is not None and not first.done():
            first.set_result(None)
        if self._gate is first:
            self._gate = None

    def _reclose(self) -> None:
        """The end of a switch, flush or settle: the gate opens — unless the tenant's first
        gate is still closed (its plan's first mode is adopted by a switch, then acknowledged)."""
        first = self._first_gate
        self._gate = first if first is not None and not first.done() else None

    async def settle(self) -> None:
        """Wait until no request this router admitted before now still runs (the gate is
        closed meanwhile): after ``add_tenant``, no request of the old route for the
        tenant's keys can land after the tenant's first mode is acknowledged."""
        async with self._switch_lock:
            gate = self._gate = asyncio.get_running_loop().create_future()
            try:
                await self.route.quiesce(3 * max(self.n1.timeout, self.n2.timeout) + 1.0)
            finally:
                self._reclose()
                gate.set_result(None)

    async def close(self) -> None:
        """Stop the copy workers (queued copies are abandoned) and close the connections."""
        for router in (*self._children, self):
            for queue in (router.to_n2, router.to_n1):
                await queue.close()
        await self.n1.close()
        await self.n2.close()

    # --- state ---------------------------------------------------------------------------

    @property
    def route(self) -> ModeRoute:
        """The current mode's route; a holder of an old one is forwarded after a switch."""
        if self._route is None:
            raise RuntimeError("CacheRouter.start() has not been awaited")
        return self._route

    def route_for(self, key: bytes) -> ModeRoute:
        """The route that serves ``key``: the one seam through which the listener and the
        HTTP cache API pick a route per key — the route of the plan whose key prefix ``key``
        starts with (the longest such prefix), else this router's own ``passthrough``."""
        for prefix, tenant in self._tenants:
            if key.startswith(prefix):
                return tenant.route
        return self.route

    @property
    def mode(self) -> str:
        return self.route.mode

    def _copying(self) -> bool:
        return self.fence(True) is None

    async def _after_switch(self) -> ModeRoute:
        while self._gate is not None:
            await asyncio.shield(self._gate)
        return self.route

    def stats(self) -> dict[str, object]:
        """The cache half's figures for the listener's ``stats``: ``proxy_mode`` is the mode of
        the keys no plan names; the plans' tenants are counted by mode, and the copy queues
        summed over every tenant."""
        out: dict[str, object] = {"proxy_mode": self.mode}
        for mode in MODES:
            out[f"proxy_plans_{mode}"] = sum(tenant.mode == mode for tenant in self._children)
        for pool in (self.n1, self.n2):
            out[f"proxy_{pool.side}_servers"] = len(pool.clients)
            out[f"proxy_{pool.side}_servers_down"] = sum(pool.is_down(i) for i in range(len(pool.clients)))
        routers = (self, *self._children)
        for side in ("n2", "n1"):
            queues = [getattr(router, f"to_{side}") for router in routers]
            out[f"proxy_copies_to_{side}_pending"] = sum(queue.pending for queue in queues)
            out[f"proxy_copies_to_{side}_dropped_keys"] = sum(len(queue.dropped) for queue in queues)
        return out

    # --- flush_all -----------------------------------------------------------------------

    async def flush_all(self, delay: int = 0) -> None:
        """Flush the sides the mode writes, in its order, with a barrier in the copy queue
        between them (module docstring); ``CacheFencedError`` while fenced. With tenants,
        ``_flush_tenants``."""
        reason = self.fence(True)
        if reason is not None:
            raise CacheFencedError(f"cache flush_all refused: {reason}")
        if self._children:
            return await self._flush_tenants(delay)
        async with self._switch_lock:
            route = self.route
            gate = self._gate = asyncio.get_running_loop().create_future()
            try:
                await route.quiesce(3 * max(self.n1.timeout, self.n2.timeout) + 1.0)
                first, queue, second = {"passthrough": (self.n1, None, None), "cow": (self.n1, self.to_n2, self.n2),
                                        "proxy": (self.n2, self.to_n1, self.n1)}[route.mode]
                await first.flush_all(delay)
                flushed = [first]
                if queue is not None and second is not None:
                    # jobs still queued after the drain timeout are not run: their keys join
                    # ``dropped`` and are invalidated at the next switch
                    await queue.drain(self.drain_timeout)
                    await second.flush_all(delay)
                    flushed.append(second)
                if delay == 0:
                    self._forget_dropped([self], flushed)
            finally:
                self._reclose()
                gate.set_result(None)
            log.info("cache flush_all (delay %d s) in mode %s", delay, route.mode)

    async def _flush_tenants(self, delay: int) -> None:
        """flush_all over several modes at once (the pools are shared and memcached flushes
        a whole server): every router's gate closed and route quiesced, every copy queue
        drained (the barrier: no copy of a pre-flush value can land after), then N1 and —
        unless every route is in ``passthrough``, which writes N1 only — N2."""
        routers = [self, *self._children]
        for router in self._children:
            if (reason := router.fence(True)) is not None:
                raise CacheFencedError(f"cache flush_all refused: {reason}")
        async with contextlib.AsyncExitStack() as stack:
            for router in routers:
                await stack.enter_async_context(router._switch_lock)
            gate = asyncio.get_running_loop().create_future()
            try:
                for router in routers:
                    router._gate = gate
                for router in routers:
                    await router.route.quiesce(3 * max(self.n1.timeout, self.n2.timeout) + 1.0)
                for router in routers:
                    for queue in (router.to_n2, router.to_n1):
                        await queue.drain(self.drain_timeout)
                await self.n1.flush_all(delay)
                flushed = [self.n1]
                modes = {router.route.mode for router in routers}
                if modes != {"passthrough"}:
                    await self.n2.flush_all(delay)
                    flushed.append(self.n2)
                if delay == 0:
                    self._forget_dropped(routers, flushed)
            finally:
                for router in routers:
                    router._reclose()
                gate.set_result(None)
            log.info("cache flush_all (delay %d s) over modes %s", delay, sorted(modes))

    @staticmethod
    def _forget_dropped(routers: list[CacheRouter], flushed: list[MemcachePool]) -> None:
        """A side flushed at once (no delay) holds no value of a key whose copy to it was
        dropped, so its queues forget them; an overflowed queue, which refuses the next
        switch, is cleared only this way. A delayed flush leaves them: until it takes
        effect the stale values are still served."""
        for router in routers:
            for queue in (router.to_n2, router.to_n1):
                if queue.dest in flushed:
                    queue.forget_dropped()

    # --- the switch ----------------------------------------------------------------------

    async def switch(self, mode: str) -> dict[str, int]:
        """Change mode safely (see the module docstring); returns what had to be done:
        copy jobs dropped at the drain and keys invalidated, per destination side."""
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; the modes are {', '.join(MODES)}")
        async with self._switch_lock:
            old = self.route
            if old.mode == mode:
                return {}
            gate = self._gate = asyncio.get_running_loop().create_future()
            report: dict[str, int] = {}
            try:
                await old.quiesce(3 * max(self.n1.timeout, self.n2.timeout) + 1.0)
                for queue in (self.to_n2, self.to_n1):
                    side = queue.dest.side
                    report[f"dropped_at_drain_{side}"] = await queue.drain(self.drain_timeout)
                for queue in (self.to_n2, self.to_n1):
                    report[f"invalidated_{queue.dest.side}"] = await queue.invalidate_dropped()
            except BaseException as exc:
                metrics.SWITCHES.labels(mode, "failed").inc()
                log.error("cache switch %s -> %s failed, staying in %s: %s", old.mode, mode, old.mode, exc)
                self._reclose()
                gate.set_result(None)
                if isinstance(exc, SwitchError) or not isinstance(exc, Exception):
                    raise
                raise SwitchError(f"cache switch {old.mode} -> {mode} failed, staying in {old.mode}: {exc}") from exc
            new = self._routes[mode]
            new.retired = False
            old.retired = True
            self._route = new
            self._reclose()
            gate.set_result(None)
            metrics.SWITCHES.labels(mode, "done").inc()
            log.info("cache mode %s -> %s (%s)", old.mode, mode, report)
            return report
