"""HBase batch writes: one ``apply`` of rows that each carry their own timestamp.

The HBase engine writes a whole batch through the gateway's ``mutateRowsTsEach`` (one Thrift
call per ``BATCH_ROWS`` rows, every row at its own timestamp) instead of one ``mutateRowsTs``
call per distinct timestamp. These tests pin down that the batch path keeps the engine's
rule exactly: per key, last-write-wins by timestamp, a tombstone on a tie, tombstones read
back with their timestamps, whatever the order of the batch and however it is cut.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from datastore import Engine, Entity, EntityRef, open_engine
from datastore.engines.hbase import BATCH_ROWS
from nxnw.services.endpoints import engine_url
from tests.conftest import require


@pytest.fixture
async def hbase(app_name: str, sqlite_dir: str) -> AsyncIterator[Engine]:
    require("hbase")
    engine = open_engine(engine_url("hbase", "n1", sqlite_dir))
    await engine.open()
    yield engine
    await engine.drop_app(app_name)
    await engine.close()


async def stored(engine: Engine, app: str) -> dict[bytes, Entity]:
    """Every row, tombstones included, by key."""
    out: dict[bytes, Entity] = {}
    for key_range in await engine.ranges(app):
        async for page in engine.scan(app, key_range, tombstones=True):
            out.update((e.key, e) for e in page)
    return out


def winners(*writes: list[Entity]) -> dict[bytes, Entity]:
    """What each key must hold after all ``writes``, in any order: ``Entity.wins_over``."""
    out: dict[bytes, Entity] = {}
    for batch in writes:
        for entity in batch:
            if entity.wins_over(out.get(entity.key)):
                out[entity.key] = entity
    return out


async def test_one_apply_of_rows_with_distinct_timestamps_is_last_write_wins_per_key(
        hbase: Engine, app_name: str) -> None:
    rng = random.Random(20_240_611)
    keys = [b"k%04d" % i for i in range(300)]
    timestamps = iter(rng.sample(range(1_000_000, 9_000_000), 2_000))  # all distinct

    def write(key: bytes) -> Entity:
        value = None if rng.random() < 0.3 else rng.randbytes(rng.randrange(0, 2048))
        return Entity(app_name, "Bulk", key, value, next(timestamps))

    # What N2 already holds: values and tombstones, many of them newer than the batch's rows.
    before = [write(key) for key in keys[:200]]
    await hbase.apply(before)
    # One batch, several rows per key in shuffled order, cut into several gateway calls.
    batch = [write(rng.choice(keys)) for _ in range(3 * BATCH_ROWS)]
    rng.shuffle(batch)
    assert any(not e.wins_over(winners(before).get(e.key)) for e in batch), "some rows must be older"
    assert any(e.deleted for e in batch) and any(not e.deleted for e in batch)

    await hbase.apply(batch)

    expected = winners(before, batch)
    assert await stored(hbase, app_name) == expected
    for key in rng.sample(sorted(expected), 20):
        assert await hbase.read(EntityRef(app_name, "Bulk", key)) == expected[key]


@pytest.mark.parametrize("tombstone_first", [True, False])
async def test_equal_timestamp_tombstone_and_value_in_one_apply_resolve_to_the_tombstone(
        hbase: Engine, app_name: str, tombstone_first: bool) -> None:
    value = Entity(app_name, "Bulk", b"tie", b"value", 5_000)
    tombstone = Entity(app_name, "Bulk", b"tie", None, 5_000)
    others = [Entity(app_name, "Bulk", b"other%03d" % i, b"x", 6_000 + i) for i in range(BATCH_ROWS)]
    pair = [tombstone, value] if tombstone_first else [value, tombstone]
    # The pair split across two gateway calls as well as inside one.
    await hbase.apply([pair[0], *others, pair[1]])
    await hbase.apply(pair)

    assert await hbase.read(tombstone.ref) == tombstone
    assert await hbase.get(tombstone.ref) is None
