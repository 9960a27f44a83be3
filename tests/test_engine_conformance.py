"""The engine contract (datastore/engine.py), checked on every engine against its real server."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datastore import Checksum, Engine, Entity, EntityRef, InvalidEntity
from datastore.model import MAX_KEY_BYTES, MAX_VALUE_BYTES

KEY_BINARY = b"\xff\xfe\x00\x80 non-utf8 \xc3\x28"


async def stored(engine: Engine, app: str, tombstones: bool = False) -> list[Entity]:
    out: list[Entity] = []
    for key_range in await engine.ranges(app):
        async for page in engine.scan(app, key_range, tombstones=tombstones):
            out.extend(page)
    return out


@pytest.mark.parametrize("size", [0, 1, 1000, 100_000, 1_000_000])
async def test_values_and_binary_keys_round_trip(engine: Engine, app_name: str, size: int) -> None:
    value = bytes((i * 7 + 3) % 256 for i in range(size))
    entity = Entity(app_name, "Blob", KEY_BINARY + str(size).encode(), value, 1_700_000_000_000_001)
    await engine.put(entity)
    assert await engine.get(entity.ref) == entity
    assert await engine.write_time(entity.ref) == entity.ts


async def test_missing_key_reads_as_none(engine: Engine, app_name: str) -> None:
    await engine.put(Entity(app_name, "K", b"present", b"v", 10))
    assert await engine.get(EntityRef(app_name, "K", b"absent")) is None
    assert await engine.read(EntityRef(app_name, "K", b"absent")) is None


async def test_older_put_after_newer_put_changes_nothing(engine: Engine, app_name: str) -> None:
    ref = EntityRef(app_name, "K", b"k")
    await engine.put(Entity(app_name, "K", b"k", b"new", 200))
    await engine.put(Entity(app_name, "K", b"k", b"old", 100))
    assert (await engine.get(ref)).value == b"new"
    assert await engine.write_time(ref) == 200


async def test_older_put_after_newer_delete_stays_deleted(engine: Engine, app_name: str) -> None:
    ref = EntityRef(app_name, "K", b"k")
    await engine.put(Entity(app_name, "K", b"k", b"v1", 100))
    await engine.delete(ref, 300)
    await engine.put(Entity(app_name, "K", b"k", b"late snapshot row", 200))
    assert await engine.get(ref) is None
    assert await engine.read(ref) == Entity(app_name, "K", b"k", None, 300)


async def test_newer_put_after_delete_is_visible(engine: Engine, app_name: str) -> None:
    ref = EntityRef(app_name, "K", b"k")
    await engine.delete(ref, 300)
    await engine.put(Entity(app_name, "K", b"k", b"reborn", 400))
    assert (await engine.get(ref)).value == b"reborn"


@pytest.mark.parametrize("delete_first", [True, False])
async def test_equal_timestamp_tombstone_wins_in_either_order(engine: Engine, app_name: str, delete_first: bool) -> None:
    ref = EntityRef(app_name, "K", b"tie")
    put = Entity(app_name, "K", b"tie", b"value", 500)
    tomb = Entity(app_name, "K", b"tie", None, 500)
    for entity in ([tomb, put] if delete_first else [put, tomb]):
        await engine.apply([entity])
    assert await engine.read(ref) == tomb


#: Pairs of values written at one timestamp, the greater (byte-wise, unsigned) first: the
#: one every engine must keep, as Cassandra does. A prefix, a high bit and the empty value
#: pin down "byte-wise": shorter prefix first, bytes compared unsigned.
TIED_VALUES = [(b"b", b"a"), (b"ab", b"a"), (b"\xff", b"\x7f\xff"), (b"x", b"")]
TIE_TS = 700


def tied_writes(app: str, batches: str, order: str) -> list[list[Entity]]:
    """For each pair in ``TIED_VALUES`` (one key per pair), its two writes at ``TIE_TS`` in
    ``order`` ("greater first" or "lesser first"), as one batch or as two."""
    first, second = [], []
    for i, (greater, lesser) in enumerate(TIED_VALUES):
        key = b"tie%d" % i
        a, b = (greater, lesser) if order == "greater first" else (lesser, greater)
        first.append(Entity(app, "T", key, a, TIE_TS))
        second.append(Entity(app, "T", key, b, TIE_TS))
    return [first + second] if batches == "one batch" else [first, second]


def tie_winners(app: str) -> list[Entity]:
    return [Entity(app, "T", b"tie%d" % i, greater, TIE_TS) for i, (greater, _) in enumerate(TIED_VALUES)]


@pytest.mark.parametrize("batches", ["one batch", "two batches"])
@pytest.mark.parametrize("order", ["greater first", "lesser first"])
async def test_equal_timestamp_values_resolve_to_the_greater_value(engine: Engine, app_name: str,
                                                                    batches: str, order: str) -> None:
    for batch in tied_writes(app_name, batches, order):
        await engine.apply(batch)
    expected = tie_winners(app_name)
    for entity in expected:
        assert await engine.read(entity.ref) == entity
    assert sorted(await stored(engine, app_name, tombstones=True), key=lambda e: e.key) == expected


async def test_equal_timestamp_values_read_scan_and_checksum_alike_on_every_engine(
        all_engines: dict[str, Engine], app_name: str) -> None:
    # Each engine gets the ties in every arrival order and batching, each case on its own kind.
    cases = [(batches, order) for batches in ("one batch", "two batches") for order in ("greater first", "lesser first")]
    views = {}
    for name, engine in all_engines.items():
        for n, (batches, order) in enumerate(cases):
            for batch in tied_writes(app_name, batches, order):
                await engine.apply([Entity(e.app, f"T{n}", e.key, e.value, e.ts) for e in batch])
        refs = [EntityRef(app_name, f"T{n}", e.key) for n in range(len(cases)) for e in tie_winners(app_name)]
        views[name] = (
            [await engine.read(ref) for ref in refs],
            sorted(await stored(engine, app_name, tombstones=True), key=lambda e: (e.kind, e.key)),
            await engine.table_checksum(app_name),
        )
    assert views["sqlite"] == views["cassandra"] == views["hbase"] == views["hbase-stock"], views
    assert all(e.value == greater for e, (greater, _) in zip(views["sqlite"][0], TIED_VALUES * len(cases)))


writes = st.lists(st.tuples(st.sampled_from([b"k1", b"k2"]), st.sampled_from([None, b"", b"a", b"ab", b"b", b"\xff"]),
                             st.integers(min_value=1, max_value=3)), min_size=1, max_size=10)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=writes, cuts=st.sets(st.integers(min_value=1, max_value=9), max_size=3))
async def test_any_writes_in_any_batches_end_where_wins_over_says_on_every_engine(
        all_engines: dict[str, Engine], app_name: str, history: list, cuts: set[int]) -> None:
    kind = f"P{uuid.uuid4().hex[:8]}"  # the app outlives the examples; each example its own kind
    entities = [Entity(app_name, kind, key, value, ts) for key, value, ts in history]
    edges = [0, *sorted(c for c in cuts if c < len(entities)), len(entities)]
    expected: dict[bytes, Entity] = {}
    for entity in entities:
        if entity.wins_over(expected.get(entity.key)):
            expected[entity.key] = entity
    for name, engine in all_engines.items():
        for lo, hi in zip(edges, edges[1:]):
            await engine.apply(entities[lo:hi])
        for key, entity in expected.items():
            assert await engine.read(EntityRef(app_name, kind, key)) == entity, name


async def test_replayed_write_is_idempotent(engine: Engine, app_name: str) -> None:
    entity = Entity(app_name, "K", b"k", b"same", 600)
    await engine.apply([entity, entity])
    await engine.put(entity)
    assert await stored(engine, app_name) == [entity]


async def test_batch_applies_each_entity_last_write_wins(engine: Engine, app_name: str) -> None:
    await engine.put(Entity(app_name, "K", b"a", b"newer", 900))
    await engine.apply([
        Entity(app_name, "K", b"a", b"older", 800),
        Entity(app_name, "K", b"b", b"fresh", 800),
        Entity(app_name, "K", b"c", None, 800),
    ])
    got = {e.key: e for e in await stored(engine, app_name, tombstones=True)}
    assert got[b"a"].value == b"newer"
    assert got[b"b"].value == b"fresh"
    assert got[b"c"].deleted


async def test_scan_hides_tombstones_unless_asked(engine: Engine, app_name: str) -> None:
    await engine.apply([Entity(app_name, "K", b"live", b"v", 10), Entity(app_name, "K", b"gone", None, 10)])
    assert [e.key for e in await stored(engine, app_name)] == [b"live"]
    assert sorted(e.key for e in await stored(engine, app_name, tombstones=True)) == [b"gone", b"live"]


key_sets = st.sets(st.binary(min_size=1, max_size=24), min_size=0, max_size=60)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=key_sets, at_least=st.integers(min_value=1, max_value=9), late=st.sets(st.binary(min_size=1, max_size=8), max_size=5))
async def test_ranges_cover_the_table_exactly_once(engine: Engine, app_name: str, keys: set[bytes], at_least: int, late: set[bytes]) -> None:
    await engine.drop_app(app_name)
    await engine.apply([Entity(app_name, "R", k, b"x", 1000) for k in keys])
    ranges = await engine.ranges(app_name, at_least=at_least)
    assert len(ranges) >= at_least
    late_keys = {b"late:" + k for k in late}
    await engine.apply([Entity(app_name, "R", k, None, 1000) for k in late_keys])
    seen: list[bytes] = []
    for key_range in ranges:
        async for page in engine.scan(app_name, key_range, page_size=7, tombstones=True):
            seen.extend(e.key for e in page)
    assert sorted(seen) == sorted(keys | late_keys)


CONTENT = [
    (b"a", b"alpha", 1001),
    (b"\x00\xff", b"", 1002),
    (b"deleted", None, 1003),
    (b"big", bytes(range(256)) * 40, 1004),
]


def content(app: str) -> list[Entity]:
    return [Entity(app, "C", k, v, ts) for k, v, ts in CONTENT]


async def test_equal_content_has_equal_checksums_on_different_engines(all_engines: dict[str, Engine], app_name: str) -> None:
    sums = {}
    for name, engine in all_engines.items():
        await engine.apply(content(app_name))
        sums[name] = await engine.table_checksum(app_name)
    assert len(set(sums.values())) == 1, sums
    assert sums["sqlite"].count == len(CONTENT)


@pytest.mark.parametrize("change", ["value byte", "timestamp", "tombstone"])
async def test_one_changed_byte_or_timestamp_changes_the_checksum(engine: Engine, app_name: str, change: str) -> None:
    await engine.apply(content(app_name))
    before = await engine.table_checksum(app_name)
    if change == "value byte":
        await engine.put(Entity(app_name, "C", b"a", b"alphA", 2000))
        await engine.put(Entity(app_name, "C", b"a", b"alpha", 2000 + 16))
    elif change == "timestamp":
        await engine.put(Entity(app_name, "C", b"a", b"alpha", 1001 + 16))
    else:
        await engine.delete(EntityRef(app_name, "C", b"a"), 1001)
    assert await engine.table_checksum(app_name) != before


def unchecked(app: object, kind: object, key: object, value: object, ts: object) -> Entity:
    """An ``Entity`` built without its constructor's checks, as a bug, a hand-made object or
    an unpickled one could hand it to ``apply``: the engine must still refuse it."""
    entity = object.__new__(Entity)
    for field, field_value in zip(("app", "kind", "key", "value", "ts"), (app, kind, key, value, ts)):
        object.__setattr__(entity, field, field_value)
    return entity


@pytest.mark.parametrize(
    ("build", "limit"),
    [
        (lambda app: unchecked(app, "K", b"", b"v", 1), "1 to 1024 bytes"),
        (lambda app: unchecked(app, "K", b"k" * (MAX_KEY_BYTES + 1), b"v", 1), f"limit is {MAX_KEY_BYTES}"),
        (lambda app: unchecked(app, "K", b"k", b"v" * (MAX_VALUE_BYTES + 1), 1), f"limit is {MAX_VALUE_BYTES}"),
        (lambda app: unchecked(app.upper(), "K", b"k", b"v", 1), "must match"),
        (lambda app: unchecked(app + "-x", "K", b"k", b"v", 1), "must match"),
        (lambda app: unchecked(app, "bad kind!", b"k", b"v", 1), "must match"),
        (lambda app: unchecked(app, "K\x00x", b"k", b"v", 1), "must match"),
        (lambda app: unchecked(app, "K", b"k", b"v", 0), "microseconds"),
        (lambda app: unchecked(app, "K", b"k", b"v", 2**63), "microseconds"),
        (lambda app: unchecked(app, "K", "text key", b"v", 1), "must be bytes"),
        (lambda app: unchecked(app, "K", b"k", "text value", 1), "must be bytes"),
        (lambda app: (app, "K", b"k", b"v", 1), "not an Entity"),
    ],
)
async def test_bad_input_is_refused_naming_the_limit_and_writes_nothing(engine: Engine, app_name: str, build, limit: str) -> None:
    await engine.put(Entity(app_name, "K", b"witness", b"v", 1))
    # The valid entity comes first: an engine that wrote as it went would have written it.
    with pytest.raises(InvalidEntity, match=limit):
        await engine.apply([Entity(app_name, "K", b"k", b"v", 5), build(app_name)])
    assert [e.key for e in await stored(engine, app_name, tombstones=True)] == [b"witness"]


@pytest.mark.parametrize(
    ("build", "limit"),
    [
        (lambda app: Entity(app, "K", b"", b"v", 1), "1 to 1024 bytes"),
        (lambda app: Entity(app, "K", b"k", b"v" * (MAX_VALUE_BYTES + 1), 1), f"limit is {MAX_VALUE_BYTES}"),
        (lambda app: Entity(app.upper(), "K", b"k", b"v", 1), "must match"),
        (lambda app: Entity(app, "K", b"k", b"v", 0), "microseconds"),
    ],
)
def test_the_entity_constructor_refuses_bad_input_naming_the_limit(app_name: str, build, limit: str) -> None:
    with pytest.raises(InvalidEntity, match=limit):
        build(app_name)


async def test_rows_in_a_batch_apply_last_write_wins_and_scan_back_as_rows(engine: Engine, app_name: str) -> None:
    """``apply_rows``/``scan_rows``, the snapshot's bulk paths, keep ``apply``'s rule: an older
    row after a newer write changes nothing, a tombstone row is a row; 40 rows take an
    engine's bulk path, not its single-write one."""
    await engine.apply([Entity(app_name, "K", b"a", b"newer", 900), Entity(app_name, "K", b"gone", None, 900)])
    rows = [(b"K\x00a", b"older", 800), (b"K\x00gone", b"back", 800), (b"K\x00c", None, 800)]
    rows += [(b"L\x00n%02d" % i, b"v%d" % i, 700 + i) for i in range(40)]
    await engine.apply_rows(app_name, rows)
    scanned = []
    for key_range in await engine.ranges(app_name, at_least=3):
        async for page in engine.scan_rows(app_name, key_range, page_size=7):
            scanned.extend(page)
    expected = [(b"K\x00a", b"newer", 900), (b"K\x00gone", None, 900), (b"K\x00c", None, 800), *rows[3:]]
    assert sorted(scanned, key=repr) == sorted(expected, key=repr)
    assert await engine.table_checksum(app_name) == Checksum.of(await stored(engine, app_name, tombstones=True))


