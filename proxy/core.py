"""The proxy's core: admission under the mode machine, the clock, and transactions.

Transport-free: the HTTP API and the memcached listener call into it. It stamps every
write with the writer clock, floors that clock above every timestamp an engine returns
(so a read-modify-write is always newer than what it read), refuses a request that names
one key twice (two values at one timestamp would fork the sides: engines cannot agree
which one wins), and runs each request under an ``Admission`` from the mode machine
(``proxy/modes.py``), which refuses while the instance is fenced (DESIGN invariant 3).
Each request is admitted by the machine of its app's plan (``Tenants.for_app``: the app is
in the URL), or as ``passthrough`` when no plan names the app; a batch or transaction
names one app.

A write and its journal record run to completion whatever the client does (DESIGN
invariant 2). The route begins the write without awaiting (``DataRoute.start_write``:
every leg an engine can apply in place goes in now); what is left to await, if anything,
runs as its own task that the handler awaits through ``asyncio.shield``, so a client
disconnect (aiohttp cancels the handler) never stops it between its legs or before its
journal record. A write that went in place whole had no await to be cut at, and pays
for no task. The task holds the request's admission, so a mode switch's drain waits for
it, and ``close`` waits for every such task.

Must never: let a cancelled handler cancel a write halfway; answer a request whose
admission no longer holds (``Admission.check`` runs before every answer).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import AsyncContextManager, Protocol

from datastore import Entity, EntityRef, InvalidEntity
from datastore.model import check_app, check_kind
from proxy.modes import Admission, Fenced, ModeMachine, Tenants, Unclaimed
from proxy.routes import OutcomeUnknown
from sync.lock import GroupLockError

__all__ = ["ClockRefused", "Conflict", "Fenced", "ProxyCore", "WriterClock"]

log = logging.getLogger("nxnw.proxy.core")

#: (app, group) -> an async context manager holding the group's lock; it yields a callable
#: that raises unless the lock is still held (called right before the write).
LockFactory = Callable[[str, str], AsyncContextManager[Callable[[], None]]]


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


def refuse_repeated_keys(writes: Sequence[tuple[EntityRef, bytes | None]]) -> None:
    """InvalidEntity naming the first key written twice in one request."""
    seen: set[tuple[str, str, bytes]] = set()
    for ref, _ in writes:
        key = (ref.app, ref.kind, ref.key)
        if key in seen:
            raise InvalidEntity(f"key {ref.kind}/{base64.b64encode(ref.key).decode()} is written twice in one request; "
                                "one request carries one value per key (both would get one timestamp and the "
                                "sides could keep different ones)")
        seen.add(key)


def _serving(machine: ModeMachine | Unclaimed) -> str | None:
    """The name of the mode ``machine`` serves in, or None while it is fenced or has none."""
    current = machine.current
    return None if current is None or machine.fence_reason() is not None else current.name


class ProxyCore:
    def __init__(self, *, instance: str, clock: WriterClock, modes: Tenants, lock: LockFactory,
                 admin_token: str = "") -> None:
        self.instance = instance
        self.clock = clock
        self.modes = modes
        self.lock = lock
        self.admin_token = admin_token
        self._writes: set[asyncio.Task] = set()

    @property
    def mode(self) -> str | None:
        """The mode of the apps no plan names (``passthrough``), or None while the instance
        is fenced."""
        return None if self.modes.unclaimed.fence_reason() is not None else "passthrough"

    def plan_mode(self, plan: str) -> str | None:
        """The mode in force for ``plan``'s apps, or None (fenced, or the plan is not known)."""
        machine = self.modes.machines.get(plan)
        return None if machine is None else _serving(machine)

    def plan_modes(self) -> dict[str, str | None]:
        return {plan: self.plan_mode(plan) for plan in sorted(self.modes.machines)}

    def app_mode(self, app: str) -> str | None:
        """The mode ``app``'s requests are served in, or None while the instance is fenced for it."""
        return _serving(self.modes.for_app(app))

    def machine(self, app: str) -> ModeMachine | Unclaimed:
        """The mode machine that admits ``app``'s requests."""
        check_app(app)
        return self.modes.for_app(app)

    def _observe(self, entity: Entity | None) -> Entity | None:
        if entity is not None:
            self.clock.observe(entity.ts)
        return entity

    async def read(self, ref: EntityRef) -> Entity | None:
        admission = await self.machine(ref.app).admit(write=False)
        try:
            entity = await admission.mode.data.read(ref)
            admission.check()
            return self._observe(entity)
        finally:
            admission.release()

    async def get(self, ref: EntityRef) -> Entity | None:
        entity = await self.read(ref)
        return None if entity is None or entity.deleted else entity

    async def write_many(self, writes: Sequence[tuple[EntityRef, bytes | None]], app: str | None = None) -> int:
        """Stamp every write with one timestamp and send them through the route of the mode
        of their app (``app``, which every write must name)."""
        refuse_repeated_keys(writes)
        apps = {ref.app for ref, _ in writes} | ({app} if app is not None else set())
        if len(apps) != 1:
            raise InvalidEntity(f"one request writes to apps {', '.join(sorted(apps))}; a request names one app "
                                "(each app follows its own plan's mode)" if apps else "a request names one app")
        admission = await self.machine(apps.pop()).admit(write=True)
        try:
            ts = self.clock.now()
        except RuntimeError as exc:  # ClockUnsafe: the clock cannot promise LWW order now
            admission.release()
            raise ClockRefused(f"proxy {self.instance} refuses writes: {exc}") from exc
        entities = [Entity(ref.app, ref.kind, ref.key, value, ts) for ref, value in writes]
        try:
            rest = admission.mode.data.start_write(entities, admission)
        except BaseException:
            admission.release()
            raise
        if rest is None:  # every leg went in place: there was no await a disconnect could cut
            admission.release()
        else:
            task = asyncio.create_task(self._write(admission, rest))
            self._writes.add(task)
            task.add_done_callback(self._finished)
            await asyncio.shield(task)
        try:
            admission.check()  # the write is done; answer only if the admission still holds
        except Fenced as exc:
            raise OutcomeUnknown(f"the write was sent, but it is not acknowledged: {exc}") from exc
        return ts

    def _finished(self, task: asyncio.Task) -> None:
        """A shielded write ended; if its client had left, its error is only logged here."""
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("write of %s ended with %s (its client may have left)", task.get_name(), task.exception())

    @staticmethod
    async def _write(admission: Admission, rest: Awaitable[None]) -> None:
        """The rest of a write that ``start_write`` began: its legs still waiting, its journal."""
        try:
            await rest
        finally:
            admission.release()

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
        refuse_repeated_keys(writes)
        if any(ref.app != app for ref, _ in [*writes, *reads]):
            raise InvalidEntity(f"a transaction of app {app} reads or writes another app's entities")
        reason = self.machine(app).fence_reason()
        if reason is not None:
            raise Fenced(reason)
        committed: int | None = None
        try:
            async with self.lock(app, group) as ensure_held:
                for ref, expected in reads:
                    current = await self.get(ref)
                    seen = None if current is None else current.ts
                    if seen != expected:
                        raise Conflict(f"{ref.kind}/{ref.key!r} in group {group} is at timestamp {seen}, "
                                       f"not {expected} as read; retry the transaction")
                ensure_held()
                committed = await self.write_many(writes, app)
        except GroupLockError as exc:
            if committed is None:
                raise
            # the writes are in: answering "refused" (nothing reached an engine) would be
            # false, and a client would take a committed transaction for one that never ran
            log.warning("transaction of %s in group %s committed at %d; its lock was not released: %s",
                        app, group, committed, exc)
        assert committed is not None  # the block committed, or what it raised went on
        return committed

    def scan(self, app: str, kind: str | None) -> AsyncIterator[list[Entity]]:
        """Live entities of ``app`` (optionally one kind) from the side that serves reads."""
        check_app(app)
        if kind is not None:
            check_kind(kind)
        return self._scan(app, kind)

    async def _scan(self, app: str, kind: str | None) -> AsyncIterator[list[Entity]]:
        admission = await self.machine(app).admit(write=False)
        try:
            engine = admission.mode.data.reader
            for key_range in await engine.ranges(app):
                async for page in engine.scan(app, key_range):
                    admission.check()
                    yield [e for e in page if kind is None or e.kind == kind]
        finally:
            admission.release()

    async def describe(self) -> dict[str, object]:
        out = {**self.modes.describe(), "instance": self.instance, "mode": self.mode, "clock": self.clock.last}
        for name, machine in self.modes.machines.items():
            plan = out["plans"][name]  # type: ignore[index]
            plan["journal"] = {j.target: await j.depth() for j in machine.journals}
            plan["journal_held"] = {j.target: len(j.held) for j in machine.journals}
        return out

    async def close(self) -> None:
        """Wait for every shielded write (their clients may be gone), then the mode in force."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        await self.modes.close()
