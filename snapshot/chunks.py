"""The chunk stream: how a snapshot travels from N1 to N2, through a file or a pipe.

A stream is a manifest followed by self-contained, individually verified chunks. Each
chunk holds the entities of one slice of one key range of one app, tombstones included, so
that a delete travels with the snapshot and can never be undone by it.

Completeness. A stream cut short between two frames still parses, so every frame being
sound says nothing about the stream being whole. The **manifest** (written first) names
every range the stream carries, and every range ends with a chunk marked ``final``. At
the end of the stream ``read_chunks`` raises ``IncompleteStream`` naming each announced
range whose final chunk never came; a stream with no manifest (cut before its first
frame, or written before manifests existed) is refused the same way. So a truncated file
can never pass for a whole snapshot: the loader stops with the missing ranges named, and
those ranges are never checkpointed (a range is checkpointed only once its final chunk is
applied), so a rerun with a whole file redoes exactly them.

Frame of the manifest: the chunk frame below with header
``{"kind": "manifest", "app", "ranges": [[range_id, start, end], ...], "count": 0,
"raw_bytes": 0, "codec": "zstd"}`` and an empty payload. Several manifests may appear
(streams of several apps concatenated); a chunk of a range no manifest announced is
refused as corrupt.

Frame of one chunk (all integers big-endian)::

    4 bytes   magic  b"NXC1"
    4 bytes   H, length of the header
    H bytes   header, UTF-8 JSON: {"kind": "chunk", "app", "range_id", "range": [start, end], "seq",
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
is applied; a record that is not a valid row (``check_rows``: the entity checks) is refused
the same way. This module must never hand out a row that did not pass both checks, nor
end a stream without saying which announced ranges it lacks.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from datastore import Entity, InvalidEntity, KeyRange, Row
from datastore.model import check_rows

MAGIC = b"NXC1"
TOMBSTONE = 0xFFFFFFFF
_U32 = struct.Struct(">I")
_RECORD_HEAD = struct.Struct(">H")
_RECORD_TAIL = struct.Struct(">QI")
DIGEST_BYTES = 16


class CorruptChunk(ValueError):
    """A chunk failed its integrity check or could not be parsed."""


class IncompleteStream(CorruptChunk):
    """The stream ended without the final chunk of some announced ranges (or without a manifest).

    ``missing`` lists ``(app, range_id, KeyRange)`` of every range whose final chunk never came.
    """

    def __init__(self, message: str, missing: list[tuple[str, str, KeyRange]]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True, slots=True)
class Chunk:
    """A slice of one range of one app, as rows (``Row``: row key, value or None, timestamp):
    the form both engines' bulk paths take, so a copy builds no ``Entity`` per row."""

    app: str
    range_id: str
    key_range: KeyRange
    seq: int
    rows: list[Row]
    final: bool = False

    @property
    def name(self) -> str:
        return f"chunk {self.seq} of range {self.range_id} {self.key_range} of app {self.app}"

    @property
    def entities(self) -> list[Entity]:
        """The rows as entities (each checked as ``Entity`` checks its fields)."""
        return [Entity.from_row(self.app, *row) for row in self.rows]


def _records(rows: list[Row]) -> bytes:
    parts: list[bytes] = []
    for rk, value, ts in rows:
        parts.append(_RECORD_HEAD.pack(len(rk)))
        parts.append(rk)
        if value is None:
            parts.append(_RECORD_TAIL.pack(ts, TOMBSTONE))
        else:
            parts.append(_RECORD_TAIL.pack(ts, len(value)))
            parts.append(value)
    return b"".join(parts)


def encode(chunk: Chunk, level: int = 1) -> bytes:
    raw = _records(chunk.rows)
    payload = zstandard.ZstdCompressor(level=level).compress(raw)
    header = json.dumps({
        "kind": "chunk", "app": chunk.app, "range_id": chunk.range_id, "range": [chunk.key_range.start, chunk.key_range.end],
        "seq": chunk.seq, "final": chunk.final, "count": len(chunk.rows), "raw_bytes": len(raw), "codec": "zstd",
    }, separators=(",", ":")).encode()
    return _frame(header, payload)


def _frame(header: bytes, payload: bytes) -> bytes:
    digest = hashlib.blake2b(header + payload, digest_size=DIGEST_BYTES).digest()
    return b"".join([MAGIC, _U32.pack(len(header)), header, _U32.pack(len(payload)), payload, digest])


def encode_manifest(app: str, plan: Sequence[tuple[str, KeyRange]]) -> bytes:
    """The frame that opens a stream: every range of ``app`` the chunks that follow carry."""
    header = json.dumps({"kind": "manifest", "app": app,
                         "ranges": [[range_id, r.start, r.end] for range_id, r in plan],
                         "count": 0, "raw_bytes": 0, "codec": "zstd"}, separators=(",", ":")).encode()
    return _frame(header, b"")


