"""Snapshot export, load and verify between real engines, with cow-style writes racing them."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from datastore import Engine, Entity, EntityRef, HybridLogicalClock
from snapshot import CorruptChunk, Loader, copy_app, encode, export_chunks, plan_ids, read_chunks, verify_app


async def seed(n1: Engine, app: str, count: int, clock: HybridLogicalClock) -> None:
    batch = [Entity(app, "Item", b"k%05d" % i, b"v%d" % i * 20, clock.now()) for i in range(count)]
    await n1.apply(batch)
    await n1.apply([Entity(app, "Item", b"k%05d" % i, None, clock.now()) for i in range(0, count, 17)])


async def cow_writes(n1: Engine, n2: Engine, app: str, clock: HybridLogicalClock, rounds: int) -> set[bytes]:
    """What cow mode does: every write and delete goes to N1 and N2 with one timestamp."""
    rng = random.Random(7)
    deleted: set[bytes] = set()
    for _ in range(rounds):
        key = b"k%05d" % rng.randrange(600)
        if rng.random() < 0.3:
            entity = Entity(app, "Item", key, None, clock.now())
            deleted.add(key)
        else:
            entity = Entity(app, "Item", key, b"cow-%d" % rng.randrange(10**6), clock.now())
            deleted.discard(key)
        await asyncio.gather(n1.apply([entity]), n2.apply([entity]))
        await asyncio.sleep(0)
    return deleted


async def test_load_racing_cow_writes_ends_identical_with_no_deleted_key_back(n1_n2: tuple[Engine, Engine], app_name: str) -> None:
    n1, n2 = n1_n2
    clock = HybridLogicalClock(2)
    await seed(n1, app_name, 500, clock)
    copy = asyncio.create_task(copy_app(n1, n2, app_name, task=f"copy-{app_name}", at_least=8, load_workers=4))
    deleted = await cow_writes(n1, n2, app_name, clock, 300)
    stats = await copy
    assert stats.ranges_done == stats.ranges_total >= 8
    report = await verify_app(n1, n2, app_name)
    assert report.identical, report.summary()
    for key in deleted:
        assert await n2.get(EntityRef(app_name, "Item", key)) is None, key


async def test_verify_finds_each_kind_of_difference_and_repairs_by_timestamp(n1_n2: tuple[Engine, Engine], app_name: str) -> None:
    n1, n2 = n1_n2
    both = [Entity(app_name, "V", b"same", b"x", 100), Entity(app_name, "V", b"stale", b"old", 100)]
    await n1.apply(both + [Entity(app_name, "V", b"only-n1", b"a", 100), Entity(app_name, "V", b"stale", b"new", 200),
                           Entity(app_name, "V", b"deleted-on-n1", None, 300)])
    await n2.apply(both + [Entity(app_name, "V", b"deleted-on-n1", b"zombie", 250)])
    report = await verify_app(n1, n2, app_name, repair=True)
    assert report.counts() == {"missing on N2": 1, "stale on N2": 2}
    assert await n2.get(EntityRef(app_name, "V", b"deleted-on-n1")) is None
    assert (await n2.get(EntityRef(app_name, "V", b"stale"))).value == b"new"
    assert (await verify_app(n1, n2, app_name)).identical


async def test_export_to_a_stream_and_load_from_it(n1_n2: tuple[Engine, Engine], app_name: str) -> None:
    n1, n2 = n1_n2
    await seed(n1, app_name, 300, HybridLogicalClock(3))
    stream = io.BytesIO()
    async for chunk in export_chunks(n1, app_name, plan_ids(await n1.ranges(app_name, at_least=4)), chunk_entities=50):
        stream.write(encode(chunk))
    stream.seek(0)

    async def chunks():
        for chunk in read_chunks(stream):
            yield chunk

    await Loader(n2, task="from-file").load(chunks())
    assert (await verify_app(n1, n2, app_name)).identical


def test_a_chunk_with_one_flipped_byte_is_refused_naming_the_chunk() -> None:
    from datastore import KeyRange
    from snapshot import Chunk

    entities = [Entity("app", "K", b"k%d" % i, b"value" * 10, 1000 + i) for i in range(20)]
    data = bytearray(encode(Chunk("app", "r00003", KeyRange("", ""), 7, entities)))
    good = list(read_chunks(io.BytesIO(bytes(data))))
    assert good[0].entities == entities
    for position in (len(data) // 2, 40, len(data) - 3):
        broken = bytearray(data)
        broken[position] ^= 0x01
        with pytest.raises(CorruptChunk, match=r"chunk #0 at byte 0"):
            list(read_chunks(io.BytesIO(bytes(broken))))
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0x01
    with pytest.raises(CorruptChunk, match=r"range r00003, seq 7"):
        list(read_chunks(io.BytesIO(bytes(broken))))
