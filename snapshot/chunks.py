"""The chunk stream: how a snapshot travels from N1 to N2, through a file or a pipe.

A stream is a sequence of self-contained, individually verified chunks. Each chunk holds
the entities of one slice of one key range of one app, tombstones included, so that a
delete travels with the snapshot and can never be undone by it.

Frame of one chunk (all integers big-endian)::

    4 bytes   magic  b"NXC1"
    4 bytes   H, length of the header
    H bytes   header, UTF-8 JSON: {"app", "range_id", "range": [start, end], "seq",
              "final", "count", "raw_bytes", "codec": "zstd"}; ``final`` marks the last
              chunk of its range (an empty range still sends one, empty and final)
    4 bytes   P, length of the payload
    P bytes   payload: the records, compressed with zstd
    16 bytes  BLAKE2b-128 of header and payload

Record (inside the decompressed payload)::

    2 bytes   row key length K, then K bytes of row key (kind NUL key)
    8 bytes   write timestamp, µs
    4 bytes   value length V, then V bytes of value; V = 0xFFFFFFFF marks a tombstone

A chunk whose digest does not match is refused with ``CorruptChunk`` naming its position
(and, when its header still parses, its app, range and sequence number); nothing from it
is applied. This module must never hand out an entity that did not pass that check.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from datastore import Entity, KeyRange

MAGIC = b"NXC1"
TOMBSTONE = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_RECORD_HEAD = struct.Struct(">H")
_RECORD_TAIL = struct.Struct(">QI")
DIGEST_BYTES = 16


class CorruptChunk(ValueError):
    """A chunk failed its integrity check or could not be parsed."""


@dataclass(frozen=True, slots=True)
class Chunk:
    app: str
    range_id: str
    key_range: KeyRange
    seq: int
    entities: list[Entity]
    final: bool = False

    @property
    def name(self) -> str:
        return f"chunk {self.seq} of range {self.range_id} {self.key_range} of app {self.app}"


def _records(entities: list[Entity]) -> bytes:
    parts: list[bytes] = []
    for e in entities:
        rk = e.row_key
        parts.append(_RECORD_HEAD.pack(len(rk)))
        parts.append(rk)
        if e.value is None:
            parts.append(_RECORD_TAIL.pack(e.ts, TOMBSTONE))
        else:
            parts.append(_RECORD_TAIL.pack(e.ts, len(e.value)))
            parts.append(e.value)
    return b"".join(parts)


def encode(chunk: Chunk, level: int = 1) -> bytes:
    raw = _records(chunk.entities)
    payload = zstandard.ZstdCompressor(level=level).compress(raw)
    header = json.dumps({
        "app": chunk.app, "range_id": chunk.range_id, "range": [chunk.key_range.start, chunk.key_range.end],
        "seq": chunk.seq, "final": chunk.final, "count": len(chunk.entities), "raw_bytes": len(raw), "codec": "zstd",
    }, separators=(",", ":")).encode()
    digest = hashlib.blake2b(header + payload, digest_size=DIGEST_BYTES).digest()
    return b"".join([MAGIC, _U32.pack(len(header)), header, _U32.pack(len(payload)), payload, digest])


def _parse_records(app: str, raw: bytes, count: int, where: str) -> list[Entity]:
    out: list[Entity] = []
    pos = 0
    try:
        for _ in range(count):
            (klen,) = _RECORD_HEAD.unpack_from(raw, pos)
            pos += 2
            rk = raw[pos:pos + klen]
            pos += klen
            ts, vlen = _RECORD_TAIL.unpack_from(raw, pos)
            pos += 12
            if vlen == TOMBSTONE:
                value = None
            else:
                value = raw[pos:pos + vlen]
                pos += vlen
            out.append(Entity.from_row(app, rk, value, ts))
    except (struct.error, ValueError) as exc:
        raise CorruptChunk(f"{where}: bad record {len(out)}: {exc}") from exc
    if pos != len(raw):
        raise CorruptChunk(f"{where}: {len(raw) - pos} bytes left over after {count} records")
    return out


def decode_frame(header: bytes, payload: bytes, digest: bytes, where: str) -> Chunk:
    if hashlib.blake2b(header + payload, digest_size=DIGEST_BYTES).digest() != digest:
        try:
            meta = json.loads(header)
            where = f"{where} (app {meta['app']}, range {meta['range_id']}, seq {meta['seq']})"
        except (ValueError, KeyError, TypeError):
            pass
        raise CorruptChunk(f"{where}: checksum mismatch; the chunk was changed or cut, nothing from it was applied")
    meta = json.loads(header)
    if meta.get("codec") != "zstd":
        raise CorruptChunk(f"{where}: unknown codec {meta.get('codec')!r}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=meta["raw_bytes"])
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"{where}: payload does not decompress: {exc}") from exc
    name = f"{where} (app {meta['app']}, range {meta['range_id']}, seq {meta['seq']})"
    entities = _parse_records(meta["app"], raw, meta["count"], name)
    return Chunk(meta["app"], meta["range_id"], KeyRange(*meta["range"]), meta["seq"], entities, bool(meta["final"]))


def _read_exact(stream: BinaryIO, n: int, where: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise CorruptChunk(f"{where}: stream ends after {len(data)} of {n} bytes")
    return data


def read_chunks(stream: BinaryIO) -> Iterator[Chunk]:
    """Yield verified chunks until the stream ends cleanly between two chunks."""
    index = 0
    offset = 0
    while True:
        magic = stream.read(4)
        if not magic:
            return
        where = f"chunk #{index} at byte {offset}"
        if magic != MAGIC:
            raise CorruptChunk(f"{where}: bad magic {magic!r}, expected {MAGIC!r}")
        (hlen,) = _U32.unpack(_read_exact(stream, 4, where))
        header = _read_exact(stream, hlen, where)
        (plen,) = _U32.unpack(_read_exact(stream, 4, where))
        payload = _read_exact(stream, plen, where)
        digest = _read_exact(stream, DIGEST_BYTES, where)
        yield decode_frame(header, payload, digest, where)
        index += 1
        offset += 4 + 4 + hlen + 4 + plen + DIGEST_BYTES
