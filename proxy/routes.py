"""Datastore routes: one small class per behaviour, composed into the three modes.

Every route answers ``read(ref)`` (the stored entity, tombstone included) and
``write(entities)`` (puts and tombstones, already timestamped by the proxy's clock), and
names the engine that serves reads (``reader``) for scans. A mode switch swaps one
composed route object; nothing else in the proxy knows which side is which.

``DirectRoute(engine)``
    read: that engine, sync. write: that engine, sync. Promises nothing about the other side.

``DualWriteRoute(primary, secondary, journal, parallel)``
    write: primary and secondary, both sync, in parallel (``cow``) or primary first
    (``proxy``); the client is answered after both. A primary failure fails the request.
    A secondary failure does not: the keys go into the durable repair journal (sync,
    before the answer) and the client gets the primary's answer. If the journal cannot
    take them either, the request fails, because the write could otherwise be lost.
    read: primary only. Does not promise that the secondary is current while the journal
    is not empty.

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

from prometheus_client import Counter

from datastore import Engine, Entity, EntityRef
from proxy.journal import RepairJournal

log = logging.getLogger("nxnw.proxy.routes")

SECONDARY_FAILURES = Counter("nxnw_cow_secondary_failures_total", "Writes the secondary side failed", ["side"])
SHADOW_READS = Counter("nxnw_shadow_reads_total", "Sampled shadow reads", ["outcome"])


class DataRoute(ABC):
    """What a mode does with a read and a write."""

    @property
    @abstractmethod
    def reader(self) -> Engine:
        """The engine whose answers the client sees (scans read it directly)."""

    @abstractmethod
    async def read(self, ref: EntityRef) -> Entity | None: ...

    @abstractmethod
    async def write(self, entities: Sequence[Entity]) -> None: ...

    async def close(self) -> None:
        """Finish background work (shadow reads) before the route is dropped."""


class DirectRoute(DataRoute):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def reader(self) -> Engine:
        return self.engine

    async def read(self, ref: EntityRef) -> Entity | None:
        return await self.engine.read(ref)

    async def write(self, entities: Sequence[Entity]) -> None:
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

    async def write(self, entities: Sequence[Entity]) -> None:
        if self.parallel:
            primary, secondary_error = await asyncio.gather(
                self.primary.apply(entities), self._secondary(entities), return_exceptions=True)
            if isinstance(primary, BaseException):
                # The client is told the write failed; the secondary may hold it anyway (as
                # after any failed write, its outcome is unknown), and verify settles it.
                raise primary
        else:
            await self.primary.apply(entities)
            secondary_error = await self._secondary(entities)
        if secondary_error is not None:
            SECONDARY_FAILURES.labels(self.journal.target).inc()
            await self.journal.record([e.ref for e in entities], f"{type(secondary_error).__name__}: {secondary_error}")


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

    async def write(self, entities: Sequence[Entity]) -> None:
        await self.inner.write(entities)

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
