"""The snapshot loader's range checkpoints, kept in N1's ZooKeeper as task records.

``snapshot`` may not import ``sync``; ``ZooKeeperRangeCheckpoints`` gives the loader the
async ``snapshot.CheckpointStore`` interface it expects, on top of sync's blocking
``TaskRecordStore``. The range plan is stored as the pseudo-range ``_plan`` of the task,
so a rerun reuses exactly the same ranges. Must never block the event loop (every
ZooKeeper call goes through ``run_blocking``).
"""

from __future__ import annotations

from collections.abc import Sequence

from datastore import KeyRange
from sync.aio import run_blocking
from sync.state import TaskRecordStore

PLAN_ID = "_plan"


class ZooKeeperRangeCheckpoints:
    """``snapshot.CheckpointStore`` over a ``TaskRecordStore``: one record per finished range."""

    def __init__(self, store: TaskRecordStore) -> None:
        self.store = store

    async def load_plan(self, task: str) -> list[tuple[str, KeyRange]] | None:
        doc = await run_blocking(self.store.get, task, PLAN_ID)
        if doc is None:
            return None
        return [(rid, KeyRange(start, end)) for rid, start, end in doc["ranges"]]

    async def save_plan(self, task: str, plan: Sequence[tuple[str, KeyRange]]) -> None:
        doc = {"ranges": [[rid, r.start, r.end] for rid, r in plan]}
        await run_blocking(self.store.put, task, PLAN_ID, doc)

    async def completed(self, task: str) -> set[str]:
        found = await run_blocking(self.store.list, task)
        return {rid for rid, doc in found.items() if rid != PLAN_ID and doc.get("done")}

    async def mark_completed(self, task: str, range_id: str, entities: int) -> None:
        await run_blocking(self.store.put, task, range_id, {"done": True, "entities": entities})

    async def clear(self, task: str) -> None:
        await run_blocking(self.store.clear, task)
