"""Small writes at the engines' own speed keep last-write-wins and durability.

Each engine is driven as the proxy drives it: many ``apply`` calls at once on one event
loop. SQLite's small writes run on the loop and its large ones on the engine's thread
(datastore/engines/sqlite.py), so the mixes below put both paths on the same keys at once.
A write the engine can finish without waiting (``Engine.apply_in_place``) is applied at once
or not at all, and a ``cow`` write (``proxy.routes.dual_apply``) then needs no task for it.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest

from datastore import Engine, Entity, EntityRef, EngineUnavailable, InvalidEntity, open_engine
from datastore.engines import sqlite as sqlite_engine
from proxy.routes import dual_apply
from tests.conftest import ENGINE_SERVICES, require
from nxnw.services.endpoints import engine_url

WRITE_ENGINES = ["sqlite", "cassandra"]


@pytest.fixture(params=WRITE_ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    require(*ENGINE_SERVICES[request.param])
    return request.param


@pytest.fixture
async def write_engine(engine_name: str, sqlite_dir: str, app_name: str):
    engine = open_engine(engine_url(engine_name, "n1", sqlite_dir))
    await engine.open()
    yield engine
    await engine.drop_app(app_name)
    await engine.close()


def mixed_writes(app: str, rng: random.Random) -> list[list[Entity]]:
    """200 applies on 8 keys at a handful of timestamps (ties included): puts and deletes,
    mostly one small entity, some of 20 entities or with a value larger than SQLite writes on
    the loop, so that both of its paths race on the same rows."""
    large = sqlite_engine.LOOP_MAX_BYTES + 1

    def entity(key: int) -> Entity:
        ts = rng.choice([100, 200, 300, 300, 400])
        if rng.random() < 0.2:
            return Entity(app, "K", b"k%d" % key, None, ts)
        size = large if rng.random() < 0.1 else rng.choice([0, 1, 100, 1024])
        return Entity(app, "K", b"k%d" % key, bytes([rng.randrange(256)]) * size, ts)

    batches = []
    for _ in range(200):
        count = 20 if rng.random() < 0.1 else 1
        batches.append([entity(rng.randrange(8)) for _ in range(count)])
    return batches


def winners(batches: list[list[Entity]]) -> dict[bytes, Entity]:
    won: dict[bytes, Entity] = {}
    for batch in batches:
        for entity in batch:
            if entity.wins_over(won.get(entity.key)):
                won[entity.key] = entity
    return won


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_applies_end_where_last_write_wins(write_engine: Engine, app_name: str, seed: int) -> None:
    batches = mixed_writes(app_name, random.Random(seed))
    await asyncio.gather(*(write_engine.apply(batch) for batch in batches))
    expected = winners(batches)
    for key, entity in expected.items():
        assert await write_engine.read(EntityRef(app_name, "K", key)) == entity


async def test_an_acknowledged_write_is_read_from_a_fresh_connection(
        write_engine: Engine, engine_name: str, sqlite_dir: str, app_name: str) -> None:
    batches = mixed_writes(app_name, random.Random(4))
    await asyncio.gather(*(write_engine.apply(batch) for batch in batches))
    # The writer stays open: nothing is flushed by closing it.
    fresh = open_engine(engine_url(engine_name, "n1", sqlite_dir))
    await fresh.open()
    try:
        for key, entity in winners(batches).items():
            assert await fresh.read(EntityRef(app_name, "K", key)) == entity
    finally:
        await fresh.close()


def sqlite_path(sqlite_dir: str) -> Path:
    return Path(sqlite_dir) / "n1.db"


async def test_sqlite_write_is_committed_when_apply_returns(sqlite_dir: str, app_name: str) -> None:
    engine = open_engine(engine_url("sqlite", "n1", sqlite_dir))
    await engine.open()
    try:
        batches = mixed_writes(app_name, random.Random(5))
        await asyncio.gather(*(engine.apply(batch) for batch in batches))
        # Read at once, from a connection of our own and without awaiting anything, so that
        # nothing the engine might still have scheduled on the loop can run first.
        reader = sqlite3.connect(sqlite_path(sqlite_dir))
        try:
            stored = dict(((rk, (value, ts)) for rk, value, ts in
                           reader.execute(f"SELECT rk, value, ts FROM e_{app_name}")))
        finally:
            reader.close()
        for entity in winners(batches).values():
            assert stored[entity.ref.row_key] == (entity.value, entity.ts)
    finally:
        await engine.drop_app(app_name)
        await engine.close()


async def test_sqlite_small_write_that_meets_another_writers_lock_lands_once_it_is_released(
        sqlite_dir: str, app_name: str) -> None:
    engine = open_engine(engine_url("sqlite", "n1", sqlite_dir))
    await engine.open()
    try:
        await engine.put(Entity(app_name, "K", b"k", b"before", 1))
        # Another writer holds the lock, on this very loop's thread: it can let go only when
        # the loop runs again, so the write must neither fail nor wait on the loop.
        holder = sqlite3.connect(sqlite_path(sqlite_dir), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(engine.put(Entity(app_name, "K", b"k", b"after", 2)))
        for _ in range(3):
            await asyncio.sleep(0)
        assert not write.done()
        holder.execute("COMMIT")
        holder.close()
        await write
        assert (await engine.get(EntityRef(app_name, "K", b"k"))).value == b"after"
    finally:
        await engine.drop_app(app_name)
        await engine.close()


async def test_sqlite_writes_after_another_connection_dropped_the_table(sqlite_dir: str, app_name: str) -> None:
    url = engine_url("sqlite", "n1", sqlite_dir)
    engine, other = open_engine(url), open_engine(url)
    await engine.open()
    await other.open()
    try:
        await engine.put(Entity(app_name, "K", b"k", b"first", 1))
        await other.drop_app(app_name)
        assert await engine.read(EntityRef(app_name, "K", b"k")) is None
        await engine.put(Entity(app_name, "K", b"k", b"again", 2))
        assert (await other.get(EntityRef(app_name, "K", b"k"))).value == b"again"
    finally:
        await engine.drop_app(app_name)
        await other.close()
        await engine.close()


async def test_sqlite_files_opened_by_several_connections_at_once_all_open(tmp_path: Path) -> None:
    """Several engines opening one new file at once (the demo's and the fault matrix's
    proxies start together): each asked for WAL mode, and SQLite answers one of them
    "database is locked" at once, without the busy timeout, when two ask together. A proxy
    then failed to start (once in a fault-matrix run of 80 cells; here ~0.6 % of opens)."""
    failed = []
    for i in range(400):
        engines = [open_engine(f"sqlite:///{tmp_path}/f{i}.db") for _ in range(8)]
        opened = await asyncio.gather(*(engine.open() for engine in engines), return_exceptions=True)
        failed += [result for result in opened if isinstance(result, BaseException)]
        for engine, result in zip(engines, opened):
            if not isinstance(result, BaseException):
                await engine.close()
    assert not failed, f"{len(failed)} of 3200 opens failed, e.g. {failed[0]}"


async def test_sqlite_loop_writes_keep_the_wal_checkpointed(tmp_path: Path, app_name: str) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/wal.db")
    await engine.open()
    try:
        for i in range(3 * sqlite_engine.CHECKPOINT_PAGES):
            await engine.put(Entity(app_name, "K", b"k%d" % (i % 500), b"v" * 100, i + 1))
        wal = tmp_path / "wal.db-wal"
        frame = 24 + 4096
        # Without checkpoints the WAL holds every commit's pages: ~2 per write here.
        assert wal.stat().st_size < 2 * sqlite_engine.CHECKPOINT_PAGES * frame
    finally:
        await engine.close()


# --- writes in place (Engine.apply_in_place) and the cow write's legs (proxy.routes.dual_apply) ---


async def test_apply_in_place_applies_now_or_leaves_nothing_written(write_engine: Engine, engine_name: str,
                                                                   sqlite_dir: str, app_name: str) -> None:
    await write_engine.apply([Entity(app_name, "K", b"k", b"before", 1)])
    ref = EntityRef(app_name, "K", b"k")
    done = write_engine.apply_in_place([Entity(app_name, "K", b"k", b"now", 2)])
    if engine_name != "sqlite":  # an engine that waits on the network never can
        assert done is False
        assert (await write_engine.read(ref)).value == b"before"
        return
    assert done is True
    # Committed before anything was awaited: another connection reads it at once.
    reader = sqlite3.connect(sqlite_path(sqlite_dir))
    try:
        assert reader.execute(f"SELECT value, ts FROM e_{app_name}").fetchall() == [(b"now", 2)]
    finally:
        reader.close()
    # Over the loop's bounds, or while another connection holds the write lock: nothing is written.
    too_large = Entity(app_name, "K", b"k", b"x" * (sqlite_engine.LOOP_MAX_BYTES + 1), 3)
    assert write_engine.apply_in_place([too_large]) is False
    holder = sqlite3.connect(sqlite_path(sqlite_dir), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert write_engine.apply_in_place([Entity(app_name, "K", b"k", b"locked out", 4)]) is False
        holder.execute("COMMIT")
    finally:
        holder.close()
    assert await write_engine.read(ref) == Entity(app_name, "K", b"k", b"now", 2)
    # An older write is applied in place as apply would: last-write-wins keeps the newer one.
    assert write_engine.apply_in_place([Entity(app_name, "K", b"k", b"older", 1)]) is True
    assert (await write_engine.read(ref)).value == b"now"
    with pytest.raises(InvalidEntity):
        write_engine.apply_in_place([EntityRef(app_name, "K", b"k")])  # type: ignore[list-item]


@pytest.fixture
async def sqlite_pair(tmp_path: Path, app_name: str):
    n1, n2 = open_engine(f"sqlite:///{tmp_path}/n1.db"), open_engine(f"sqlite:///{tmp_path}/n2.db")
    for engine in (n1, n2):
        await engine.open()
        await engine.apply([Entity(app_name, "K", b"k", b"0", 1)])  # the table exists
    yield n1, n2
    for engine in (n1, n2):
        await engine.close()


def counting_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
    created: list[asyncio.Task] = []

    def factory(loop: asyncio.AbstractEventLoop, coro, **kwargs) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        created.append(task)
        return task
    loop.set_task_factory(factory)
    return created


async def test_a_cow_write_whose_legs_both_apply_in_place_completes_without_a_task(sqlite_pair, app_name: str) -> None:
    n1, n2 = sqlite_pair
    loop = asyncio.get_running_loop()
    created = counting_tasks(loop)
    try:
        entity = Entity(app_name, "K", b"k", b"both", 2)
        assert await dual_apply(n1, n2, [entity]) is None
    finally:
        loop.set_task_factory(None)
    assert created == []
    assert await n1.read(entity.ref) == entity and await n2.read(entity.ref) == entity


async def test_a_cow_write_returns_the_secondary_failure_and_raises_the_primary_one(sqlite_pair, app_name: str) -> None:
    n1, n2 = sqlite_pair
    await n2.close()  # N2 fails in place (EngineUnavailable): returned for the journal, N1 holds the write
    entity = Entity(app_name, "K", b"k", b"n1 only", 2)
    assert isinstance(await dual_apply(n1, n2, [entity]), EngineUnavailable)
    assert await n1.read(entity.ref) == entity
    await n2.open()
    await n1.close()  # N1 fails in place: the request fails, and N2 is not written
    with pytest.raises(EngineUnavailable):
        await dual_apply(n1, n2, [Entity(app_name, "K", b"k", b"neither", 3)])
    assert (await n2.read(entity.ref)).value == b"0"
    await n1.open()


async def test_a_cow_write_whose_secondary_must_wait_lands_on_both_sides(sqlite_pair, tmp_path: Path,
                                                                         app_name: str) -> None:
    """N2's write lock is held by another connection: its leg goes to the engine thread and
    waits there, N1's is applied in place, and the write completes once the lock is released."""
    n1, n2 = sqlite_pair
    entity = Entity(app_name, "K", b"k", b"waited", 2)
    holder = sqlite3.connect(tmp_path / "n2.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    write = asyncio.ensure_future(dual_apply(n1, n2, [entity]))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not write.done()
    assert await n1.read(entity.ref) == entity
    holder.execute("COMMIT")
    holder.close()
    assert await write is None
    assert await n2.read(entity.ref) == entity