def _parse_records(app: str, raw: bytes, count: int, where: str) -> list[Row]:
    out: list[Row] = []
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
                if len(value) != vlen:
                    raise ValueError(f"value of {vlen} bytes cut at {len(value)}")
                pos += vlen
            out.append((rk, value, ts))
    except (struct.error, ValueError) as exc:
        raise CorruptChunk(f"{where}: bad record {len(out)}: {exc}") from exc
    if pos != len(raw):
        raise CorruptChunk(f"{where}: {len(raw) - pos} bytes left over after {count} records")
    try:
        check_rows(app, out)
    except InvalidEntity as exc:
        raise CorruptChunk(f"{where}: {exc}") from exc
    return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """The ranges of one app that the chunks after it carry, each to end with a final chunk."""

    app: str
    ranges: list[tuple[str, KeyRange]]


def decode_frame(header: bytes, payload: bytes, digest: bytes, where: str) -> Chunk | Manifest:
    if hashlib.blake2b(header + payload, digest_size=DIGEST_BYTES).digest() != digest:
        try:
            meta = json.loads(header)
            where = f"{where} (app {meta['app']}, range {meta['range_id']}, seq {meta['seq']})"
        except (ValueError, KeyError, TypeError):
            pass
        raise CorruptChunk(f"{where}: checksum mismatch; the chunk was changed or cut, nothing from it was applied")
    meta = json.loads(header)
    if meta.get("kind") == "manifest":
        try:
            return Manifest(meta["app"], [(str(rid), KeyRange(start, end)) for rid, start, end in meta["ranges"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptChunk(f"{where}: manifest does not list ranges as [id, start, end]: {exc}") from exc
    if meta.get("codec") != "zstd":
        raise CorruptChunk(f"{where}: unknown codec {meta.get('codec')!r}")
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=meta["raw_bytes"])
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"{where}: payload does not decompress: {exc}") from exc
    name = f"{where} (app {meta['app']}, range {meta['range_id']}, seq {meta['seq']})"
    rows = _parse_records(meta["app"], raw, meta["count"], name)
    return Chunk(meta["app"], meta["range_id"], KeyRange(*meta["range"]), meta["seq"], rows, bool(meta["final"]))


class _CutShort(Exception):
    """The stream ended inside a frame (internal: read_chunks turns it into IncompleteStream)."""


def _read_exact(stream: BinaryIO, n: int, where: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise _CutShort(f"{where}: stream ends after {len(data)} of {n} bytes")
    return data


def _missing(announced: dict[tuple[str, str], KeyRange], finished: set[tuple[str, str]]) -> list[tuple[str, str, KeyRange]]:
    return [(app, rid, r) for (app, rid), r in announced.items() if (app, rid) not in finished]


def _incomplete(why: str, missing: list[tuple[str, str, KeyRange]]) -> IncompleteStream:
    named = ", ".join(f"{app}/{rid} {r}" for app, rid, r in missing[:20])
    more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
    return IncompleteStream(f"{why}: {len(missing)} range(s) lack their final chunk: {named}{more}; "
                            "the stream was cut short or its writer stopped: load a whole one for these ranges",
                            missing)


def read_chunks(stream: BinaryIO) -> Iterator[Chunk]:
    """Yield verified chunks; at the end, raise IncompleteStream unless every announced range ended.

    The stream must open with a manifest; a chunk of a range no manifest announced is corrupt.
    """
    index = 0
    offset = 0
    announced: dict[tuple[str, str], KeyRange] = {}
    finished: set[tuple[str, str]] = set()
    manifests = 0
    while True:
        where = f"chunk #{index} at byte {offset}"
        try:
            magic = stream.read(4)
            if not magic:
                break
            if magic != MAGIC:
                raise CorruptChunk(f"{where}: bad magic {magic!r}, expected {MAGIC!r}")
            (hlen,) = _U32.unpack(_read_exact(stream, 4, where))
            header = _read_exact(stream, hlen, where)
            (plen,) = _U32.unpack(_read_exact(stream, 4, where))
            payload = _read_exact(stream, plen, where)
            digest = _read_exact(stream, DIGEST_BYTES, where)
        except _CutShort as cut:
            if not manifests:
                raise IncompleteStream(f"{cut}; no manifest came before it, so nothing says which ranges "
                                       "the stream should hold", []) from None
            raise _incomplete(str(cut), _missing(announced, finished)) from None
        frame = decode_frame(header, payload, digest, where)
        if isinstance(frame, Manifest):
            manifests += 1
            for range_id, key_range in frame.ranges:
                announced[(frame.app, range_id)] = key_range
        else:
            if (frame.app, frame.range_id) not in announced:
                raise CorruptChunk(f"{where}: {frame.name} belongs to no range a manifest announced")
            if frame.final:
                finished.add((frame.app, frame.range_id))
            yield frame
        index += 1
        offset += 4 + 4 + hlen + 4 + plen + DIGEST_BYTES
    if not manifests:
        raise IncompleteStream(f"stream ends after {offset} bytes without a manifest: it was cut before its first "
                               "frame, or written without one (not by `nxnw snapshot export`)", [])
    missing = _missing(announced, finished)
    if missing:
        raise _incomplete(f"stream ends cleanly after {index} frames at byte {offset}", missing)
