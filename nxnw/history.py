"""The history checker: did a migration lose, resurrect or travel back in time?

A workload generator records every operation it made through the proxy's data API as an
``Op`` in a ``History``; at the end, ``check(history, final_state)`` compares it with what
N2 holds and returns a ``Report``. This is a small Jepsen-style checker for one model:
a last-write-wins register per key, ordered by the proxy's integer timestamps (µs).

Semantics of an operation, as in Jepsen: an *acknowledged* op (``ok=True``) took effect
at some instant between ``invoked_at`` and ``completed_at``, with the timestamp ``ts`` the
proxy returned. An *unacknowledged* op (``ok=False``: an error, a timeout, a dropped
connection) may have taken effect at any instant after ``invoked_at`` -- possibly long after
the client gave up -- or never; its timestamp is unknown unless the client recorded one.
The checker therefore never reports something an unacknowledged op could explain: it
reports anomalies only, and it has no false alarms on a linearizable history.

Anomalies, exactly as checked (key by key; keys that no write or delete in the history
touched are not checked, so pre-loaded data in ``final_state`` is ignored):

* **lost write** -- the acknowledged write or delete with the largest ``ts`` is a write
  ``(v, T)``, and N2 holds: no entity (unless some unacknowledged delete of the key, whose
  ts is unknown or > T, may have removed it), or a ts < T, or ts == T with a value other
  than ``v``.
* **resurrected delete** -- that op is a delete with ts ``D`` and N2 holds a value with
  ts <= D.
* **unknown write** -- N2 holds ``(v, t)`` with ``t`` greater than every acknowledged
  write/delete of the key (or the key has none), and no unacknowledged write of the key
  has value ``v`` (and ts == t, when it recorded one).
* **stale read** -- an acknowledged read ``R`` of a key, where ``W`` is the acknowledged
  write/delete with the largest ts among those that *completed before R was invoked*:
  R returned ts ``T < W.ts``; or R returned 404 while ``W`` is a write and no delete of
  the key (acknowledged or not) invoked before R completed has a ts unknown or > W.ts.
  Per client (monotonic reads): R returned ts ``T`` lower than the largest ts ``M`` the same
  client read for the key in reads that completed before R was invoked; or R returned 404
  and no delete as above has a ts unknown or > M.

The checker never talks to a service and never mutates the history it is given.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

OpKind = Literal["write", "delete", "read"]
Value = bytes | str
FinalState = Mapping[str, tuple[Value, int] | None]

KINDS = ("write", "delete", "read")
MAX_EXAMPLES = 20


class HistoryError(ValueError):
    """An operation record that cannot be checked; the message names the op and the field."""


@dataclass(frozen=True)
class Op:
    """One operation as the client saw it.

    ``ts`` is the timestamp the proxy returned for a write/delete, the ``X-Nxnw-Timestamp``
    of a read, and ``None`` for a read that got 404 or for an op that was not acknowledged.
    ``invoked_at``/``completed_at`` are ``time.monotonic()`` seconds of one process.
    """

    client: str
    kind: OpKind
    key: str
    value: Value | None
    ts: int | None
    invoked_at: float
    completed_at: float
    ok: bool

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise HistoryError(f"op kind {self.kind!r} is not one of {KINDS}: {self}")
        if self.ts is not None and (not isinstance(self.ts, int) or isinstance(self.ts, bool)):
            raise HistoryError(f"op ts {self.ts!r} is not an integer: {self}")
        if self.ok and self.kind != "read" and self.ts is None:
            raise HistoryError(f"an acknowledged {self.kind} must carry the proxy's ts: {self}")
        if self.kind == "write" and self.value is None:
            raise HistoryError(f"a write must carry its value: {self}")
        if self.completed_at < self.invoked_at:
            raise HistoryError(f"op completed ({self.completed_at}) before it was invoked ({self.invoked_at}): {self}")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        if isinstance(self.value, bytes):
            doc["value"] = {"b64": base64.b64encode(self.value).decode()}
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Op:
        value = doc.get("value")
        if isinstance(value, dict):
            value = base64.b64decode(value["b64"])
        return cls(client=doc["client"], kind=doc["kind"], key=doc["key"], value=value, ts=doc.get("ts"),
                   invoked_at=doc["invoked_at"], completed_at=doc["completed_at"], ok=doc["ok"])

    def brief(self) -> str:
        ack = "ok" if self.ok else "unacked"
        val = "" if self.kind != "write" else f" {_short(self.value)}"
        return (f"{self.client} {self.kind}{val} ts={self.ts} {ack} "
                f"[{self.invoked_at:.6f}, {self.completed_at:.6f}]")


class PendingOp:
    """An op that has been invoked; ``succeed`` or ``fail`` records it exactly once."""

    def __init__(self, history: History, client: str, kind: OpKind, key: str, value: Value | None) -> None:
        self._history = history
        self._fields = (client, kind, key, value)
        self._invoked_at = time.monotonic()
        self._done = False

    def succeed(self, ts: int | None) -> Op:
        return self._finish(ts, ok=True)

    def fail(self, ts: int | None = None) -> Op:
        return self._finish(ts, ok=False)

    def _finish(self, ts: int | None, ok: bool) -> Op:
        if self._done:
            raise HistoryError(f"op {self._fields} was already recorded")
        self._done = True
        client, kind, key, value = self._fields
        op = Op(client, kind, key, value, ts, self._invoked_at, time.monotonic(), ok)
        self._history.append(op)
        return op


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

    def begin(self, client: str, kind: OpKind, key: str, value: Value | None = None) -> PendingOp:
        """Stamp ``invoked_at`` now; call ``succeed(ts)`` or ``fail()`` on the result."""
        return PendingOp(self, client, kind, key, value)

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

    kind: Literal["lost-write", "resurrected-delete", "stale-read", "unknown-write"]
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
    lost_writes: int = 0
    resurrected_deletes: int = 0
    stale_reads: int = 0
    unknown_writes: int = 0
    examples: dict[str, list[Anomaly]] = field(default_factory=lambda: defaultdict(list))

    @property
    def ok(self) -> bool:
        return not (self.lost_writes or self.resurrected_deletes or self.stale_reads or self.unknown_writes)

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in (
            "acknowledged_writes", "acknowledged_deletes", "reads",
            "lost_writes", "resurrected_deletes", "stale_reads", "unknown_writes")}

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.counts(),
                "examples": {k: [a.to_json() for a in v] for k, v in self.examples.items()}}

    def summary(self) -> str:
        c = self.counts()
        head = (f"{'OK' if self.ok else 'ANOMALIES'}: {c['acknowledged_writes']} acked writes, "
                f"{c['acknowledged_deletes']} acked deletes, {c['reads']} reads; "
                f"lost {c['lost_writes']}, resurrected {c['resurrected_deletes']}, "
                f"stale reads {c['stale_reads']}, unknown writes {c['unknown_writes']}")
        return "\n".join([head, *(str(a) for v in self.examples.values() for a in v)])

    def _add(self, counter: str, anomaly: Anomaly) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        bucket = self.examples[anomaly.kind]
        if len(bucket) < MAX_EXAMPLES:
            bucket.append(anomaly)


def check(history: History | Iterable[Op], final_state: FinalState) -> Report:
    """Check ``history`` against N2's ``final_state`` (key -> (value, ts), or None/absent)."""
    ops = history.ops if isinstance(history, History) else list(history)
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    report = Report()
    for key, key_ops in by_key.items():
        report.acknowledged_writes += sum(1 for o in key_ops if o.ok and o.kind == "write")
        report.acknowledged_deletes += sum(1 for o in key_ops if o.ok and o.kind == "delete")
        report.reads += sum(1 for o in key_ops if o.ok and o.kind == "read")
        deletes = _DeleteIndex([o for o in key_ops if o.kind == "delete"])
        if any(o.kind != "read" for o in key_ops):
            _check_final(report, key, key_ops, final_state.get(key), deletes)
        _check_reads(report, key, key_ops, deletes)
    return report


