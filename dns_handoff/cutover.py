"""The DNS hand-off from N1 to N2, step by step: save, lower-ttl, switch, wait-in-sync, verify, rollback.

This module is responsible for the order and the safety of the steps that move an app's
DNS name from N1's addresses to N2's, on any :class:`DnsProvider`:

1. **save** — before the first change, read every record set of the name and type
   (values, TTL, set ids, weights) and keep that copy; it is what rollback restores.
2. **lower-ttl** — lower the TTL, wait until every authoritative server has it, then wait
   out the *old* TTL: only then has every resolver's cached answer expired, and only
   then will the switch reach clients within the new, short TTL.
3. **switch** — ``at_once``: one change to N2's addresses; ``weighted``: shift N1/N2
   weights step by step (10 %, 50 %, 100 % by default). After each change: wait in sync,
   then **hold** for ``hold_seconds`` while ``error_budget_check()`` (the caller's measure
   of N2's error rate) says OK. The first "not OK" (or a check that raises: a budget that
   cannot be measured is not met) rolls back to the saved copy at once and raises
   :class:`ErrorBudgetExceeded`.
4. **verify** — ask a real DNS server what it answers.
5. **rollback** — put the saved record sets back exactly, deleting only sets this
   hand-off wrote.

A :class:`Handoff` records every step with wall-clock timestamps and its outcome for the
orchestrator's status page and timeline, and serialises (``to_dict``/``from_dict``) so
that the saved copy survives a crash of the process that made the change.

Every call blocks (sleeps, provider calls): an asyncio caller runs it off the loop (nxnw's
orchestrator: on ``sync.aio.io_executor``, never beside its ZooKeeper calls).
Errors other than a failed error budget (a provider refusal, a change not in sync by
its deadline) are raised without an automatic rollback: what DNS holds is then uncertain,
and the orchestrator decides, with :meth:`Handoff.rollback` one call away.

It must never: change a record before its original is saved; delete a record set it did
not save or write (a set somebody else created is reported, not removed); overwrite a
record that changed under it (every write is a compare-and-swap); move to the next
weighted step, or call a switch done, before the change is in sync and the error budget
has been checked.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from dns_handoff import resolve
from dns_handoff.provider import (
    ChangeId,
    DnsError,
    DnsProvider,
    RecordSet,
    RecordSetConflict,
    WeightsUnsupported,
    absolute,
    describe,
)

Mode = Literal["at_once", "weighted"]
DEFAULT_STEPS: tuple[int, ...] = (10, 50, 100)
#: Set ids of the two weighted record sets a weighted switch creates.
N1_SET_ID, N2_SET_ID = "nxnw-n1", "nxnw-n2"


@dataclass(frozen=True)
class BudgetVerdict:
    """What an error-budget check returns when it has a reason to give (a bare bool also works)."""

    ok: bool
    reason: str = ""


ErrorBudgetCheck = Callable[[], "bool | BudgetVerdict"]


class ErrorBudgetExceeded(DnsError):
    """N2's error budget was not met at a step; ``rolled_back`` says whether the saved copy is back."""

    def __init__(self, message: str, percent: int, reason: str, rolled_back: bool) -> None:
        super().__init__(message)
        self.percent = percent
        self.reason = reason
        self.rolled_back = rolled_back


class VerifyFailed(DnsError):
    """A real DNS server does not answer with the expected values."""


class RollbackConflict(DnsError):
    """The record holds sets the hand-off neither saved nor wrote; rollback will not delete them."""


@dataclass
class Step:
    """One step of the hand-off as the timeline shows it."""

    verb: str
    started_at: float  # time.time(): the timeline is wall clock
    finished_at: float | None = None
    outcome: str = "running"  # running | ok | failed
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {
            "verb": self.verb, "started_at": self.started_at, "finished_at": self.finished_at,
            "seconds": self.seconds, "outcome": self.outcome, "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(data["verb"], data["started_at"], data.get("finished_at"), data.get("outcome", "running"),
                   dict(data.get("detail", {})))


