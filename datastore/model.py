"""The entity model and its limits: the one place where bad input is stopped.

Every entity is checked when it is constructed, and every batch again when it reaches
``Engine.apply`` (``check_batch``: an object built around the constructor, or not an
``Entity`` at all, is refused there with the whole batch), so an engine never sees an
empty key, an oversized value or an app name that its table naming cannot carry. Errors name the limit and the offending value, so
that the proxy can answer a 4xx with the reason and the CLI can print one line.

A deletion is an entity whose ``value`` is ``None``: a tombstone with its own timestamp,
stored and exported like any other write, so that a snapshot row or a repair older than
the delete can never bring the key back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: App names become table names (Cassandra caps them at 48 characters, lower case).
APP_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,47}")
#: Kind names are joined to keys with a NUL byte, so they may not contain one.
KIND_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,99}")
MAX_KEY_BYTES = 1024
MAX_VALUE_BYTES = 1024 * 1024
#: Timestamps are microseconds since the epoch and must fit a signed 64-bit integer.
MAX_TIMESTAMP = 2**63 - 1


class InvalidEntity(ValueError):
    """Input that must never reach an engine; the message names the limit it broke."""


def check_app(app: str) -> str:
    if not isinstance(app, str) or not APP_PATTERN.fullmatch(app):
        raise InvalidEntity(f"app {app!r} must match {APP_PATTERN.pattern} (lower-case letter, then up to 47 of a-z 0-9 _)")
    return app


def check_kind(kind: str) -> str:
    if not isinstance(kind, str) or not KIND_PATTERN.fullmatch(kind):
        raise InvalidEntity(f"kind {kind!r} must match {KIND_PATTERN.pattern} (a letter, then up to 99 of A-Z a-z 0-9 _ . -)")
    return kind


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes):
        raise InvalidEntity(f"key must be bytes, not {type(key).__name__}")
    if not key:
        raise InvalidEntity("key is empty; keys are 1 to 1024 bytes")
    if len(key) > MAX_KEY_BYTES:
        raise InvalidEntity(f"key is {len(key)} bytes; the limit is {MAX_KEY_BYTES}")
    return key


def check_value(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise InvalidEntity(f"value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_VALUE_BYTES:
        raise InvalidEntity(f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES} (1 MiB)")
    return value


def check_ts(ts: int) -> int:
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts <= MAX_TIMESTAMP:
        raise InvalidEntity(f"timestamp {ts!r} must be an integer of microseconds in 1..2**63-1")
    return ts


def check_batch(entities: Sequence[object]) -> None:
    """Check every entity of a batch before any of it is written; the error names the
    position of the first bad one. The loop is the hot path of a snapshot load, so it only
    filters: app and kind names are checked once per batch, and anything that does not
    plainly pass goes through the ``check_*`` functions, which say what is wrong."""
    names: set[tuple[str, str]] = set()
    for i, entity in enumerate(entities):
        if type(entity) is Entity:
            app, kind, key, value, ts = entity.app, entity.kind, entity.key, entity.value, entity.ts
            if (type(app) is str and type(kind) is str and (app, kind) in names
                    and type(key) is bytes and 0 < len(key) <= MAX_KEY_BYTES
                    and (value is None or (type(value) is bytes and len(value) <= MAX_VALUE_BYTES))
                    and type(ts) is int and 0 < ts <= MAX_TIMESTAMP):
                continue
        try:
            if not isinstance(entity, Entity):
                raise InvalidEntity(f"{type(entity).__name__} {entity!r:.80} is not an Entity")
            check_app(entity.app)
            check_kind(entity.kind)
            check_key(entity.key)
            check_value(entity.value)
            check_ts(entity.ts)
        except InvalidEntity as exc:
            raise InvalidEntity(f"batch entity {i}: {exc}; nothing of the batch was written") from None
        names.add((entity.app, entity.kind))


#: One stored write as the bulk paths carry it (a snapshot's chunks, ``Engine.scan_rows``,
#: ``Engine.apply_rows``): the row key (kind NUL key), the value or ``None`` for a
#: tombstone, the timestamp. The app is the batch's.
Row = tuple[bytes, bytes | None, int]


def check_rows(app: str, rows: Sequence[object]) -> None:
    """``check_batch`` for rows of one app: every row is checked before any is written, and
    the error names the position of the first bad one. As in ``check_batch``, the loop only
    filters (each kind is checked once per batch); a row that does not plainly pass goes
    through ``Entity.from_row``, which says what is wrong. (Checking column by column with
    ``map`` and ``zip`` was measured slower: it walks the batch once per check.)"""
    check_app(app)
    kinds: set[bytes] = set()
    for i, row in enumerate(rows):
        if type(row) is tuple and len(row) == 3:
            row_key, value, ts = row
            if type(row_key) is bytes:
                cut = row_key.find(b"\x00")
                if (cut > 0 and row_key[:cut] in kinds and 0 < len(row_key) - cut - 1 <= MAX_KEY_BYTES
                        and (value is None or (type(value) is bytes and len(value) <= MAX_VALUE_BYTES))
                        and type(ts) is int and 0 < ts <= MAX_TIMESTAMP):
                    continue
        try:
            if type(row) is not tuple or len(row) != 3:
                raise InvalidEntity(f"{type(row).__name__} {row!r:.80} is not a (row key, value, timestamp) row")
            if type(row[0]) is not bytes:
                raise InvalidEntity(f"row key must be bytes, not {type(row[0]).__name__}")
            Entity.from_row(app, *row)
        except (InvalidEntity, UnicodeDecodeError) as exc:
            raise InvalidEntity(f"batch row {i}: {exc}; nothing of the batch was written") from None
        kinds.add(row[0].partition(b"\x00")[0])


@dataclass(frozen=True, slots=True)
class EntityRef:
    """Where an entity lives: app (its table), kind, key."""

    app: str
    kind: str
    key: bytes

    def __post_init__(self) -> None:
        check_app(self.app)
        check_kind(self.kind)
        check_key(self.key)

    @property
    def row_key(self) -> bytes:
        """The key inside the app's table; NUL cannot occur in a kind, so this is unambiguous."""
        return self.kind.encode() + b"\x00" + self.key