class _DeleteIndex:
    """Answers: could some delete invoked before ``t`` carry a ts greater than ``floor``?

    Every delete counts, acknowledged or not; an unknown ts counts as +infinity because an
    unacknowledged delete may be applied at any time after it was invoked.
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


def _check_final(report: Report, key: str, key_ops: list[Op], final: tuple[Value, int] | None,
                 deletes: _DeleteIndex) -> None:
    acked = [o for o in key_ops if o.ok and o.kind != "read"]
    last = max(acked, key=lambda o: o.ts) if acked else None
    if final is not None and (last is None or final[1] > last.ts):
        value, ts = final
        if not any(o.kind == "write" and not o.ok and _same(o.value, value) and o.ts in (None, ts) for o in key_ops):
            newest = "no acknowledged op" if last is None else f"the newest acknowledged op has ts {last.ts}"
            report._add("unknown_writes", Anomaly(
                "unknown-write", key,
                f"N2 holds {_short(value)} at ts {ts}; {newest}, and no unacknowledged write has that value",
                tuple(o for o in key_ops if o.kind != "read")[-5:]))
        return
    if last is None:
        return
    if last.kind == "write":
        if final is None:
            if not deletes.may_cover(math.inf, last.ts):
                report._add("lost_writes", Anomaly(
                    "lost-write", key, f"N2 has no entity; the newest acknowledged write has ts {last.ts}", (last,)))
        elif final[1] < last.ts:
            report._add("lost_writes", Anomaly(
                "lost-write", key, f"N2 holds ts {final[1]}, older than the acknowledged write at ts {last.ts}", (last,)))
        elif not _same(final[0], last.value):
            report._add("lost_writes", Anomaly(
                "lost-write", key,
                f"N2 holds {_short(final[0])} at ts {final[1]}, the acknowledged write there was {_short(last.value)}",
                (last,)))
    elif final is not None:
        report._add("resurrected_deletes", Anomaly(
            "resurrected-delete", key,
            f"N2 holds {_short(final[0])} at ts {final[1]}, not newer than the acknowledged delete at ts {last.ts}",
            (last,)))


def _check_reads(report: Report, key: str, key_ops: list[Op], deletes: _DeleteIndex) -> None:
    reads = sorted((o for o in key_ops if o.ok and o.kind == "read"), key=lambda o: o.invoked_at)
    if not reads:
        return
    acked = sorted((o for o in key_ops if o.ok and o.kind != "read"), key=lambda o: o.completed_at)
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
            report._add("stale_reads", Anomaly("stale-read", key, reason, (witness, read)))


def _stale(read: Op, newest: Op | None, seen: Op | None, deletes: _DeleteIndex) -> tuple[str, Op | None]:
    got = "404" if read.ts is None else f"ts {read.ts}"
    if newest is not None:
        if read.ts is not None and read.ts < newest.ts:
            return f"read returned {got} after an acknowledged {newest.kind} at ts {newest.ts} had completed", newest
        if read.ts is None and newest.kind == "write" and not deletes.may_cover(read.completed_at, newest.ts):
            return f"read returned 404 after an acknowledged write at ts {newest.ts} had completed, and no delete could explain it", newest
    if seen is not None:
        if read.ts is not None and read.ts < seen.ts:
            return f"{read.client} read {got} after it had already read ts {seen.ts} (non-monotonic)", seen
        if read.ts is None and not deletes.may_cover(read.completed_at, seen.ts):
            return f"{read.client} read 404 after it had already read ts {seen.ts}, and no delete could explain it", seen
    return "", None


def _same(a: Value | None, b: Value | None) -> bool:
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return a == b


def _short(value: Value | None, limit: int = 32) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
