"""Datastore routes: one small class per behaviour, composed into the three modes.

Every route answers ``read(ref)`` (the stored entity, tombstone included) and
``write(entities, admission)`` (puts and tombstones, already timestamped by the proxy's
clock; ``admission`` is the request's ticket from the mode machine: ``check()`` raises
while the instance may no longer act on the mode it was admitted under, ``version`` is
that mode znode's version), and names the engine that serves reads (``reader``) for
scans. A mode switch swaps one composed route object (``proxy/modes.py``); nothing else
in the proxy knows which side is which.

``EngineRoute(engine)``
    read: that engine, sync. write: ``admission.check()``, then that engine, sync.
    Promises nothing about the other side.

``DualWriteRoute(primary, secondary, journal, parallel)``
    write: ``admission.check()``, then primary and secondary, both sync, in parallel
    (``cow``) or primary first (``proxy``); the client is answered after both. A primary
    failure fails the request. A secondary failure does not: the keys go into the durable
    repair journal (sync, before the answer, a transaction checked against the mode
    version the request was admitted under) and the client gets the primary's answer.
    If the mode changed meanwhile, or ZooKeeper does not take the entry, the client gets
    ``OutcomeUnknown`` (503) and the keys are still journalled — late, or held until
    ZooKeeper answers (``proxy/journal.py`` says why that is safe) — so N1 is never ahead
    silently. read: primary only. Not guaranteed: that the secondary is current while the
    journal is not empty; that a leg started before the instance was fenced does not land
    (its timestamp makes a late leg harmless: last-write-wins).

``ShadowReadRoute(inner, shadow, rate, on_divergence)``
    read: inner, sync; a sampled ``rate`` of reads is also read from ``shadow``
    asynchronously (never delaying the client) and compared by value and timestamp; a
    divergence is counted, logged with the key, and handed to ``on_divergence`` (the
    repair journal). A shadow answer newer than the inner one is not a divergence to
    repair toward the inner side: it only means a write raced the comparison. A key absent
    from the shadow is counted (``missing``) but not journalled: until the snapshot load
    has passed it, absence is expected, and the load copies it anyway.
    write: inner. Bounded: at most ``max_in_flight`` shadow reads at once; beyond that
    samples are skipped, not queued.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from prometheus_client import Counter

from datastore import Engine, Entity, EntityRef
from proxy.journal import ModeChanged, RepairJournal

log = logging.getLogger("nxnw.proxy.routes")

SECONDARY_FAILURES = Counter("nxnw_cow_secondary_failures_total", "Writes the secondary side failed", ["side"])
SHADOW_READS = Counter("nxnw_shadow_reads_total", "Sampled shadow reads", ["outcome"])


class Admission(Protocol):
    """A request's ticket from the mode machine (``proxy.modes.Admission``)."""

    #: the mode znode's version the request was admitted under
    version: int

    def check(self) -> None:
        """Raise (``Fenced``) if the instance may no longer act on that mode."""


class OutcomeUnknown(RuntimeError):
    """The write may have reached one side; it is journalled (or held) but not acknowledged."""


class DataRoute(ABC):
    """What a mode does with a read and a write."""

    @property
    @abstractmethod
    def reader(self) -> Engine:
        """The engine whose answers the client sees (scans read it directly)."""

    @abstractmethod
    async def read(self, ref: EntityRef) -> Entity | None: ...

    @abstractmethod
    async def write(self, entities: Sequence[Entity], admission: Admission) -> None: ...

    async def close(self) -> None:
        """Finish background work (shadow reads) before the route is dropped."""


class EngineRoute(DataRoute):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def reader(self) -> Engine:
        return self.engine

    async def read(self, ref: EntityRef) -> Entity | None:
        return await self.engine.read(ref)

    async def write(self, entities: Sequence[Entity], admission: Admission) -> None:
        admission.check()
        await self.engine.apply(entities)


