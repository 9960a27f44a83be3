"""The snapshot loader's checkpoints, kept in N1's ZooKeeper through ``sync.state``.

``snapshot`` may not import ``sync``; this adapter gives the loader the async
``CheckpointStore`` it expects on top of sync's blocking one. The range plan is stored as
the pseudo-range ``_plan`` of the task, so a rerun reuses exactly the same ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

from datastore import KeyRange
from sync.aio import run_blocking
from sync.state import CheckpointStore

PLAN_ID = "_plan"


class ZooKeeperCheckpoints:
    def __init__(self, store: CheckpointStore) -> None:
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
