"""HBase batch writes: one ``apply`` of rows that each carry their own timestamp.

The HBase engine has two write paths, chosen at ``open``: through nxnw's gateway a whole
batch goes as ``mutateRowsTsEach`` calls (one per ``BATCH_ROWS`` rows, every row at its own
timestamp); through a stock Thrift1 server (the gateway's stock port, ``hbase-stock``) as one
``mutateRowsTs`` per distinct timestamp, then the markers. Every test here runs on both and
pins down that each path keeps the engine's rule exactly: per key, last-write-wins by
timestamp, a tombstone on a tie, the greater value on a tie between values, tombstones read
back with their timestamps, whatever the order of the batch and however it is cut.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from datastore import Engine, Entity, EntityRef, open_engine
from datastore.engines.hbase import BATCH_ROWS, FAMILY, BatchMutation, GatewayConnection, Mutation
from nxnw.services.endpoints import engine_url
from tests.conftest import require


@pytest.fixture(params=["hbase", "hbase-stock"])
async def hbase(request: pytest.FixtureRequest, app_name: str, sqlite_dir: str) -> AsyncIterator[Engine]:
    require("hbase")
    engine = open_engine(engine_url(request.param, "n1", sqlite_dir))
    await engine.open()
    assert engine.extension == (request.param == "hbase")
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


@pytest.mark.parametrize("greater_first", [True, False])
async def test_equal_timestamp_values_across_gateway_calls_resolve_to_the_greater_value(
        hbase: Engine, app_name: str, greater_first: bool) -> None:
    greater = Entity(app_name, "Bulk", b"tie", b"b", 5_000)
    lesser = Entity(app_name, "Bulk", b"tie", b"a", 5_000)
    others = [Entity(app_name, "Bulk", b"other%03d" % i, b"x", 6_000 + i) for i in range(BATCH_ROWS)]
    pair = [greater, lesser] if greater_first else [lesser, greater]
    await hbase.apply([pair[0], *others, pair[1]])
    await hbase.apply(pair)
    await hbase.apply(pair[:1])

    assert await hbase.read(greater.ref) == greater


async def test_a_row_reads_back_only_its_newest_cells(hbase: Engine, app_name: str) -> None:
    """Each write masks what it supersedes (a family marker just below it), whatever the
    arrival order, so a row never accumulates one visible cell per value it ever held."""
    ref = EntityRef(app_name, "Bulk", b"k")
    writes = [Entity(app_name, "Bulk", b"k", b"v%d" % ts, ts) for ts in (100, 300, 200)]
    writes.insert(2, Entity(app_name, "Bulk", b"k", None, 250))
    for entity in writes:
        await hbase.apply([entity])
    await hbase.apply([Entity(app_name, "Bulk", b"k", b"v300-tie", 300)])

    conn = GatewayConnection(hbase.host, hbase.port, 15_000)
    try:
        rows = conn.client.getRowWithColumns(hbase._table(app_name), ref.row_key, [FAMILY], {})
    finally:
        conn.close()
    assert {cell.timestamp for cell in rows[0].columns.values()} == {300}
    assert len(rows[0].columns) == 2
    assert await hbase.read(ref) == Entity(app_name, "Bulk", b"k", b"v300-tie", 300)


async def test_a_row_written_in_the_single_value_column_layout_reads_and_yields_by_timestamp(
        hbase: Engine, app_name: str) -> None:
    """Tables written before values had a column each hold the value in ``e:v``."""
    await hbase.put(Entity(app_name, "Bulk", b"other", b"x", 1))  # creates the table
    ref = EntityRef(app_name, "Bulk", b"legacy")
    conn = GatewayConnection(hbase.host, hbase.port, 15_000)
    try:
        conn.client.mutateRowsTs(hbase._table(app_name), [BatchMutation(
            row=ref.row_key, mutations=[Mutation(isDelete=False, column=b"e:v", value=b"old layout")])], 100, {})
    finally:
        conn.close()
    assert await hbase.read(ref) == Entity(app_name, "Bulk", b"legacy", b"old layout", 100)
    await hbase.put(Entity(app_name, "Bulk", b"legacy", b"older", 50))
    assert (await hbase.get(ref)).value == b"old layout"
    await hbase.put(Entity(app_name, "Bulk", b"legacy", b"newer", 200))
    assert await hbase.read(ref) == Entity(app_name, "Bulk", b"legacy", b"newer", 200)
