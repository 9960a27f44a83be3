"""Snapshot export, load and verify between real engines, with cow-style writes racing them."""

from __future__ import annotations

import asyncio
import io
import random

import pytest

from datastore import Engine, Entity, EntityRef, HybridLogicalClock, open_engine
from nxnw.services.endpoints import engine_url
from snapshot import (CorruptChunk, IncompleteStream, Loader, copy_app, encode, encode_manifest, export_chunks,
                      plan_ids, read_chunks, verify_app)
from tests.conftest import run_nxnw


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


async def test_repair_never_copies_to_n1_what_n1_did_not_write_and_says_what_remains(n1_n2: tuple[Engine, Engine],
                                                                                      app_name: str) -> None:
    n1, n2 = n1_n2
    await n1.apply([Entity(app_name, "V", b"older-on-n1", b"n1", 100), Entity(app_name, "V", b"only-n1", b"a", 100)])
    await n2.apply([Entity(app_name, "V", b"older-on-n1", b"written on N2 behind the proxy", 200),
                    Entity(app_name, "V", b"foreign", b"never on N1", 100),
                    Entity(app_name, "V", b"foreign-delete", None, 100)])

    report = await verify_app(n1, n2, app_name, repair=True)  # N1 primary: passthrough or cow
    assert report.counts() == {"missing on N2": 1, "missing on N1": 2, "stale on N1": 1}
    assert not report.ok and report.repaired == 1  # only-n1 went to N2; nothing went to N1
    assert sorted(d.label for d in report.remaining) == ["V/b'foreign'", "V/b'foreign-delete'", "V/b'older-on-n1'"]
    assert "V/b'foreign' (missing on N1; on N2 only" in report.summary()
    assert await n1.read(EntityRef(app_name, "V", b"foreign")) is None
    assert await n1.read(EntityRef(app_name, "V", b"foreign-delete")) is None
    assert (await n1.get(EntityRef(app_name, "V", b"older-on-n1"))).value == b"n1"

    # In proxy mode N2 is written first: a newer N2 copy of a key N1 holds is N1's to receive.
    report = await verify_app(n1, n2, app_name, repair=True, n2_primary=True)
    assert (await n1.get(EntityRef(app_name, "V", b"older-on-n1"))).value == b"written on N2 behind the proxy"
    assert sorted(d.label for d in report.remaining) == ["V/b'foreign'", "V/b'foreign-delete'"]
    assert await n1.read(EntityRef(app_name, "V", b"foreign")) is None


async def test_export_to_a_stream_and_load_from_it(n1_n2: tuple[Engine, Engine], app_name: str) -> None:
    n1, n2 = n1_n2
    await seed(n1, app_name, 300, HybridLogicalClock(3))
    stream = io.BytesIO()
    plan = plan_ids(await n1.ranges(app_name, at_least=4))
    stream.write(encode_manifest(app_name, plan))
    async for chunk in export_chunks(n1, app_name, plan, chunk_entities=50):
        stream.write(encode(chunk))
    stream.seek(0)

    async def chunks():
        for chunk in read_chunks(stream):
            yield chunk

    await Loader(n2, task="from-file").load(chunks())
    assert (await verify_app(n1, n2, app_name)).identical


async def test_a_load_with_no_worker_is_refused_instead_of_waiting_forever(n1_n2: tuple[Engine, Engine],
                                                                            app_name: str) -> None:
    n1, n2 = n1_n2
    await seed(n1, app_name, 20, HybridLogicalClock(2))
    with pytest.raises(ValueError, match="at least one worker, got 0"):
        await asyncio.wait_for(copy_app(n1, n2, app_name, task=f"none-{app_name}", load_workers=0), 30)


