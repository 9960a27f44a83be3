"""Load: apply chunks to N2 in parallel batches, last-write-wins, checkpointing ranges.

Every chunk goes through ``Engine.apply_rows`` (``apply`` for rows, with no ``Entity`` built
on the way), which is last-write-wins by timestamp with tombstones, so a load that runs
during or after ``cow`` writes never overwrites a newer value and never brings back a
deleted key; a chunk applied twice changes nothing. That
idempotence is what makes resuming simple: a range is checkpointed only once all of its
chunks are applied, and a rerun redoes whole ranges that were not.

The checkpoint store is passed in (``CheckpointStore``); nxnw wires the ZooKeeper one
from ``sync``, because this package may not import ``sync``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from datastore import Engine, KeyRange
from snapshot.chunks import Chunk
from snapshot.export import export_chunks, plan_ids


def first_error(errors: BaseExceptionGroup) -> BaseException:
    """The first real failure inside (nested) task-group errors: the one to report."""
    first = errors.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first


class CheckpointStore(Protocol):
    """Where a loader records its plan and the ranges it has finished, per task.

    Async, because the store (ZooKeeper) is remote and the loader runs on the event loop.
    """

    async def load_plan(self, task: str) -> list[tuple[str, KeyRange]] | None: ...

    async def save_plan(self, task: str, plan: Sequence[tuple[str, KeyRange]]) -> None: ...

    async def completed(self, task: str) -> set[str]: ...

    async def mark_completed(self, task: str, range_id: str, entities: int) -> None: ...


@dataclass
class LoadStats:
    """What a load has done so far; read by progress displays while it runs."""

    ranges_total: int = 0
    ranges_done: int = 0
    ranges_skipped: int = 0
    entities: int = 0
    tombstones: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.entities / self.seconds if self.seconds > 0 else 0.0


class Loader:
    """Apply a chunk stream to ``engine`` with up to ``workers`` batches in flight."""

    def __init__(self, engine: Engine, *, task: str, checkpoints: CheckpointStore | None = None, workers: int = 8,
                 on_progress: Callable[[LoadStats], None] | None = None) -> None:
        if workers < 1:
            raise ValueError(f"a load needs at least one worker, got {workers}: with none it would never end")
        self.engine = engine
        self.task = task
        self.checkpoints = checkpoints
        self.workers = workers
        self.on_progress = on_progress
        self.stats = LoadStats()
        self._in_flight: dict[str, int] = {}
        self._final_seen: dict[str, int] = {}
        self._applied: dict[str, int] = {}
        self._entities: dict[str, int] = {}

    async def _range_may_finish(self, range_id: str) -> None:
        if range_id in self._final_seen and self._applied.get(range_id, 0) == self._final_seen[range_id]:
            del self._final_seen[range_id]
            if self.checkpoints is not None:
                await self.checkpoints.mark_completed(self.task, range_id, self._entities.get(range_id, 0))
            self.stats.ranges_done += 1

    async def _apply(self, chunk: Chunk) -> None:
        rows = chunk.rows
        await self.engine.apply_rows(chunk.app, rows)
        self._applied[chunk.range_id] = self._applied.get(chunk.range_id, 0) + 1
        self._entities[chunk.range_id] = self._entities.get(chunk.range_id, 0) + len(rows)
        self.stats.entities += len(rows)
        values = [value for _, value, _ in rows if value is not None]
        self.stats.tombstones += len(rows) - len(values)
        self.stats.bytes += sum(map(len, values)) + sum(len(row_key) for row_key, _, _ in rows)
        await self._range_may_finish(chunk.range_id)
        if self.on_progress is not None:
            self.on_progress(self.stats)

    async def load(self, chunks: AsyncIterable[Chunk], skip: set[str] = frozenset()) -> LoadStats:
        """Apply every chunk not in a ``skip``ped range; return when all are applied."""
        slots = asyncio.Semaphore(self.workers)

        async def run(chunk: Chunk) -> None:
            try:
                await self._apply(chunk)
            finally:
                slots.release()

        stream_error: Exception | None = None
        try:
            async with asyncio.TaskGroup() as group:
                try:
                    async for chunk in chunks:
                        if chunk.range_id in skip:
                            continue
                        if chunk.final:
                            self._final_seen[chunk.range_id] = chunk.seq + 1
                        await slots.acquire()
                        group.create_task(run(chunk))
                except Exception as exc:
                    # A stream that fails part-way (a corrupt or truncated file): the chunks
                    # already verified still land, and ranges they completed are checkpointed,
                    # before the stream's error is raised.
                    stream_error = exc
        except BaseExceptionGroup as errors:
            raise first_error(errors) from errors
        if stream_error is not None:
            raise stream_error
        return self.stats


async def range_plan(source: Engine, app: str, task: str, checkpoints: CheckpointStore | None,
                     at_least: int) -> tuple[list[tuple[str, KeyRange]], set[str]]:
    """The copy's ranges (saved with the checkpoints on a first run, reused on a rerun, so a
    resumed copy splits the table exactly as the killed one did) and those already done."""
    plan = await checkpoints.load_plan(task) if checkpoints is not None else None
    if plan is None:
        plan = plan_ids(await source.ranges(app, at_least=at_least))
        if checkpoints is not None:
            await checkpoints.save_plan(task, plan)
    done = await checkpoints.completed(task) if checkpoints is not None else set()
    return plan, done


async def copy_app(source: Engine, target: Engine, app: str, *, task: str, checkpoints: CheckpointStore | None = None,
                   at_least: int = 16, export_workers: int = 4, load_workers: int = 8,
                   on_progress: Callable[[LoadStats], None] | None = None) -> LoadStats:
    """Stream one app from ``source`` straight into ``target``, with no staging copy.

    The range plan is saved with the checkpoints on the first run and reused on a rerun,
    so the ranges a killed copy finished are skipped and the others are redone whole.
    """
    plan, done = await range_plan(source, app, task, checkpoints, at_least)
    loader = Loader(target, task=task, checkpoints=checkpoints, workers=load_workers, on_progress=on_progress)
    loader.stats.ranges_total = len(plan)
    loader.stats.ranges_skipped = len(done)
    loader.stats.ranges_done = len(done)
    todo = [(rid, r) for rid, r in plan if rid not in done]
    return await loader.load(export_chunks(source, app, todo, workers=export_workers))
