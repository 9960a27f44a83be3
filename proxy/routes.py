"""Datastore routes: one small class per behaviour, composed into the three modes.

Every route answers ``read(ref)`` (the stored entity, tombstone included) and
``write(entities, admission)`` (puts and tombstones, already timestamped by the proxy's
clock; ``admission`` is the request's ticket from the mode machine: ``check()`` raises
while the instance may no longer act on the mode it was admitted under, ``version`` is
that mode znode's version), and names the engine that serves reads (``reader``) for
scans. ``start_write`` is a write's first part: everything done before its first await
(the check, and the legs the engines apply in place), returning the rest to await. A mode switch swaps one composed route object (``proxy/modes.py``); nothing else
in the proxy knows which side is which.

``EngineRoute(engine)``
    read: that engine, sync. write: ``admission.check()``, then that engine, sync.
    Promises nothing about the other side.

``DualWriteRoute(primary, secondary, journal, parallel)``
    write: ``admission.check()``, then primary and secondary, both sync, in parallel
    (``cow``: ``dual_apply``) or primary first (``proxy``); the client is answered after
    both. A primary failure fails the request. A secondary failure does not: the keys go
    into the durable repair journal (sync, before the answer, a transaction checked
    against the mode version the request was admitted under) and the client gets the
    primary's answer.
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

How a ``cow`` write's two legs overlap (``dual_apply``)
---------------------------------------------------------
A leg that waits (a network round trip, an engine's thread) should wait beside the other,
so the write costs the slower leg, not the sum. A leg the engine can finish on the event
loop without waiting (``Engine.apply_in_place``: SQLite's small writes) has nothing to
overlap: both such legs run on the loop anyway, and starting one as a task would only add
the task and two loop iterations (measured by ``bench.engine_writes``). So the primary is
tried in place first, then the secondary; only a leg that must wait is awaited, and the
secondary becomes a task only when the primary waits too. When both legs were applied in
place, ``start_write`` returns None: the write is complete before anything was awaited,
so no caller needs a task to protect it from cancellation. Order between the legs is not
part of the promise: each carries the request's timestamp, and last-write-wins makes the
order in which they land irrelevant.
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
    def start_write(self, entities: Sequence[Entity], admission: Admission) -> Awaitable[None] | None:
        """Begin a write: ``admission.check()``, then every leg the engines can apply in place
        (``Engine.apply_in_place``), now, without awaiting; return the rest of the write to
        await, or None when it is complete. A caller that must not be cancelled between a
        write's legs (the core's shielded write section) needs a task only for the rest: a
        write that completed here had no point at which it could be cancelled."""

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

    def start_write(self, entities: Sequence[Entity], admission: Admission) -> Awaitable[None] | None:
        admission.check()
        return None if self.engine.apply_in_place(entities) else self.engine.apply(entities)


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

    def start_write(self, entities: Sequence[Entity], admission: Admission) -> Awaitable[None] | None:
        admission.check()
        if not self.primary.apply_in_place(entities):
            return self._write_waiting(entities, admission)
        try:  # the primary holds the write: now the secondary
            if self.secondary.apply_in_place(entities):
                return None
        except Exception as exc:  # journalled, not raised
            return self._secondary_failed(entities, exc, admission)
        return self._finish_secondary(entities, admission)

    async def _write_waiting(self, entities: Sequence[Entity], admission: Admission) -> None:
        """The write when the primary must wait: the legs overlap in ``cow``, run in turn in ``proxy``."""
        if self.parallel:
            secondary_error = await dual_apply(self.primary, self.secondary, entities)
        else:
            await self.primary.apply(entities)
            secondary_error = await _secondary_leg(self.secondary, entities)
        if secondary_error is not None:
            await self._secondary_failed(entities, secondary_error, admission)

    async def _finish_secondary(self, entities: Sequence[Entity], admission: Admission) -> None:
        """The primary holds the write and the secondary must wait."""
        secondary_error = await _awaited_leg(self.secondary, entities)
        if secondary_error is not None:
            await self._secondary_failed(entities, secondary_error, admission)

    async def _secondary_failed(self, entities: Sequence[Entity], error: BaseException, admission: Admission) -> None:
        SECONDARY_FAILURES.labels(self.journal.target).inc()
        await self._journal([e.ref for e in entities], f"{type(error).__name__}: {error}", admission)

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


async def dual_apply(primary: Engine, secondary: Engine, entities: Sequence[Entity]) -> BaseException | None:
    """Apply ``entities`` to both engines, overlapping only the legs that wait (see the
    module docstring); return the secondary's failure, raise the primary's.

    If the primary fails in place, the secondary is not written. If it fails after waiting,
    the secondary, started beside it, is awaited first: it may hold the write (its outcome
    is unknown to the client, as after any failed write) and verify settles it.
    """
    if primary.apply_in_place(entities):
        return await _secondary_leg(secondary, entities)
    pending = _start_secondary(secondary, entities)
    try:
        await primary.apply(entities)
    finally:
        secondary_error = await pending
    return secondary_error


async def _secondary_leg(secondary: Engine, entities: Sequence[Entity]) -> BaseException | None:
    """The secondary leg, in place when the engine can; its failure returned, not raised
    (the caller journals it)."""
    try:
        if secondary.apply_in_place(entities):
            return None
    except Exception as exc:
        return exc
    return await _awaited_leg(secondary, entities)


async def _awaited_leg(secondary: Engine, entities: Sequence[Entity]) -> BaseException | None:
    try:
        await secondary.apply(entities)
    except Exception as exc:
        return exc
    return None


def _start_secondary(secondary: Engine, entities: Sequence[Entity]) -> asyncio.Future[BaseException | None]:
    """The secondary leg started beside a primary that waits: already done when the engine
    did it in place, else a task."""
    try:
        if not secondary.apply_in_place(entities):
            return asyncio.ensure_future(_awaited_leg(secondary, entities))
        outcome: BaseException | None = None
    except Exception as exc:
        outcome = exc
    done: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
    done.set_result(outcome)
    return done


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

    def start_write(self, entities: Sequence[Entity], admission: Admission) -> Awaitable[None] | None:
        return self.inner.start_write(entities, admission)

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