@pytest.mark.parametrize(
    ("bad", "limit"),
    [
        ((b"K\x00", b"v", 1), "1 to 1024 bytes"),
        ((b"\x00k", b"v", 1), "must match"),
        ((b"no separator", b"v", 1), "no kind separator"),
        ((b"\xff\x00k", b"v", 1), "can't decode"),
        ((b"K\x00k", b"v" * (MAX_VALUE_BYTES + 1), 1), f"limit is {MAX_VALUE_BYTES}"),
        ((b"K\x00k", "text value", 1), "must be bytes"),
        ((b"K\x00k", b"v", 0), "microseconds"),
        ((b"K\x00k", b"v", 1, 2), "not a \\(row key, value, timestamp\\) row"),
    ],
)
async def test_a_bad_row_refuses_the_whole_batch_naming_the_limit(engine: Engine, app_name: str, bad, limit: str) -> None:
    await engine.put(Entity(app_name, "K", b"witness", b"v", 1))
    good = [(b"K\x00g%02d" % i, b"v", 5) for i in range(20)]  # enough rows for the bulk path
    with pytest.raises(InvalidEntity, match=rf"batch row 20: .*{limit}"):
        await engine.apply_rows(app_name, [*good, bad])
    assert [e.key for e in await stored(engine, app_name, tombstones=True)] == [b"witness"]