def _judge(check: ErrorBudgetCheck) -> BudgetVerdict:
    """Run the caller's check; a check that raises counts as a failed budget, with its error as reason."""
    try:
        verdict = check()
    except Exception as exc:  # the budget cannot be measured, so it is not met; reported, not swallowed
        return BudgetVerdict(False, f"error-budget check raised {type(exc).__name__}: {exc}")
    if isinstance(verdict, BudgetVerdict):
        return verdict
    if isinstance(verdict, bool):
        return BudgetVerdict(verdict, "" if verdict else "error-budget check returned False")
    raise TypeError(f"error-budget check returned {verdict!r}; expected bool or BudgetVerdict")


class Handoff:
    """The hand-off of one DNS name and type on one provider: its saved copy, its writes, its timeline."""

    def __init__(self, provider: DnsProvider, name: str, rtype: str = "A", sync_timeout: float = 300.0,
                 persist: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.provider = provider
        #: Called with ``to_dict()`` after the saved copy is taken and before and after every
        #: write (write-ahead), so a process killed mid-write resumes knowing the sets it may
        #: have written. It must not return before the copy is durable.
        self.persist = persist
        self.name = absolute(name)
        self.rtype = rtype.upper()
        self.sync_timeout = sync_timeout
        #: Every record set of name/type before the first change; None until saved.
        self.saved: list[RecordSet] | None = None
        #: Every record set this hand-off has written or tried to write (a write whose reply
        #: was lost may still have happened): the only sets rollback may delete.
        self.ours: list[RecordSet] = []
        #: What the last successful write left; the next write compares-and-swaps against it.
        self.written: list[RecordSet] | None = None
        #: ``{"ttl", "old_ttl", "change", "in_sync_at"}`` once the TTL lowering began;
        #: ``change`` is its change id once written, ``in_sync_at`` (unix s) when every
        #: authoritative server had the lowered TTL (None until then).
        self.ttl_lowering: dict[str, Any] | None = None
        self.steps: list[Step] = []
        #: The wall clock ``in_sync_at`` is read from (a seam: tests step it).
        self.wall: Callable[[], float] = time.time

    # --- the timeline ----------------------------------------------------------------

    @contextmanager
    def _step(self, verb: str, **detail: Any) -> Iterator[Step]:
        step = Step(verb, time.time(), detail=detail)
        self.steps.append(step)
        try:
            yield step
        except BaseException as exc:
            step.outcome = "failed"
            step.detail["error"] = f"{type(exc).__name__}: {exc}"
            raise
        else:
            if step.outcome == "running":  # a step may have marked itself failed without raising
                step.outcome = "ok"
        finally:
            step.finished_at = time.time()

    def timeline(self) -> list[dict[str, Any]]:
        """Every step so far, oldest first, JSON-able."""
        return [s.to_dict() for s in self.steps]

    # --- the steps -------------------------------------------------------------------

    def save(self) -> list[RecordSet]:
        """Read and keep every record set of the name before the first change (once; later calls return it)."""
        if self.saved is None:
            with self._step("save") as step:
                self.saved = self.provider.records(self.name, self.rtype)
                self.written = list(self.saved)
                step.detail["saved"] = describe(self.saved)
            self._persist()
        return list(self.saved)

    def lower_ttl(self, ttl: int, sync_timeout: float | None = None) -> float:
        """Lower the TTL of every set to ``ttl``; return once the old TTL has elapsed since it was in sync.

        Returns the seconds spent waiting out the old TTL (0 if the TTL was never higher).

        Resuming (a hand-off restored with ``from_dict`` after a crash): the old TTL is the
        saved copy's, not what the record holds now — an earlier run may have lowered it
        already, and resolvers may still cache answers under the old TTL. When that run saw
        the lowered TTL in sync (``ttl_lowering["in_sync_at"]``, persisted), only what is
        left of the old TTL is waited. When it had written the change but not seen it in
        sync, its persisted change id is waited for, then the whole old TTL. When it was
        killed inside the write itself, the lowered record is written again: on RFC 2136 the
        change id (the zone's serial) then covers the earlier write; on Route 53 an identical
        write is no change, so the wait counts from now without an INSYNC of its own.
        """
        if ttl < 0:
            raise ValueError(f"{self.name} {self.rtype}: TTL {ttl} is negative")
        self.save()
        lowering = self.ttl_lowering
        if lowering is not None and lowering.get("in_sync_at") is not None and lowering["ttl"] <= ttl:
            return self._wait_old_ttl(lowering["old_ttl"], lowering["in_sync_at"])
        with self._step("lower-ttl", ttl=ttl) as step:
            current = self.provider.records(self.name, self.rtype)
            if not current:
                raise DnsError(f"{self.name} {self.rtype} has no record set in zone {self.provider.zone}; nothing to lower")
            old_ttl = max(rs.ttl for rs in [*current, *(self.saved or [])])
            step.detail["old_ttl"] = old_ttl
            if old_ttl <= ttl:
                step.detail["note"] = f"TTL already {old_ttl} <= {ttl}; nothing changed"
                return 0.0
            target = [rs.with_(ttl=min(rs.ttl, ttl)) for rs in current]
            change = lowering.get("change") if lowering is not None and current == target else None
            if change is None:
                self.ttl_lowering = {"ttl": ttl, "old_ttl": old_ttl, "change": None, "in_sync_at": None}
                change = self._write(current, target)
                self.ttl_lowering["change"] = change
                self._persist()
        self.wait_in_sync(change, sync_timeout)
        # A resolver that asked just before the last server had the new TTL caches the old
        # answer for old_ttl from then: so the clock starts now, not at the write. Persisted
        # as wall-clock time: a resumed run in another process counts from the same instant.
        in_sync = time.monotonic()
        self.ttl_lowering = {"ttl": ttl, "old_ttl": old_ttl, "change": change, "in_sync_at": self.wall()}
        self._persist()
        return self._wait_old_ttl(old_ttl, self.ttl_lowering["in_sync_at"], in_sync)

    def _wait_old_ttl(self, old_ttl: int, in_sync_at: float, in_sync: float | None = None) -> float:
        """Sleep until ``old_ttl`` seconds have passed since the lowered TTL was in sync; return the sleep.

        Timed by the monotonic clock, so that a step of the wall clock (an NTP correction)
        during the wait cannot end it early: from ``in_sync``, the monotonic instant this
        process saw it in sync, or, in a resumed run, for what the wall clock says is left
        of the old TTL since ``in_sync_at`` — never more than the whole old TTL, whatever
        the wall clock did meanwhile."""
        with self._step("wait-old-ttl", seconds=old_ttl, in_sync_at=in_sync_at) as step:
            started = time.monotonic()
            if in_sync is None:
                end = started + min(max(in_sync_at + old_ttl - self.wall(), 0.0), float(old_ttl))
            else:
                end = in_sync + old_ttl
            while (left := end - time.monotonic()) > 0:
                time.sleep(left)
            waited = time.monotonic() - started
            step.detail["waited"] = round(waited, 3)
            return waited

    def switch(
        self,
        n1_values: Sequence[str],
        n2_values: Sequence[str],
        mode: Mode = "at_once",
        steps: Sequence[int] = DEFAULT_STEPS,
        error_budget_check: ErrorBudgetCheck | None = None,
        hold_seconds: float = 0.0,
        check_interval: float = 1.0,
        sync_timeout: float | None = None,
    ) -> None:
        """Move the name from N1's values to N2's, at once or in weighted steps.

        ``hold_seconds`` should be at least the record's (lowered) TTL, so that the share
        sent to N2 has reached clients before the budget is judged. Raises
        :class:`ErrorBudgetExceeded` after rolling back when a check says not OK.
        """
        n1, n2 = tuple(sorted(n1_values)), tuple(sorted(n2_values))
        if not n1 or not n2:
            raise ValueError(f"{self.name}: switch needs N1 and N2 values, got n1={list(n1)} n2={list(n2)}")
        if mode not in ("at_once", "weighted"):
            raise ValueError(f"{self.name}: switch mode {mode!r} is not 'at_once' or 'weighted'")
        if mode == "weighted":
            if not self.provider.supports_weights:
                raise WeightsUnsupported(
                    f"{self.name} {self.rtype}: weighted switch needs weighted routing, and "
                    f"{type(self.provider).__name__} for zone {self.provider.zone} has none; use mode='at_once'"
                )
            percents = list(steps)
            if not percents or percents[-1] != 100 or any(not 0 < p <= 100 for p in percents) or percents != sorted(set(percents)):
                raise ValueError(f"{self.name}: weighted steps {percents} must rise strictly within 1..100 and end at 100")
        else:
            percents = [100]
        self.save()
        current = self.provider.records(self.name, self.rtype)
        self._check_points_at_n1(current, n1, n2)
        for percent, target in self._plan(current, n1, n2, mode, percents):
            with self._step("switch", mode=mode, percent=percent, to=describe(target)):
                change = self._write(self.provider.records(self.name, self.rtype), target)
            self.wait_in_sync(change, sync_timeout)
            if error_budget_check is not None or hold_seconds > 0:
                self._hold(percent, error_budget_check, hold_seconds, check_interval)

    def wait_in_sync(self, change: ChangeId, timeout: float | None = None) -> float:
        """Wait until every authoritative server has ``change``; return seconds waited."""
        timeout = self.sync_timeout if timeout is None else timeout
        with self._step("wait-in-sync", change=change, timeout=timeout) as step:
            waited = self.provider.wait_in_sync(change, timeout)
            step.detail["waited"] = round(waited, 3)
            return waited

    def verify(self, resolver: str, expected: Sequence[str], within: float = 0.0) -> list[str]:
        """Check that ``resolver`` (host:port) answers the name with ``expected``; see :func:`verify`."""
        with self._step("verify", resolver=resolver, expected=sorted(expected)) as step:
            got = verify(resolver, self.name, expected, rtype=self.rtype, within=within)
            step.detail["got"] = got
            return got

    def rollback(self, sync_timeout: float | None = None) -> None:
        """Restore the saved record sets exactly (values, TTL, set ids, weights) and wait until in sync.

        Deletes only sets this hand-off wrote; any other set found is reported
        (:class:`RollbackConflict`) and nothing is changed.
        """
        if self.saved is None:
            with self._step("rollback") as step:
                step.detail["note"] = "nothing was changed, nothing to restore"
            return
        with self._step("rollback", to=describe(self.saved)) as step:
            current = self.provider.records(self.name, self.rtype)
            foreign = [rs for rs in current if rs not in self.saved and rs not in self.ours]
            if foreign:
                raise RollbackConflict(
                    f"{self.name} {self.rtype} in zone {self.provider.zone} holds {describe(foreign)}, which the "
                    f"hand-off neither saved nor wrote; refusing to delete it. Saved copy: {describe(self.saved)}"
                )
            step.detail["from"] = describe(current)
            change = self.provider.replace(current, self.saved)
            self.written = list(self.saved)
            self._persist()
        self.wait_in_sync(change, sync_timeout)

    # --- persistence -----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to resume or roll back after a crash, JSON-able."""
        return {
            "name": self.name, "rtype": self.rtype, "sync_timeout": self.sync_timeout,
            "saved": None if self.saved is None else [rs.to_dict() for rs in self.saved],
            "ours": [rs.to_dict() for rs in self.ours],
            "written": None if self.written is None else [rs.to_dict() for rs in self.written],
            "ttl_lowering": None if self.ttl_lowering is None else dict(self.ttl_lowering),
            "steps": self.timeline(),
        }

    def _persist(self) -> None:
        if self.persist is not None:
            self.persist(self.to_dict())

    @classmethod
    def from_dict(cls, provider: DnsProvider, data: dict[str, Any],
                  persist: Callable[[dict[str, Any]], None] | None = None) -> Handoff:
        handoff = cls(provider, data["name"], data["rtype"], data.get("sync_timeout", 300.0), persist)
        if data.get("saved") is not None:
            handoff.saved = [RecordSet.from_dict(d) for d in data["saved"]]
        handoff.ours = [RecordSet.from_dict(d) for d in data.get("ours", [])]
        if data.get("written") is not None:
            handoff.written = [RecordSet.from_dict(d) for d in data["written"]]
        if data.get("ttl_lowering") is not None:
            handoff.ttl_lowering = dict(data["ttl_lowering"])
        handoff.steps = [Step.from_dict(d) for d in data.get("steps", [])]
        return handoff

    # --- internals -------------------------------------------------------------------

    def _write(self, current: list[RecordSet], target: list[RecordSet]) -> ChangeId:
        """Compare-and-swap ``current`` -> ``target``; ``current`` must be what we last left there."""
        # A write whose reply was lost (crash, timeout) leaves sets of ours that `written`
        # does not show yet: those are ours to change, anything else is not.
        unexpected = sorted(current, key=_order) != sorted(self.written or [], key=_order)
        if unexpected and not all(rs in self.ours for rs in current):
            raise RecordSetConflict(
                f"{self.name} {self.rtype} in zone {self.provider.zone} changed outside the hand-off: it holds "
                f"{describe(current)}, the hand-off left {describe(self.written)}; not overwriting it"
            )
        self.ours.extend(rs for rs in target if rs not in self.ours)
        self._persist()
        change = self.provider.replace(current, target)
        self.written = list(target)
        self._persist()
        return change

    def _check_points_at_n1(self, current: list[RecordSet], n1: tuple[str, ...], n2: tuple[str, ...]) -> None:
        """Refuse to switch a record that serves neither N1 nor a state this hand-off wrote.

        N1 is served by one plain set of N1's values, or by weighted sets where every set
        with weight > 0 holds N1's values (a set of N2's values may wait at weight 0).
        """
        if not current:
            raise DnsError(f"{self.name} {self.rtype} has no record set in zone {self.provider.zone}; nothing to switch")
        if all(rs in self.ours for rs in current):
            return  # resuming: the record is in a state we left it in
        plain_n1 = len(current) == 1 and not current[0].weighted and current[0].values == n1
        weighted_n1 = (
            all(rs.weighted for rs in current)
            and all(rs.values == n1 or (rs.values == n2 and rs.weight == 0) for rs in current)
            and sum(1 for rs in current if rs.values == n1) == 1
            and sum(1 for rs in current if rs.values == n2) <= 1
            and any(rs.values == n1 and rs.weight for rs in current)
        )
        if not (plain_n1 or weighted_n1):
            raise DnsError(
                f"{self.name} {self.rtype} in zone {self.provider.zone} holds {describe(current)}, which is neither "
                f"N1's {list(n1)} nor a state this hand-off wrote; refusing to switch it"
            )

    def _plan(
        self, current: list[RecordSet], n1: tuple[str, ...], n2: tuple[str, ...], mode: Mode, percents: Sequence[int]
    ) -> list[tuple[int, list[RecordSet]]]:
        """The record sets each step leaves, with the share of N2 in percent.

        Weighted steps keep the set ids already there (an operator's own ``blue``/``green``
        sets stay theirs) and name new ones :data:`N1_SET_ID`/:data:`N2_SET_ID`.
        """
        ttl = min(rs.ttl for rs in current)
        if mode == "at_once":
            return [(100, [RecordSet(self.name, self.rtype, ttl, n2)])]
        id1 = next((rs.set_id for rs in current if rs.weighted and rs.values == n1), N1_SET_ID)
        id2 = next((rs.set_id for rs in current if rs.weighted and rs.values == n2), N2_SET_ID)
        return [
            (p, [RecordSet(self.name, self.rtype, ttl, n1, id1, 100 - p), RecordSet(self.name, self.rtype, ttl, n2, id2, p)])
            for p in percents
        ]

    def _hold(self, percent: int, check: ErrorBudgetCheck | None, hold_seconds: float, interval: float) -> None:
        """Check the budget now and every ``interval`` for ``hold_seconds``; roll back at the first failure."""
        verdict = BudgetVerdict(True)
        with self._step("hold", percent=percent, seconds=hold_seconds) as step:
            deadline = time.monotonic() + hold_seconds
            checks = 0
            while True:
                if check is not None:
                    verdict = _judge(check)
                    checks += 1
                if not verdict.ok or time.monotonic() >= deadline:
                    break
                time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
            step.detail.update(checks=checks, ok=verdict.ok, reason=verdict.reason)
            if not verdict.ok:
                step.outcome = "failed"
        if verdict.ok:
            return
        message = f"{self.name} {self.rtype}: N2's error budget not met at {percent} %: {verdict.reason}"
        try:
            self.rollback()
        except DnsError as exc:
            raise ErrorBudgetExceeded(f"{message}; rollback FAILED: {exc}", percent, verdict.reason, False) from exc
        raise ErrorBudgetExceeded(
            f"{message}; rolled back to {describe(self.saved or [])}", percent, verdict.reason, True
        )


def _order(rs: RecordSet) -> tuple[str, str, str]:
    return (rs.name, rs.rtype, rs.set_id or "")


def _handoff(provider: DnsProvider, name: str, rtype: str, handoff: Handoff | None) -> Handoff:
    if handoff is None:
        return Handoff(provider, name, rtype)
    if handoff.provider is not provider or handoff.name != absolute(name) or handoff.rtype != rtype.upper():
        raise ValueError(
            f"hand-off is for {handoff.name} {handoff.rtype} on {type(handoff.provider).__name__}, "
            f"not {absolute(name)} {rtype.upper()} on {type(provider).__name__}"
        )
    return handoff


def lower_ttl(provider: DnsProvider, name: str, ttl: int, *, rtype: str = "A", handoff: Handoff | None = None) -> Handoff:
    """Lower the TTL and wait out the old one (see :meth:`Handoff.lower_ttl`); return the hand-off."""
    h = _handoff(provider, name, rtype, handoff)
    h.lower_ttl(ttl)
    return h


def switch(
    provider: DnsProvider,
    name: str,
    n1_values: Sequence[str],
    n2_values: Sequence[str],
    mode: Mode = "at_once",
    steps: Sequence[int] = DEFAULT_STEPS,
    error_budget_check: ErrorBudgetCheck | None = None,
    hold_seconds: float = 0.0,
    *,
    rtype: str = "A",
    handoff: Handoff | None = None,
) -> Handoff:
    """Switch the name from N1 to N2 (see :meth:`Handoff.switch`); return the hand-off."""
    h = _handoff(provider, name, rtype, handoff)
    h.switch(n1_values, n2_values, mode, steps, error_budget_check, hold_seconds)
    return h


def wait_in_sync(provider: DnsProvider, change: ChangeId, timeout: float) -> float:
    """Wait until every authoritative server has ``change``; return seconds waited."""
    return provider.wait_in_sync(change, timeout)


def rollback(handoff: Handoff) -> None:
    """Restore the record sets ``handoff`` saved before its first change."""
    handoff.rollback()


def verify(resolver: str, name: str, expected: Sequence[str], *, rtype: str = "A", within: float = 0.0) -> list[str]:
    """Ask ``resolver`` (host:port) for the name until it answers exactly ``expected``, for up to ``within`` s.

    Returns the values seen; raises :class:`VerifyFailed` naming what it answered instead.
    A caching resolver keeps the old answer for up to the TTL, so ``within`` should cover it.
    """
    want = sorted(expected)
    deadline = time.monotonic() + within
    while True:
        try:
            got = resolve.answer(resolver, absolute(name), rtype)
        except resolve.ResolveError as exc:
            got, error = [], str(exc)
        else:
            error = ""
        if got == want:
            return got
        if time.monotonic() >= deadline:
            seen = error or (f"answers {got}" if got else "answers nothing")
            raise VerifyFailed(f"{resolver}: {absolute(name)} {rtype} {seen}, expected {want} (waited {within:g}s)")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