def test_a_chunk_with_one_flipped_byte_is_refused_naming_the_chunk() -> None:
    from datastore import KeyRange
    from snapshot import Chunk

    entities = [Entity("app", "K", b"k%d" % i, b"value" * 10, 1000 + i) for i in range(20)]
    manifest = encode_manifest("app", [("r00003", KeyRange("", ""))])
    chunk = encode(Chunk("app", "r00003", KeyRange("", ""), 7, [(e.row_key, e.value, e.ts) for e in entities], final=True))
    data = bytearray(manifest + chunk)
    good = list(read_chunks(io.BytesIO(bytes(data))))
    assert good[0].entities == entities
    for position in (len(manifest) + len(chunk) // 2, len(manifest) + 40, len(data) - 3):
        broken = bytearray(data)
        broken[position] ^= 0x01
        with pytest.raises(CorruptChunk, match=rf"chunk #1 at byte {len(manifest)}"):
            list(read_chunks(io.BytesIO(bytes(broken))))
    broken = bytearray(data)
    broken[len(manifest) + len(chunk) // 2] ^= 0x01
    with pytest.raises(CorruptChunk, match=r"range r00003, seq 7"):
        list(read_chunks(io.BytesIO(bytes(broken))))


def _frame_ends(data: bytes) -> list[int]:
    """Byte offsets at which each frame of a chunk file ends (the places a cut leaves frames whole)."""
    ends, pos = [], 0
    while pos < len(data):
        hlen = int.from_bytes(data[pos + 4:pos + 8], "big")
        plen = int.from_bytes(data[pos + 8 + hlen:pos + 12 + hlen], "big")
        pos += 12 + hlen + plen + 16
        ends.append(pos)
    return ends


async def test_loading_a_chunk_file_cut_short_exits_non_zero_naming_the_missing_ranges(sqlite_dir: str,
                                                                                       tmp_path, app_name: str) -> None:
    source, target = engine_url("sqlite", "n1", sqlite_dir), engine_url("sqlite", "n2", sqlite_dir)
    n1 = open_engine(source)
    await n1.open()
    try:
        await seed(n1, app_name, 400, HybridLogicalClock(4))
    finally:
        await n1.close()
    whole = tmp_path / "whole.chunks"
    exported = await asyncio.to_thread(run_nxnw, "snapshot", "export", "--from", source, "--app", app_name,
                                       "--out", str(whole), "--ranges", "8", "--workers", "1")
    assert exported.returncode == 0, exported.stderr
    data = whole.read_bytes()
    ends = _frame_ends(data)
    with open(whole, "rb") as stream:
        ranges = [c.range_id for c in read_chunks(stream) if c.final]
    assert len(ranges) >= 8
    # Cut between two frames (every frame left is sound), in the middle of a frame, and
    # before the manifest ended: each load must fail and say which ranges never ended.
    for name, cut in [("between-frames", ends[len(ends) // 2]), ("mid-frame", ends[len(ends) // 2] + 9),
                      ("no-manifest", 0)]:
        short = tmp_path / f"{name}.chunks"
        short.write_bytes(data[:cut])
        with open(short, "rb") as stream, pytest.raises(IncompleteStream) as incomplete:
            list(read_chunks(stream))
        missing = [rid for _, rid, _ in incomplete.value.missing]
        assert (missing == []) == (name == "no-manifest")
        assert set(missing) <= set(ranges) and ranges[-1] in missing or name == "no-manifest"
        loaded = await asyncio.to_thread(run_nxnw, "snapshot", "load", "--to", target, "--in", str(short))
        assert loaded.returncode == 2, (name, loaded.stdout, loaded.stderr)
        assert "Traceback" not in loaded.stderr
        assert ("without a manifest" in loaded.stderr) if name == "no-manifest" else (
            f"{len(missing)} range(s) lack their final chunk" in loaded.stderr and ranges[-1] in loaded.stderr)
    loaded = await asyncio.to_thread(run_nxnw, "snapshot", "load", "--to", target, "--in", str(whole))
    assert loaded.returncode == 0, loaded.stderr
    n1, n2 = open_engine(source), open_engine(target)
    await n1.open()
    await n2.open()
    try:
        assert (await verify_app(n1, n2, app_name)).identical
    finally:
        for engine in (n1, n2):
            await engine.drop_app(app_name)
            await engine.close()