@dataclass(frozen=True, slots=True)
class Entity:
    """One write: a value, or a tombstone (``value is None``), at a timestamp in µs."""

    app: str
    kind: str
    key: bytes
    value: bytes | None
    ts: int

    def __post_init__(self) -> None:
        check_app(self.app)
        check_kind(self.kind)
        check_key(self.key)
        check_value(self.value)
        check_ts(self.ts)

    @property
    def deleted(self) -> bool:
        return self.value is None

    @property
    def ref(self) -> EntityRef:
        return EntityRef(self.app, self.kind, self.key)

    @property
    def row_key(self) -> bytes:
        return self.kind.encode() + b"\x00" + self.key

    @classmethod
    def from_row(cls, app: str, row_key: bytes, value: bytes | None, ts: int) -> "Entity":
        """Rebuild an entity from an engine row; the inverse of ``row_key``."""
        kind, sep, key = row_key.partition(b"\x00")
        if not sep:
            raise InvalidEntity(f"row key {row_key!r} in app {app!r} has no kind separator")
        return cls(app, kind.decode(), key, value, ts)

    def wins_over(self, other: "Entity | None") -> bool:
        """Last-write-wins, the rule every engine applies: the newer timestamp wins; at an
        equal timestamp a tombstone wins over a value, and between two values the greater
        one, compared byte-wise (unsigned, a prefix before its extensions), which is
        Cassandra's own cell rule. The writer clock makes ties between different writes
        rare (a writer id in the low bits), but one request may still carry two values for
        one key, and N1 and N2 must then keep the same one whatever the arrival order."""
        if other is None:
            return True
        if self.ts != other.ts:
            return self.ts > other.ts
        if self.value is None or other.value is None:
            return self.value is None and other.value is not None
        return self.value > other.value
