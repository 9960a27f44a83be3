"""The proxy's core: the current mode's route, the clock, fencing and transactions.

Transport-free: the HTTP API and the memcached listener call into it. It owns the one
hybrid logical clock that stamps every write, floors that clock above every timestamp an
engine returns (so a read-modify-write is always newer than what it read), and refuses
writes while it does not know the mode (``Fenced``) — the state of an instance whose
ZooKeeper session is suspended or lost (DESIGN invariant 3).

A mode change swaps the route object and then waits until no request still runs on the
old one, so that when ``apply_mode`` returns (and the instance acknowledges the mode in
ZooKeeper) no write can still follow the old mode's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import AsyncContextManager, Protocol

from datastore import Engine, Entity, EntityRef
from datastore.model import check_app, check_kind
from proxy.journal import RepairJournal
from proxy.routes import DataRoute, DirectRoute, DualWriteRoute, ShadowReadRoute
from sync.mode import MODES


#: (app, group) -> an async context manager holding the group's lock; it yields a callable
#: that raises unless the lock is still held (called right before the write).
LockFactory = Callable[[str, str], AsyncContextManager[Callable[[], None]]]


class Fenced(RuntimeError):
    """This instance does not know the current mode, so it must not write."""


class WriterClock(Protocol):
    """What the core needs of the clock that stamps its writes (the proxy's writer clock).

    ``now()`` raises a ``RuntimeError`` subclass (``datastore.clock.ClockUnsafe``) when the
    instance must not stamp writes (its clock is too far from ZooKeeper's, or its writer id
    is not secured); the core answers such a write 503 with that reason.
    """

    last: int

    def now(self) -> int: ...

    def observe(self, ts: int) -> None: ...


class ClockRefused(RuntimeError):
    """The writer clock refused to stamp a write; nothing reached an engine."""


class Conflict(RuntimeError):
    """A transaction's read set changed before it could commit."""


class _Tracked:
    """A route plus the number of requests running on it, so a switch can drain it."""

    def __init__(self, route: DataRoute) -> None:
        self.route = route
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[DataRoute]:
        self.running += 1
        self.idle.clear()
        try:
            yield self.route
        finally:
            self.running -= 1
            if self.running == 0:
                self.idle.set()


def build_route(mode: str, n1: Engine, n2: Engine, to_n2: RepairJournal, to_n1: RepairJournal,
                shadow_rate: float) -> DataRoute:
    """The three modes as compositions of routes (see proxy/routes.py for each one)."""
    if mode == "passthrough":
        return DirectRoute(n1)
    if mode == "cow":
        dual = DualWriteRoute(n1, n2, to_n2, parallel=True)
        if not shadow_rate:
            return dual
        return ShadowReadRoute(dual, n2, shadow_rate, lambda ref, _n1, _n2: to_n2.record([ref], "shadow read divergence"))
    if mode == "proxy":
        return DualWriteRoute(n2, n1, to_n1, parallel=False)
    raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(MODES)}")


class ProxyCore:
    def __init__(self, *, instance: str, clock: WriterClock, n1: Engine, n2: Engine, to_n2: RepairJournal,
                 to_n1: RepairJournal, lock: LockFactory, shadow_rate: float = 0.0, admin_token: str = "") -> None:
        self.instance = instance
        self.clock = clock
        self.n1 = n1
        self.n2 = n2
        self.to_n2 = to_n2
        self.to_n1 = to_n1
        self.lock = lock
        self.shadow_rate = shadow_rate
        self.admin_token = admin_token
        self.mode: str | None = None
        self._known_mode = "passthrough"
        self._current = _Tracked(DirectRoute(n1))
        self._switching = asyncio.Lock()

    async def apply_mode(self, mode: str | None) -> None:
        """Adopt ``mode`` (``None`` = fenced); returns once no request runs on the old route."""
        async with self._switching:
            if mode is None:
                self.mode = None
                return
            if mode == self._known_mode:
                self.mode = mode
                return
            old = self._current
            self._current = _Tracked(build_route(mode, self.n1, self.n2, self.to_n2, self.to_n1, self.shadow_rate))
            self._known_mode = mode
            self.mode = mode
            await old.idle.wait()
            await old.route.close()

    def _writable(self) -> None:
        if self.mode is None:
            raise Fenced(f"proxy {self.instance} has no ZooKeeper session, so it does not know the mode; "
                         "writes are refused until it has the mode again")

    def _observe(self, entity: Entity | None) -> Entity | None:
        if entity is not None:
            self.clock.observe(entity.ts)
        return entity

    async def read(self, ref: EntityRef) -> Entity | None:
        async with self._current.use() as route:
            return self._observe(await route.read(ref))

    async def get(self, ref: EntityRef) -> Entity | None:
        entity = await self.read(ref)
        return None if entity is None or entity.deleted else entity

    async def write_many(self, writes: Sequence[tuple[EntityRef, bytes | None]]) -> int:
        """Stamp every write with one timestamp and send them through the mode's route."""
        self._writable()
        try:
            ts = self.clock.now()
        except RuntimeError as exc:  # ClockUnsafe: the clock cannot promise LWW order now
            raise ClockRefused(f"proxy {self.instance} refuses writes: {exc}") from exc
        entities = [Entity(ref.app, ref.kind, ref.key, value, ts) for ref, value in writes]
        async with self._current.use() as route:
            self._writable()
            await route.write(entities)
        return ts

    async def put(self, ref: EntityRef, value: bytes) -> int:
        return await self.write_many([(ref, value)])

    async def delete(self, ref: EntityRef) -> int:
        return await self.write_many([(ref, None)])

    async def transaction(self, app: str, group: str, reads: Sequence[tuple[EntityRef, int | None]],
                          writes: Sequence[tuple[EntityRef, bytes | None]]) -> int:
        """Read-check-write under the group's lock in N1's ZooKeeper.

        Every proxy instance takes its locks in N1's ZooKeeper, whatever the mode, and the
        ZooKeeper mirror copies lock znodes to N2, so a lock held for a ``cow`` or ``proxy``
        transaction is visible on both sides. Taking a second lock in N2's ZooKeeper would
        queue behind the mirrored copy of our own N1 lock and deadlock.
        """
        self._writable()
        async with self.lock(app, group) as ensure_held:
            for ref, expected in reads:
                current = await self.get(ref)
                seen = None if current is None else current.ts
                if seen != expected:
                    raise Conflict(f"{ref.kind}/{ref.key!r} in group {group} is at timestamp {seen}, "
                                   f"not {expected} as read; retry the transaction")
            ensure_held()
            return await self.write_many(writes)

    def scan(self, app: str, kind: str | None) -> AsyncIterator[list[Entity]]:
        """Live entities of ``app`` (optionally one kind) from the side that serves reads."""
        check_app(app)
        if kind is not None:
            check_kind(kind)
        return self._scan(app, kind)

    async def _scan(self, app: str, kind: str | None) -> AsyncIterator[list[Entity]]:
        async with self._current.use() as route:
            engine = route.reader
            for key_range in await engine.ranges(app):
                async for page in engine.scan(app, key_range):
                    yield [e for e in page if kind is None or e.kind == kind]

    async def describe(self) -> dict[str, object]:
        return {"instance": self.instance, "mode": self.mode, "clock": self.clock.last,
                "journal": {"n2": await self.to_n2.depth(), "n1": await self.to_n1.depth()}}

    async def close(self) -> None:
        await self._current.idle.wait()
        await self._current.route.close()