class DualWriteRoute(DataRoute):
    def __init__(self, primary: Engine, secondary: Engine, journal: RepairJournal, *, parallel: bool) -> None:
        self.primary = primary
        self.secondary = secondary
        self.journal = journal
        self.parallel = parallel

    @property
    def reader(self) -> Engine:
        return self.primary

    async def read(self, ref: EntityRef) -> Entity | None:
        return await self.primary.read(ref)

    async def _secondary(self, entities: Sequence[Entity]) -> BaseException | None:
        try:
            await self.secondary.apply(entities)
        except Exception as exc:  # the secondary's failure is journalled, not raised
            return exc
        return None

    async def write(self, entities: Sequence[Entity], admission: Admission) -> None:
        admission.check()
        if self.parallel:
            # The secondary leg is a task and the primary runs inline: a leg the engine finishes
            # in place (SQLite's small writes) then costs no second task, while a leg that waits
            # on the network still overlaps the other. If the primary fails, the client is told
            # the write failed once the secondary has finished too; the secondary may hold it
            # anyway (as after any failed write, its outcome is unknown), and verify settles it.
            secondary = asyncio.ensure_future(self._secondary(entities))
            try:
                await self.primary.apply(entities)
            finally:
                secondary_error = await secondary
        else:
            await self.primary.apply(entities)
            secondary_error = await self._secondary(entities)
        if secondary_error is not None:
            SECONDARY_FAILURES.labels(self.journal.target).inc()
            await self._journal([e.ref for e in entities], f"{type(secondary_error).__name__}: {secondary_error}",
                                admission)

    async def _journal(self, refs: list[EntityRef], reason: str, admission: Admission) -> None:
        journal = self.journal
        try:
            await journal.record(refs, reason, mode_version=admission.version)
            return
        except ModeChanged as exc:
            why = str(exc)
            try:
                await journal.record_late(refs, reason)
            except Exception as late:  # noqa: BLE001 — held and retried, never dropped
                journal.hold(refs, reason, late)
        except Exception as exc:  # noqa: BLE001 — ZooKeeper did not take it: held and retried
            why = f"ZooKeeper did not take the journal entry ({type(exc).__name__}: {exc}); it is held and retried"
            journal.hold(refs, reason, exc)
        raise OutcomeUnknown(f"the write reached {self.primary_side} but not {journal.target}, and {why}; "
                             "it is not acknowledged: read the key to learn its outcome")

    @property
    def primary_side(self) -> str:
        return "n1" if self.journal.target == "n2" else "n2"


class ShadowReadRoute(DataRoute):
    def __init__(self, inner: DataRoute, shadow: Engine, rate: float,
                 on_divergence: Callable[[EntityRef, Entity | None, Entity | None], Awaitable[None]],
                 max_in_flight: int = 64, rng: random.Random | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"shadow read rate {rate} must be between 0 and 1")
        self.inner = inner
        self.shadow = shadow
        self.rate = rate
        self.on_divergence = on_divergence
        self.max_in_flight = max_in_flight
        self._rng = rng or random.Random()
        self._in_flight: set[asyncio.Task] = set()

    @property
    def reader(self) -> Engine:
        return self.inner.reader

    async def write(self, entities: Sequence[Entity], admission: Admission) -> None:
        await self.inner.write(entities, admission)

    async def read(self, ref: EntityRef) -> Entity | None:
        answer = await self.inner.read(ref)
        if self.rate and self._rng.random() < self.rate:
            if len(self._in_flight) >= self.max_in_flight:
                SHADOW_READS.labels("skipped").inc()
            else:
                task = asyncio.create_task(self._compare(ref, answer))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
        return answer

    async def _compare(self, ref: EntityRef, primary: Entity | None) -> None:
        try:
            shadow = await self.shadow.read(ref)
        except Exception as exc:
            SHADOW_READS.labels("error").inc()
            log.info("shadow read of %s failed: %s", ref, exc)
            return
        if shadow == primary or (shadow is not None and shadow.wins_over(primary)):
            SHADOW_READS.labels("match").inc()
            return
        if shadow is None:
            SHADOW_READS.labels("missing").inc()
            return
        SHADOW_READS.labels("divergence").inc()
        log.warning("shadow read divergence on %s/%s/%r: N1 %s, N2 %s", ref.app, ref.kind, ref.key,
                    _describe(primary), _describe(shadow))
        try:
            await self.on_divergence(ref, primary, shadow)
        except Exception as exc:
            log.error("could not journal divergence of %s: %s", ref, exc)

    async def close(self) -> None:
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self.inner.close()


def _describe(entity: Entity | None) -> str:
    if entity is None:
        return "absent"
    return f"tombstone@{entity.ts}" if entity.deleted else f"{len(entity.value or b'')} B@{entity.ts}"
