"""Export: read an app's ranges from an engine in parallel and cut them into chunks.

Ranges are read concurrently (``workers`` at a time) and their chunks interleave in the
output; each range ends with a chunk marked ``final`` so that a loader knows when the
range is complete and may checkpoint it. Tombstones are exported: a snapshot that left
them out would let the loader resurrect keys deleted on N1 but not yet on N2.
Memory stays bounded by the queue: readers wait when the consumer is slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from datastore import Engine, KeyRange, Row
from snapshot.chunks import Chunk

DEFAULT_CHUNK_ENTITIES = 2000
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: Rows per read of the source: one engine call (a thread hop, a round trip) per page.
SCAN_PAGE_ROWS = 1000


def plan_ids(ranges: Sequence[KeyRange]) -> list[tuple[str, KeyRange]]:
    """Stable ids for a range plan: the position, zero-padded so ids sort in plan order."""
    return [(f"r{i:05d}", r) for i, r in enumerate(ranges)]


def _row_bytes(row: Row) -> int:
    """What a row weighs in a chunk: key, value and the record's fixed fields."""
    return len(row[0]) + (len(row[1]) if row[1] is not None else 0) + 24


async def _export_range(engine: Engine, app: str, range_id: str, key_range: KeyRange, out: asyncio.Queue,
                        chunk_entities: int, chunk_bytes: int) -> None:
    seq = 0
    pending: list[Row] = []
    size = 0
    async for page in engine.scan_rows(app, key_range, page_size=min(chunk_entities, SCAN_PAGE_ROWS)):
        page_size = sum(map(_row_bytes, page))
        if len(pending) + len(page) < chunk_entities and size + page_size < chunk_bytes:
            pending += page  # the whole page fits: no look at each row
            size += page_size
            continue
        for row in page:
            pending.append(row)
            size += _row_bytes(row)
            if len(pending) >= chunk_entities or size >= chunk_bytes:
                await out.put(Chunk(app, range_id, key_range, seq, pending))
                seq += 1
                pending, size = [], 0
    await out.put(Chunk(app, range_id, key_range, seq, pending, final=True))


async def export_chunks(engine: Engine, app: str, plan: Sequence[tuple[str, KeyRange]], *, workers: int = 4,
                        chunk_entities: int = DEFAULT_CHUNK_ENTITIES,
                        chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> AsyncIterator[Chunk]:
    """Yield the chunks of every range in ``plan``, reading ``workers`` ranges at a time."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=workers * 4)
    todo = list(plan)
    done = object()

    async def reader() -> None:
        while todo:
            range_id, key_range = todo.pop(0)
            await _export_range(engine, app, range_id, key_range, queue, chunk_entities, chunk_bytes)

    async def run_readers() -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(max(1, min(workers, len(plan)))):
                    group.create_task(reader())
        finally:
            await queue.put(done)

    runner = asyncio.create_task(run_readers())
    try:
        while (item := await queue.get()) is not done:
            yield item
        await runner  # raises a reader's error, if one failed
    finally:
        if not runner.done():
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
