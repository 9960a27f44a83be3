"""The interface every DNS provider offers to the hand-off, and the values it speaks in.

This module is responsible for :class:`RecordSet` (one name, one type, one TTL, its
values, and for weighted routing a set id and a weight), :data:`ChangeId` and the
:class:`DnsProvider` contract that ``cutover`` drives: read what is there, change it,
wait until every authoritative server answers with the change.

The contract a provider keeps:

* ``records(name, rtype)`` returns *every* record set of that name and type (all the
  weighted sets, or the one plain set): it is what the hand-off saves before it changes
  anything, and what rollback restores.
* ``replace(old, new)`` is a compare-and-swap: it changes the record sets from exactly
  ``old`` to exactly ``new`` in one atomic change, or refuses with
  :class:`RecordSetConflict` when what is there is no longer ``old`` (somebody else changed
  the record since we read it). Route 53 does this with DELETE (which must match the
  current values) + CREATE in one change batch; RFC 2136 with value-dependent
  prerequisites in one UPDATE message.
* A change id means nothing until ``wait_in_sync`` has returned: only then does every
  authoritative server answer with it.

It must never: hide a provider error (every error carries the zone, the name and the
reason), talk to a service itself (the concrete providers do), or import anything of
nxnw's own packages (endpoints and credentials are passed in).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NewType

#: A provider's handle on one submitted change: Route 53's ``/change/C…`` id; for RFC 2136
#: the zone and the SOA serial the update produced. Opaque to callers and a plain string, so
#: that the orchestrator can persist it (ZooKeeper) and wait on it again after a crash.
ChangeId = NewType("ChangeId", str)


class DnsError(RuntimeError):
    """A DNS provider refused or failed a request; the message says which zone, name and why."""


class RecordSetConflict(DnsError):
    """The record sets are no longer what the caller read: someone else changed them."""


class WeightsUnsupported(DnsError):
    """The provider has no weighted routing, so a weighted switch cannot be made with it."""


class NotInSync(DnsError):
    """A change did not reach every authoritative server before the deadline."""


def absolute(name: str) -> str:
    """``name`` as an absolute, lower-case DNS name (trailing dot).

    Both providers and the cutover compare names; ``App.nxnw.test`` and ``app.nxnw.test.``
    are the same record, and a comparison that said otherwise would save or restore the
    wrong thing.
    """
    if not name or name == ".":
        raise ValueError(f"DNS name {name!r} is empty")
    return name.lower() if name.endswith(".") else name.lower() + "."


@dataclass(frozen=True)
class RecordSet:
    """One record set as a provider holds it.

    ``values`` are the rdata in presentation form (``"127.0.0.11"``), kept sorted so that
    two record sets with the same values compare equal whatever order a server listed
    them in. ``set_id``/``weight`` are both set for a Route 53 weighted set and both
    ``None`` for a plain one.
    """

    name: str
    rtype: str
    ttl: int
    values: tuple[str, ...]
    set_id: str | None = None
    weight: int | None = None
    #: Provider fields we do not interpret (health check id, …), kept so a restore is exact.
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", absolute(self.name))
        object.__setattr__(self, "rtype", self.rtype.upper())
        object.__setattr__(self, "values", tuple(sorted(self.values)))
        if not self.values:
            raise ValueError(f"record set {self.name} {self.rtype} has no values; delete it instead")
        if self.ttl < 0:
            raise ValueError(f"record set {self.name} {self.rtype}: TTL {self.ttl} is negative")
        if (self.set_id is None) != (self.weight is None):
            raise ValueError(
                f"record set {self.name} {self.rtype}: set_id={self.set_id!r} and weight={self.weight!r} "
                "must both be given (weighted) or both be None (plain)"
            )
        if self.weight is not None and not 0 <= self.weight <= 255:
            raise ValueError(f"record set {self.name} {self.rtype}: weight {self.weight} is outside 0..255")

    @property
    def key(self) -> tuple[str, str, str | None]:
        """What identifies the set within a zone: name, type and (for weighted sets) set id."""
        return (self.name, self.rtype, self.set_id)

    @property
    def weighted(self) -> bool:
        return self.set_id is not None

    def with_(self, **changes: Any) -> RecordSet:
        """A copy with some fields changed (TTL, weight, values)."""
        fields = {
            "name": self.name, "rtype": self.rtype, "ttl": self.ttl, "values": self.values,
            "set_id": self.set_id, "weight": self.weight, "extra": self.extra,
        }
        fields.update(changes)
        return RecordSet(**fields)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for the orchestrator to persist the saved copy."""
        return {
            "name": self.name, "rtype": self.rtype, "ttl": self.ttl, "values": list(self.values),
            "set_id": self.set_id, "weight": self.weight, "extra": [list(kv) for kv in self.extra],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordSet:
        return cls(
            name=data["name"], rtype=data["rtype"], ttl=int(data["ttl"]), values=tuple(data["values"]),
            set_id=data.get("set_id"), weight=data.get("weight"),
            extra=tuple((k, v) for k, v in data.get("extra", ())),
        )


def describe(record_sets: Sequence[RecordSet]) -> str:
    """Record sets in one line, for error messages and the timeline."""
    if not record_sets:
        return "(none)"
    parts = []
    for rs in record_sets:
        weight = f" set={rs.set_id} weight={rs.weight}" if rs.weighted else ""
        parts.append(f"{rs.name} {rs.ttl} {rs.rtype} {','.join(rs.values)}{weight}")
    return "; ".join(parts)


class DnsProvider(ABC):
    """Where a zone's records live and how to change them.

    Every call blocks (boto3 and dnspython's synchronous API); an asyncio caller runs
    them in its executor, never on the event loop.
    """

    #: The zone this provider changes, absolute (``nxnw.test.``); names outside it are refused.
    zone: str
    #: Whether :meth:`set_weights` and weighted record sets are supported.
    supports_weights: bool = False

    @abstractmethod
    def records(self, name: str, rtype: str) -> list[RecordSet]:
        """Every record set of ``name``/``rtype`` (plain or weighted), empty if there is none."""

    def get(self, name: str, rtype: str, set_id: str | None = None) -> RecordSet | None:
        """The one record set of ``name``/``rtype`` (and ``set_id`` for a weighted set), or None."""
        for rs in self.records(name, rtype):
            if rs.set_id == set_id:
                return rs
        return None

    @abstractmethod
    def upsert(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        """Create or overwrite these record sets, whatever is there now, in one change."""

    @abstractmethod
    def delete(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        """Delete exactly these record sets; refused (:class:`RecordSetConflict`) if their values changed."""

    @abstractmethod
    def replace(self, old: Sequence[RecordSet], new: Sequence[RecordSet]) -> ChangeId:
        """Change the record sets from exactly ``old`` to exactly ``new``, atomically (compare-and-swap).

        ``old`` must be every record set of the names/types involved, as read by :meth:`records`.
        """

    @abstractmethod
    def wait_in_sync(self, change: ChangeId, timeout: float) -> float:
        """Block until every authoritative server answers with ``change``; return seconds waited.

        Raises :class:`NotInSync` at the deadline, naming what had not caught up.
        """

    def set_weights(self, name: str, rtype: str, weights: Mapping[str, int]) -> ChangeId:
        """Give the weighted sets of ``name``/``rtype`` new weights (set id -> weight), values unchanged.

        One atomic change, compare-and-swap against the sets as read just before.
        """
        if not self.supports_weights:
            raise WeightsUnsupported(f"zone {self.zone}: {type(self).__name__} has no weighted routing")
        current = self.records(name, rtype)
        by_id = {rs.set_id: rs for rs in current if rs.weighted}
        unknown = sorted(set(weights) - set(by_id))
        if unknown:
            raise DnsError(
                f"zone {self.zone}: {absolute(name)} {rtype} has no weighted set {unknown}; "
                f"it has: {describe(current)}"
            )
        new = [rs.with_(weight=weights[rs.set_id]) if rs.set_id in weights else rs for rs in current]
        return self.replace(current, new)
