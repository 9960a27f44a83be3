"""The history checker: did a migration lose, resurrect, invent or travel back in time?

A workload records every operation it made through the proxy — data writes, deletes and
reads, batches, entity-group transactions, memcache sets, deletes and gets — as ``Op``s in
a ``History``; the seeded data goes in too, as acknowledged writes (``History.seed``). At
the end, ``check(history, final_state)`` compares the history with what the side that now
serves holds (N2 after ``complete``, N1 after a rollback) and returns a ``Report``. This
is a small Jepsen-style checker for two models: a last-write-wins register per datastore
key, ordered by the proxy's integer timestamps (µs), and a plain register per cache key.

It never talks to a service and never mutates the history it is given.

Outcomes
--------
Every op has one of three outcomes, as the client saw it:

* ``ok`` -- acknowledged: it took effect at some instant between ``invoked_at`` and
  ``completed_at``, with the timestamp ``ts`` the proxy returned (data ops).
* ``failed`` -- it definitely did not happen: refused before any engine or memcached saw
  it (a 4xx; a 409 transaction conflict; a 503 whose JSON ``error`` says the proxy refused
  it before any engine call; a connection that was never opened). A failed op excuses
  nothing, so a trace of it (its value on a side, a read of it) is an anomaly.
* ``unknown`` -- an error, a timeout, a dropped connection, any 5xx without that marker:
  it may have taken effect at any instant after ``invoked_at`` -- possibly long after the
  client gave up -- or never; its ts is unknown unless the client recorded one.

The checker reports only what no choice of unknown outcomes could explain, so it has no
false alarms on a linearizable history (the property tests build such histories).

Batches and transactions are recorded as one op per key sharing ``batch`` (an id), one
outcome, one interval and, for writes, one ts. A committed transaction's reads are read
ops with the ts the transaction checked under its lock (``None``: the key was absent) and
no value; a conflicted one (409) is failed as a whole.

Anomalies, exactly as checked
-----------------------------
Datastore keys (ops ``write``, ``delete``, ``read``), key by key. ``W`` ranges over
acknowledged writes and deletes of the key. A delete *may cover* a ts ``F`` before an
instant ``t`` when it was acknowledged or unknown, was invoked before ``t``, and its ts is
unknown or greater than ``F``.

The final state is read once the workload has stopped, so every delete of the history
may cover a ts there; a read's excuse is limited to deletes invoked before it completed.

* **lost write** (``lost_writes``) --
  the ``W`` with the largest ts is a write ``(v, T)`` and the final state holds: no entity
  (unless some delete may cover ``T``), a ts < ``T``, or ``T`` with a value other than
  ``v``; or *real-time order* is broken: a write ``B`` invoked more than ``clock_bound``
  seconds after another ``W`` of the key was acknowledged got a ts not greater than
  ``W``'s (so B lost to an older write); or two ``W`` with different effects share a ts.
* **resurrected delete** (``resurrected_deletes``) -- the ``W`` with the largest ts is a
  delete ``D`` and the final state holds a value with ts <= ``D``; or a delete broke real
  time order as above.
* **unknown write** (``unknown_writes``) -- the final state holds ``(v, t)`` with ``t``
  greater than every ``W`` (or the key has no ``W`` at all: neither the workload nor the
  seed wrote it) and no unknown write of the key has value ``v`` (and ts ``t``, when it
  recorded one). A failed write with that value is named in the example.
* **stale read** (``stale_reads``) -- an acknowledged read ``R``, where ``W*`` is the
  ``W`` with the largest ts among those that *completed before R was invoked*: R returned
  ts ``T < W*.ts``; or R returned 404 while ``W*`` is a write no delete invoked before R
  completed may cover. Per client (monotonic reads): R returned a ts lower than the
  largest ts ``M`` the same client read for the key in reads completed before R was
  invoked; or 404 while no delete as above may cover ``M``.
* **phantom read** (``phantom_reads``) -- an acknowledged read returned a ts ``T`` that
  no write had: no ``W`` has ts ``T``, and no unknown write invoked before the read
  completed could have had it (its ts unknown or ``T``, its value the one read); or ``T``
  is the ts of a delete; or of a write invoked only after the read completed.
* **wrong-value read** (``wrong_value_reads``) -- an acknowledged read of ts ``T``
  returned a value other than the one the write at ``T`` wrote.

Cache keys (ops ``cache_set``, ``cache_delete``, ``cache_get``) have no timestamps; each
key is a register whose value the proxy's answers name. A miss is always allowed (memcached
may evict, expire or be flushed). For a hit ``R`` returning ``v``, a *candidate* is a set
of ``v`` that was acknowledged or unknown and invoked before R completed; an acknowledged
candidate ``S`` is *overwritten before R* when some acknowledged set or delete was
invoked after S completed and completed before R was invoked (a later set of the same
value is then a candidate itself). An unknown candidate is never overwritten (it may have
landed last).

* **phantom cache read** (``phantom_cache_reads``) -- a hit with no candidate.
* **stale cache read** (``stale_cache_reads``) -- a hit whose every candidate was
  overwritten before R: the value returned had been overwritten or deleted, through any
  instance and on either side, before the read began. Hits invoked inside one of the
  ``cache_unchecked`` intervals (monotonic seconds: e.g. a mode switch, while instances
  may still serve the cache from different sides) or overlapping one are not judged.

Values compare by bytes (``str`` as UTF-8); workloads give every write and set a value of
its own, so that a value names its write.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

OpKind = Literal["write", "delete", "read", "cache_set", "cache_delete", "cache_get"]
Outcome = Literal["ok", "failed", "unknown"]
AnomalyKind = Literal["lost-write", "resurrected-delete", "unknown-write", "stale-read", "phantom-read",
                      "wrong-value-read", "stale-cache-read", "phantom-cache-read"]
Value = bytes | str
FinalState = Mapping[str, tuple[Value, int] | None]

KINDS: tuple[str, ...] = get_args(OpKind)
OUTCOMES: tuple[str, ...] = get_args(Outcome)
CACHE_KINDS = ("cache_set", "cache_delete", "cache_get")
MAX_EXAMPLES = 20
SEED_CLIENT = "seed"

#: the counter each anomaly kind adds to; ``Report.ok`` is true when all of them are 0
COUNTERS: dict[str, str] = {
    "lost-write": "lost_writes", "resurrected-delete": "resurrected_deletes", "unknown-write": "unknown_writes",
    "stale-read": "stale_reads", "phantom-read": "phantom_reads", "wrong-value-read": "wrong_value_reads",
    "stale-cache-read": "stale_cache_reads", "phantom-cache-read": "phantom_cache_reads",
}


class HistoryError(ValueError):
    """An operation record that cannot be checked; the message names the op and the field."""


@dataclass(frozen=True)
class Op:
    """One operation as the client saw it.

    ``ts`` is the timestamp the proxy returned for a write/delete, the ``X-Nxnw-Timestamp``
    of a read (or the ts a transaction checked), and ``None`` for a read that got 404, for
    an op whose outcome is not ``ok`` (unless the client recorded one) and for cache ops.
    ``value`` is a write's or set's value, and what a read or cache get returned (``None``
    on a miss/404, or when the read's value was not recorded, as for transaction reads).
    ``invoked_at``/``completed_at`` are ``time.monotonic()`` seconds of one process.
    """

    client: str
    kind: OpKind
    key: str
    value: Value | None
    ts: int | None
    invoked_at: float
    completed_at: float
    outcome: Outcome
    batch: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HistoryError(f"op kind {self.kind!r} is not one of {KINDS}: {self}")
        if self.outcome not in OUTCOMES:
            raise HistoryError(f"op outcome {self.outcome!r} is not one of {OUTCOMES}: {self}")
        if self.ts is not None and (not isinstance(self.ts, int) or isinstance(self.ts, bool)):
            raise HistoryError(f"op ts {self.ts!r} is not an integer: {self}")
        if self.ok and self.kind in ("write", "delete") and self.ts is None:
            raise HistoryError(f"an acknowledged {self.kind} must carry the proxy's ts: {self}")
        if self.outcome == "failed" and self.ts is not None:
            raise HistoryError(f"a failed op did not happen, so it has no ts: {self}")
        if self.kind in CACHE_KINDS and self.ts is not None:
            raise HistoryError(f"cache ops carry no ts: {self}")
        if self.kind in ("write", "cache_set") and self.value is None:
            raise HistoryError(f"a {self.kind} must carry its value: {self}")
        if self.kind in ("delete", "cache_delete") and self.value is not None:
            raise HistoryError(f"a {self.kind} carries no value: {self}")
        if self.completed_at < self.invoked_at:
            raise HistoryError(f"op completed ({self.completed_at}) before it was invoked ({self.invoked_at}): {self}")

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def may_have_happened(self) -> bool:
        return self.outcome != "failed"

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if isinstance(self.value, bytes):
            doc["value"] = {"b64": base64.b64encode(self.value).decode()}
        if self.batch is None:
            del doc["batch"]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Op:
        value = doc.get("value")
        if isinstance(value, dict):
            value = base64.b64decode(value["b64"])
        return cls(client=doc["client"], kind=doc["kind"], key=doc["key"], value=value, ts=doc.get("ts"),
                   invoked_at=doc["invoked_at"], completed_at=doc["completed_at"], outcome=doc["outcome"],
                   batch=doc.get("batch"))

    def brief(self) -> str:
        val = f" {_short(self.value)}" if self.value is not None else ""
        in_batch = f" batch={self.batch}" if self.batch else ""
        return (f"{self.client} {self.kind}{val} ts={self.ts} {self.outcome}{in_batch} "
                f"[{self.invoked_at:.6f}, {self.completed_at:.6f}]")


@dataclass(frozen=True)
class Part:
    """One key of a pending op: its kind, key, value, and for a transaction's read the ts it checks."""

    kind: OpKind
    key: str
    value: Value | None = None
    checked_ts: int | None = None


class PendingOp:
    """An op (or a batch/transaction: several parts, one outcome) that has been invoked.

    Exactly one of ``succeed``, ``failed`` or ``unknown`` records it, with one
    ``completed_at`` for every part.
    """

    def __init__(self, history: History, client: str, parts: Sequence[Part], batch: str | None = None) -> None:
        if not parts:
            raise HistoryError(f"an op of {client} needs at least one key")
        self._history = history
        self._client = client
        self._parts = tuple(parts)
        self._batch = batch
        self._invoked_at = time.monotonic()
        self._done = False

    def succeed(self, ts: int | None = None, value: Value | None = None) -> list[Op]:
        """Acknowledged. ``ts``: the write's ts, or a single read's; ``value``: what a single
        read or cache get returned (``None`` on 404/miss)."""
        if value is not None and self._batch is not None:
            raise HistoryError(f"a value read belongs to a single read, not to batch {self._batch}")
        return self._finish("ok", ts, value)

    def failed(self) -> list[Op]:
        """Definitely not applied: refused before any engine or memcached saw it."""
        return self._finish("failed", None, None)

    def unknown(self, ts: int | None = None) -> list[Op]:
        """The client does not know whether it was applied (error, timeout, lost connection)."""
        return self._finish("unknown", ts, None)

    def _finish(self, outcome: Outcome, ts: int | None, value: Value | None) -> list[Op]:
        if self._done:
            raise HistoryError(f"op {self._client} {self._parts} was already recorded")
        self._done = True
        now = time.monotonic()
        ops = []
        for part in self._parts:
            if part.kind in ("read", "cache_get"):
                if self._batch is not None:
                    part_ts, part_value = (part.checked_ts if outcome == "ok" else None), None
                else:
                    part_ts, part_value = (ts if outcome == "ok" else None), value
            else:
                part_ts, part_value = (None if part.kind in CACHE_KINDS or outcome == "failed" else ts), part.value
            ops.append(Op(self._client, part.kind, part.key, part_value, part_ts, self._invoked_at, now,
                          outcome, self._batch))
        self._history.extend(ops)
        return ops


class History:
    """An append-only list of ops; safe to append from threads and asyncio tasks alike.

    Saved as JSON lines, one op per line, so a crashed run still leaves a readable prefix.
    """

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._ops: list[Op] = list(ops)
        self._lock = threading.Lock()

    def append(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def extend(self, ops: Iterable[Op]) -> None:
        with self._lock:
            self._ops.extend(ops)

    def begin(self, client: str, kind: OpKind, key: str, value: Value | None = None) -> PendingOp:
        """Stamp ``invoked_at`` now; call ``succeed``, ``failed`` or ``unknown`` on the result."""
        return PendingOp(self, client, [Part(kind, key, value)])

    def begin_many(self, client: str, parts: Sequence[Part], batch: str) -> PendingOp:
        """A batch or transaction: every part shares one interval, one outcome and one ts."""
        return PendingOp(self, client, parts, batch)

    def seed(self, key: str, value: Value, ts: int, at: float | None = None) -> Op:
        """Record data written before the workload (e.g. N1's seed) as an acknowledged write,
        so that it is checked at the end like any other key and reads of it are not phantoms."""
        at = time.monotonic() if at is None else at
        op = Op(SEED_CLIENT, "write", key, value, ts, at, at, "ok")
        self.append(op)
        return op

    @property
    def ops(self) -> list[Op]:
        with self._lock:
            return list(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def save(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as out:
            for op in self.ops:
                out.write(json.dumps(op.to_json(), separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> History:
        ops = []
        with open(path, encoding="utf-8") as src:
            for lineno, line in enumerate(src, 1):
                if not line.strip():
                    continue
                try:
                    ops.append(Op.from_json(json.loads(line)))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                    raise HistoryError(f"{path}:{lineno}: not an op record ({exc}): {line[:200]!r}") from exc
        return cls(ops)


@dataclass(frozen=True)
class Anomaly:
    """One finding: which rule, which key, why, and the ops that prove it."""

    kind: AnomalyKind
    key: str
    reason: str
    ops: tuple[Op, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "reason": self.reason, "ops": [o.to_json() for o in self.ops]}

    def __str__(self) -> str:
        lines = [f"{self.kind} {self.key!r}: {self.reason}"]
        lines += [f"    {o.brief()}" for o in self.ops]
        return "\n".join(lines)


@dataclass
class Report:
    acknowledged_writes: int = 0
    acknowledged_deletes: int = 0
    reads: int = 0
    cache_ops: int = 0
    failed_ops: int = 0
    unknown_ops: int = 0
    lost_writes: int = 0
    resurrected_deletes: int = 0
    stale_reads: int = 0
    phantom_reads: int = 0
    wrong_value_reads: int = 0
    unknown_writes: int = 0
    stale_cache_reads: int = 0
    phantom_cache_reads: int = 0
    examples: dict[str, list[Anomaly]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in COUNTERS.values())

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (
            "acknowledged_writes", "acknowledged_deletes", "reads", "cache_ops", "failed_ops", "unknown_ops",
            *COUNTERS.values())}

    @property
    def acknowledged_ops(self) -> int:
        return self.acknowledged_writes + self.acknowledged_deletes + self.reads + self.cache_ops

    def classes(self) -> dict[str, int]:
        """The anomalies by class, datastore and cache together: what a fault matrix shows."""
        return {"lost": self.lost_writes, "resurrected": self.resurrected_deletes,
                "stale": self.stale_reads + self.stale_cache_reads, "phantom": self.phantom_reads + self.phantom_cache_reads,
                "wrong-value": self.wrong_value_reads, "unknown-write": self.unknown_writes}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "acknowledged_ops": self.acknowledged_ops, **self.counts(), "classes": self.classes(),
                "examples": {k: [a.to_json() for a in v] for k, v in self.examples.items()}}

    def summary(self) -> str:
        c = self.counts()
        head = (f"{'OK' if self.ok else 'ANOMALIES'}: {c['acknowledged_writes']} acked writes, "
                f"{c['acknowledged_deletes']} acked deletes, {c['reads']} reads, {c['cache_ops']} cache ops, "
                f"{c['failed_ops']} failed, {c['unknown_ops']} unknown; "
                f"lost {c['lost_writes']}, resurrected {c['resurrected_deletes']}, stale reads {c['stale_reads']}, "
                f"phantom reads {c['phantom_reads']}, wrong-value reads {c['wrong_value_reads']}, "
                f"unknown writes {c['unknown_writes']}, stale cache reads {c['stale_cache_reads']}, "
                f"phantom cache reads {c['phantom_cache_reads']}")
        return "\n".join([head, *(str(a) for v in self.examples.values() for a in v)])

    def _add(self, anomaly: Anomaly) -> None:
        counter = COUNTERS[anomaly.kind]
        setattr(self, counter, getattr(self, counter) + 1)
        bucket = self.examples[anomaly.kind]
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(anomaly)


def check(history: History | Iterable[Op], final_state: FinalState, *, clock_bound: float = 0.0,
          cache_unchecked: Sequence[tuple[float, float]] = ()) -> Report:
    """Check ``history`` against the serving side's ``final_state`` (key -> (value, ts), or
    None/absent for a tombstone or no entity).

    ``clock_bound``: seconds by which two proxy instances' clocks may differ (the real-time
    rule applies to writes further apart than that). ``cache_unchecked``: monotonic
    intervals in which cache hits are not judged (see the module docstring).
    """
    if clock_bound < 0:
        raise HistoryError(f"clock_bound {clock_bound} must be >= 0 seconds")
    ops = history.ops if isinstance(history, History) else list(history)
    data: dict[str, list[Op]] = defaultdict(list)
    cache: dict[str, list[Op]] = defaultdict(list)
    report = Report()
    for op in ops:
        (cache if op.kind in CACHE_KINDS else data)[op.key].append(op)
        if op.kind in CACHE_KINDS:
            report.cache_ops += op.ok
        elif op.ok:
            report.acknowledged_writes += op.kind == "write"
            report.acknowledged_deletes += op.kind == "delete"
            report.reads += op.kind == "read"
        report.failed_ops += op.outcome == "failed"
        report.unknown_ops += op.outcome == "unknown"
    for key in sorted(data.keys() | {k for k, v in final_state.items() if v is not None}):
        key_ops = data.get(key, [])
        deletes = _DeleteIndex([o for o in key_ops if o.kind == "delete" and o.may_have_happened])
        by_ts = _acknowledged_by_ts(report, key, key_ops)
        _check_final(report, key, key_ops, final_state.get(key), deletes)
        _check_real_time(report, key, key_ops, clock_bound)
        _check_reads(report, key, key_ops, deletes)
        _check_read_values(report, key, key_ops, by_ts)
    for key, key_ops in cache.items():
        _check_cache(report, key, key_ops, cache_unchecked)
    return report


class _DeleteIndex:
    """Answers: could some delete invoked before ``t`` carry a ts greater than ``floor``?

    Built from acknowledged and unknown deletes only; an unknown ts counts as +infinity
    because an unknown delete may be applied at any time after it was invoked.
    """

    def __init__(self, deletes: list[Op]) -> None:
        deletes = sorted(deletes, key=lambda o: o.invoked_at)
        self._invoked = [o.invoked_at for o in deletes]
        self._max_ts: list[float] = []
        best = -math.inf
        for o in deletes:
            best = max(best, math.inf if o.ts is None else o.ts)
            self._max_ts.append(best)

    def may_cover(self, invoked_before: float, floor: int) -> bool:
        idx = bisect_left(self._invoked, invoked_before)
        return idx > 0 and self._max_ts[idx - 1] > floor


def _acknowledged_by_ts(report: Report, key: str, key_ops: list[Op]) -> dict[int, Op]:
    """The acknowledged write or delete at each ts; two with different effects at one ts fork the key."""
    by_ts: dict[int, Op] = {}
    for op in key_ops:
        if not (op.ok and op.kind in ("write", "delete")):
            continue
        assert op.ts is not None
        other = by_ts.setdefault(op.ts, op)
        if other is not op and (other.kind != op.kind or not _same(other.value, op.value)):
            kind: AnomalyKind = "lost-write" if "write" in (op.kind, other.kind) else "resurrected-delete"
            report._add(Anomaly(kind, key, f"two acknowledged ops carry ts {op.ts} with different effects, "
                                           "so one of them is lost on some side", (other, op)))
    return by_ts


def _check_final(report: Report, key: str, key_ops: list[Op], final: tuple[Value, int] | None,
                 deletes: _DeleteIndex) -> None:
    acked = [o for o in key_ops if o.ok and o.kind in ("write", "delete")]
    last = max(acked, key=lambda o: o.ts) if acked else None
    if final is not None and (last is None or final[1] > last.ts):
        value, ts = final
        if not any(o.kind == "write" and o.outcome == "unknown" and _same(o.value, value) and o.ts in (None, ts)
                   for o in key_ops):
            newest = "no acknowledged op" if last is None else f"the newest acknowledged op has ts {last.ts}"
            failed = [o for o in key_ops if o.kind == "write" and o.outcome == "failed" and _same(o.value, value)]
            why = "; a failed write had that value" if failed else ""
            report._add(Anomaly(
                "unknown-write", key,
                f"the final state holds {_short(value)} at ts {ts}; {newest}, and no unknown write has that value{why}",
                (*failed[:1], *[o for o in key_ops if o.kind in ("write", "delete")][-5:])))
        return
    if last is None:
        return
    if last.kind == "write":
        if final is None:
            if not deletes.may_cover(math.inf, last.ts):
                report._add(Anomaly(
                    "lost-write", key, f"the final state has no entity; the newest acknowledged write has ts {last.ts}",
                    (last,)))
        elif final[1] < last.ts:
            report._add(Anomaly(
                "lost-write", key,
                f"the final state holds ts {final[1]}, older than the acknowledged write at ts {last.ts}", (last,)))
        elif not _same(final[0], last.value):
            report._add(Anomaly(
                "lost-write", key,
                f"the final state holds {_short(final[0])} at ts {final[1]}, "
                f"the acknowledged write there was {_short(last.value)}", (last,)))
    elif final is not None:
        report._add(Anomaly(
            "resurrected-delete", key,
            f"the final state holds {_short(final[0])} at ts {final[1]}, "
            f"not newer than the acknowledged delete at ts {last.ts}", (last,)))


def _check_real_time(report: Report, key: str, key_ops: list[Op], clock_bound: float) -> None:
    """A write or delete invoked more than ``clock_bound`` after another one was acknowledged
    must carry a larger ts; otherwise last-write-wins lets the older one win."""
    acked = [o for o in key_ops if o.ok and o.kind in ("write", "delete")]
    by_completion = sorted(acked, key=lambda o: o.completed_at)
    newest: Op | None = None
    i = 0
    for op in sorted(acked, key=lambda o: o.invoked_at):
        while i < len(by_completion) and by_completion[i].completed_at + clock_bound < op.invoked_at:
            if newest is None or by_completion[i].ts > newest.ts:
                newest = by_completion[i]
            i += 1
        if newest is not None and op.ts <= newest.ts:
            kind: AnomalyKind = "lost-write" if op.kind == "write" else "resurrected-delete"
            report._add(Anomaly(
                kind, key,
                f"the {op.kind} at ts {op.ts} was invoked more than {clock_bound} s after the {newest.kind} at ts "
                f"{newest.ts} was acknowledged, yet its ts is not larger, so the older one wins (real-time order)",
                (newest, op)))


def _check_reads(report: Report, key: str, key_ops: list[Op], deletes: _DeleteIndex) -> None:
    reads = sorted((o for o in key_ops if o.ok and o.kind == "read"), key=lambda o: o.invoked_at)
    if not reads:
        return
    acked = sorted((o for o in key_ops if o.ok and o.kind in ("write", "delete")), key=lambda o: o.completed_at)
    by_completion = sorted(reads, key=lambda o: o.completed_at)
    newest: Op | None = None          # newest-ts acked write/delete completed before the read
    seen: dict[str, Op] = {}          # per client: newest-ts read completed before the read
    i = j = 0
    for read in reads:
        while i < len(acked) and acked[i].completed_at < read.invoked_at:
            if newest is None or acked[i].ts > newest.ts:
                newest = acked[i]
            i += 1
        while j < len(by_completion) and by_completion[j].completed_at < read.invoked_at:
            prior = by_completion[j]
            best = seen.get(prior.client)
            if prior.ts is not None and (best is None or prior.ts > best.ts):
                seen[prior.client] = prior
            j += 1
        reason, witness = _stale(read, newest, seen.get(read.client), deletes)
        if reason:
            report._add(Anomaly("stale-read", key, reason, (witness, read)))


def _stale(read: Op, newest: Op | None, seen: Op | None, deletes: _DeleteIndex) -> tuple[str, Op | None]:
    got = "404" if read.ts is None else f"ts {read.ts}"
    if newest is not None:
        if read.ts is not None and read.ts < newest.ts:
            return f"read returned {got} after an acknowledged {newest.kind} at ts {newest.ts} had completed", newest
        if read.ts is None and newest.kind == "write" and not deletes.may_cover(read.completed_at, newest.ts):
            return (f"read returned 404 after an acknowledged write at ts {newest.ts} had completed, "
                    "and no delete could explain it"), newest
    if seen is not None:
        if read.ts is not None and read.ts < seen.ts:
            return f"{read.client} read {got} after it had already read ts {seen.ts} (non-monotonic)", seen
        if read.ts is None and not deletes.may_cover(read.completed_at, seen.ts):
            return f"{read.client} read 404 after it had already read ts {seen.ts}, and no delete could explain it", seen
    return "", None


def _check_read_values(report: Report, key: str, key_ops: list[Op], by_ts: dict[int, Op]) -> None:
    """Every value a read saw was written, at the ts it came with, by a write that had begun."""
    unknown = [o for o in key_ops if o.kind == "write" and o.outcome == "unknown"]
    for read in key_ops:
        if not (read.ok and read.kind == "read" and read.ts is not None):
            continue
        write = by_ts.get(read.ts)
        if write is not None:
            if write.kind == "delete":
                report._add(Anomaly("phantom-read", key, f"read a value at ts {read.ts}, the ts of a delete",
                                    (write, read)))
            elif write.invoked_at > read.completed_at:
                report._add(Anomaly("phantom-read", key, f"read ts {read.ts} of a write invoked only after the "
                                                         "read completed", (write, read)))
            elif read.value is not None and not _same(read.value, write.value):
                report._add(Anomaly("wrong-value-read", key, f"read {_short(read.value)} at ts {read.ts}, where "
                                                             f"the write at that ts wrote {_short(write.value)}",
                                    (write, read)))
            continue
        if not any(o.invoked_at < read.completed_at and o.ts in (None, read.ts)
                   and (read.value is None or _same(o.value, read.value)) for o in unknown):
            failed = [o for o in key_ops if o.kind == "write" and o.outcome == "failed"
                      and read.value is not None and _same(o.value, read.value)]
            why = ", though a failed write had that value" if failed else ""
            report._add(Anomaly("phantom-read", key, f"read ts {read.ts}, which no write could have had{why}",
                                (*failed[:1], read)))


def _check_cache(report: Report, key: str, key_ops: list[Op], unchecked: Sequence[tuple[float, float]]) -> None:
    sets = [o for o in key_ops if o.kind == "cache_set" and o.may_have_happened]
    changes = sorted((o for o in key_ops if o.ok and o.kind in ("cache_set", "cache_delete")), key=lambda o: o.invoked_at)
    invoked = [o.invoked_at for o in changes]
    # earliest[i]: the change, among changes[i:], that completed first. An acknowledged set is
    # overwritten from the completion of the first change invoked after it completed. (A later
    # set of the same value counts too: it is then itself a candidate for the reads it explains.)
    earliest: list[Op | None] = [None] * (len(changes) + 1)
    for i in range(len(changes) - 1, -1, -1):
        nxt = earliest[i + 1]
        earliest[i] = changes[i] if nxt is None or changes[i].completed_at < nxt.completed_at else nxt

    def overwritten_by(s: Op) -> Op | None:
        return earliest[bisect_right(invoked, s.completed_at)] if s.ok else None

    for read in key_ops:
        if not (read.ok and read.kind == "cache_get" and read.value is not None):
            continue
        if any(start <= read.completed_at and read.invoked_at <= end for start, end in unchecked):
            continue
        candidates = [s for s in sets if s.invoked_at < read.completed_at and _same(s.value, read.value)]
        if not candidates:
            report._add(Anomaly("phantom-cache-read", key, f"a cache get returned {_short(read.value)}, "
                                                           "which no set could have stored", (read,)))
            continue
        overwrites = [(s, overwritten_by(s)) for s in candidates]
        if any(by is None or by.completed_at >= read.invoked_at for _, by in overwrites):
            continue
        s, by = max(overwrites, key=lambda pair: pair[1].completed_at)  # type: ignore[union-attr]
        assert by is not None
        report._add(Anomaly("stale-cache-read", key,
                            f"a cache get returned {_short(read.value)}, which a {by.kind} had replaced before the "
                            "get began", (s, by, read)))


def _same(a: Value | None, b: Value | None) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return a == b


def _short(value: Value | None, limit: int = 32) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
