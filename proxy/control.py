"""Changing one plan's mode on every proxy instance together: the one entry point, ``switch_mode``.

Every caller — the orchestrator, the CLI, ``POST /admin/mode`` — goes through
``switch_mode(zk, plan, mode)``, which asks ``sync.mode.transition`` (the one transition
table) whether the change of that plan's mode is allowed and then, step by step:

1. refuses (``TransitionRefused``, nothing changed) what the table does not allow — e.g.
   cow → proxy before the load was verified during this cow period — and a plan that is
   not registered;
2. waits (bounded by ``drain_timeout``) for the plan's journal the transition needs empty,
   so a switch that cannot finish is refused before anything changes;
3. for cow → proxy: flushes N2's memcached if an instance that is gone left the plan's
   "cow cache dirty" marker (it died with cache copies queued: see ``proxy/modes.py``);
4. sets the plan's mode znode (compare-and-set) and waits until every registered instance
   acknowledged the plan's new epoch — each acknowledges only after it drained the plan's
   old mode; an instance that has not learnt of the plan yet has not acknowledged it, so
   the switch waits for it too (it is never skipped);
5. waits out the lease of every instance whose membership vanished (its session expired
   or was closed): by then it is fenced by its own lease, and its lease record is removed;
6. for → proxy: flushes N2's memcached again if a dirty marker of the plan's instance that
   did not drain remains (it died during the switch);
7. *then* waits (bounded by ``drain_timeout``) for that journal to be empty: a journal entry
   of the old mode can no longer appear (``proxy/journal.py``: entries are checked against
   the mode version), so an empty journal now stays empty of acknowledged writes.
   ``SwitchBlocked`` if it does not empty: the mode *has* changed; call again (a same-mode
   call is an idempotent re-acknowledgement that repeats 4–7) or roll back.

N2's memcached is flushed whole (memcached has no per-prefix flush), also the keys of
other plans' apps. That is harmless to them: a flush never makes a value stale, only
cold — their next read misses and is filled from the side their own mode reads.

Blocking (kazoo); call it off the event loop. Each wait has a deadline, and so has each
ZooKeeper call inside it (``sync._zk.bounded_retry``): kazoo fails a call in flight when it
drops a connection and holds one made while it reconnects until ZooKeeper answers again.
While ZooKeeper is out of reach a switch retries its reads until the step's deadline, then
raises SwitchBlocked saying whether the mode changed. Must never: change a mode outside the
transition table; return while an instance that can still act under the plan's old mode is
not accounted for.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from proxy.cache.pool import parse_servers
from sync import layout
from sync._zk import CONNECTIVITY_ERRORS, bounded_retry
from sync.mode import ModeState, TransitionRefused, check_mode, load_verified_epoch, read_mode, set_mode, transition

__all__ = ["SwitchBlocked", "TransitionRefused", "acknowledged", "journal_depth", "members", "switch_mode"]


T = TypeVar("T")

#: Seconds a single ZooKeeper read or write of this module waits for its answer at most.
CALL_DEADLINE_S = 10.0
#: The least a read inside a wait is given, however little of the wait is left.
_LEAST_S = 1.0


class SwitchBlocked(RuntimeError):
    """The switch cannot complete (yet); the message says what it waited for."""


def _call(deadline: float, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func`` (a KazooClient method) retried on connection loss and answered within
    ``deadline`` s, else one of ``CONNECTIVITY_ERRORS``."""
    return bounded_retry(max(deadline, _LEAST_S), ignore_expire=True)(func, *args, **kwargs)


def journal_depth(zk: KazooClient, plan: str, target: str, *, deadline: float = CALL_DEADLINE_S) -> int:
    """Entries and range marks in plan ``plan``'s repair journal toward ``target`` ("n1" or
    "n2"); 0 means nothing is left to repair (``proxy/journal.py``). One read, however deep
    the journal."""
    stat = _call(deadline, zk.exists, layout.journal(plan, target))
    return stat.numChildren if stat is not None else 0


def _children(zk: KazooClient, root: str, deadline: float = CALL_DEADLINE_S) -> dict[str, tuple[dict, int]]:
    out: dict[str, tuple[dict, int]] = {}
    end = time.monotonic() + deadline
    try:
        names = _call(deadline, zk.get_children, root)
    except NoNodeError:
        return out
    for name in names:
        try:
            data, stat = _call(end - time.monotonic(), zk.get, f"{root}/{name}")
        except NoNodeError:
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            doc = {}
        out[name] = (doc if isinstance(doc, dict) else {}, stat.version)
    return out


def members(zk: KazooClient, *, deadline: float = CALL_DEADLINE_S) -> dict[str, dict]:
    """The registered proxy instances: each one's membership document, whose ``plans`` names
    the mode and epoch it acknowledged for each plan it follows."""
    return {name: doc for name, (doc, _) in _children(zk, layout.PROXIES, deadline).items()}


def acknowledged(member: dict, plan: str) -> dict:
    """What ``member`` acknowledged for ``plan``: ``{"mode", "epoch"}``, or {} (it does not
    know the plan yet)."""
    plans = member.get("plans")
    found = plans.get(plan) if isinstance(plans, dict) else None
    return found if isinstance(found, dict) else {}


def wait_journal_empty(zk: KazooClient, plan: str, target: str, timeout: float, *, after: str = "") -> None:
    deadline = time.monotonic() + timeout
    while (depth := journal_depth(zk, plan, target, deadline=deadline - time.monotonic())) > 0:
        if time.monotonic() > deadline:
            raise SwitchBlocked(f"{after}plan {plan}'s repair journal toward {target} still holds {depth} key(s) or "
                                f"range(s) after {timeout:g} s; is {target} reachable?")
        time.sleep(0.1)


def wait_acknowledged(zk: KazooClient, plan: str, state: ModeState, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = members(zk, deadline=deadline - time.monotonic())
        behind = {n: acknowledged(m, plan) for n, m in found.items() if acknowledged(m, plan).get("epoch") != state.epoch}
        if not behind:
            return found
        if time.monotonic() > deadline:
            lagging = ", ".join(f"{n} (epoch {a.get('epoch')}, mode {a.get('mode')})" if a else f"{n} (does not know "
                                f"the plan yet)" for n, a in sorted(behind.items()))
            raise SwitchBlocked(f"plan {plan}'s mode {state.mode} epoch {state.epoch} not acknowledged within "
                                f"{timeout:g} s by: {lagging}")
        time.sleep(0.05)


def wait_out_vanished_leases(zk: KazooClient, live: dict[str, dict]) -> list[str]:
    """Wait a lease for every instance with a lease record but no membership; remove the records."""
    vanished = {name: entry for name, entry in _children(zk, layout.LEASES).items() if name not in live}
    if not vanished:
        return []
    longest = max(float(doc.get("lease", 0) or 0) for doc, _ in vanished.values())
    time.sleep(longest)
    for name, (_, version) in vanished.items():
        try:
            _call(CALL_DEADLINE_S, zk.delete, layout.proxy_lease(name), version=version)
        except (NoNodeError, BadVersionError):
            pass  # re-registered meanwhile: it is live again and counted by the next switch
    return sorted(vanished)


def flush_memcached(address: str, timeout: float = 5.0) -> None:
    """``flush_all`` on every server of a memcached pool (``h1:p[:weight],…``); raises
    SwitchBlocked, naming the server, if one does not say OK."""
    try:
        servers = parse_servers(address)
    except ValueError as exc:
        raise SwitchBlocked(f"could not flush N2's memcached: {exc}") from exc
    for server in servers:
        try:
            with socket.create_connection((server.host, server.port), timeout=timeout) as conn:
                conn.sendall(b"flush_all\r\n")
                reply = conn.recv(64)
        except OSError as exc:
            raise SwitchBlocked(f"could not flush N2's memcached at {server.name}: {exc}") from exc
        if reply != b"OK\r\n":
            raise SwitchBlocked(f"N2's memcached at {server.name} answered {reply!r} to flush_all")


def flush_n2_cache_if_dirty(zk: KazooClient, plan: str, n2_memcached: str | None, *, during: str) -> list[str]:
    """Flush N2's memcached if a plan's "cow cache dirty" marker of an instance that is not
    live remains, then remove those markers (at the version read). Returns their names."""
    # A marker is settled by its own run only: one whose run is not a live member in the
    # plan's cow (it died, was cut off, or was restarted under the same name) needs the flush.
    in_cow = {f"{m.get('instance')}@{m.get('incarnation')}" for m in members(zk).values()
              if acknowledged(m, plan).get("mode") == "cow"}
    root = layout.cache_dirty(plan)
    dirty = {name: version for name, (_, version) in _children(zk, root).items() if name not in in_cow}
    if not dirty:
        return []
    if n2_memcached is None:
        raise SwitchBlocked(f"{during}: proxy run(s) {', '.join(sorted(dirty))} left cow without draining "
                            "their cache copies to N2 (they died or were cut off), so N2's memcached may hold values "
                            "N1 has since changed; pass n2_memcached so it can be flushed")
    flush_memcached(n2_memcached)
    for name, version in dirty.items():
        try:
            _call(CALL_DEADLINE_S, zk.delete, f"{root}/{name}", version=version)
        except (NoNodeError, BadVersionError):
            pass  # renewed by a live instance meanwhile: it drains, or the next check flushes again
    return sorted(dirty)


def switch_mode(zk: KazooClient, plan: str, mode: str, *, drain_timeout: float = 120.0, ack_timeout: float = 30.0,
                n2_memcached: str | None = None) -> ModeState:
    """Move plan ``plan``'s apps to ``mode`` on every proxy (see the module docstring);
    returns the plan's new mode state.

    The plan must be registered (``sync.state.PlanRegistry.register``: that creates its mode
    znode). ``n2_memcached`` (N2's memcached pool) is needed for cow → proxy only when an
    instance died in the plan's cow; without it such a switch raises SwitchBlocked saying
    so. Raises TransitionRefused (nothing changed) or SwitchBlocked (the message says
    whether the mode changed).
    """
    check_mode(mode)
    mode_path = layout.mode(plan)
    where = f"plan {plan}'s mode did not change: "
    try:
        current = read_mode(zk, path=mode_path, deadline=CALL_DEADLINE_S)
        if current is None:
            raise TransitionRefused(f"plan {plan!r} is not registered (no mode znode {mode_path}); register it "
                                    "first (nxnw migrate does)")
        step = transition(current, mode, load_verified_epoch(zk, path=mode_path, deadline=CALL_DEADLINE_S))
        if step.journal_empty:
            wait_journal_empty(zk, plan, step.journal_empty, drain_timeout, after=f"before {current.mode} -> {mode}: ")
        to_proxy = mode == "proxy"
        if to_proxy and current.mode == "cow":
            flush_n2_cache_if_dirty(zk, plan, n2_memcached, during=f"before {current.mode} -> {mode}")
        where = f"plan {plan}'s mode may or may not be {mode} now (the change was sent): "
        state = current if current.mode == mode else set_mode(zk, mode, current.version, path=mode_path,
                                                               deadline=CALL_DEADLINE_S)
        where = f"plan {plan}'s mode is now {state.mode} (epoch {state.epoch}), but "
        live = wait_acknowledged(zk, plan, state, ack_timeout)
        wait_out_vanished_leases(zk, live)
        if to_proxy:
            try:
                flush_n2_cache_if_dirty(zk, plan, n2_memcached, during=f"after {current.mode} -> {mode}")
            except SwitchBlocked as exc:
                raise SwitchBlocked(where + str(exc)) from exc
        if step.journal_empty:
            wait_journal_empty(zk, plan, step.journal_empty, drain_timeout, after=where)
        return state
    except CONNECTIVITY_ERRORS as exc:
        raise SwitchBlocked(f"{where}ZooKeeper did not answer in time ({type(exc).__name__}: {exc}); call again "
                            "once it is reachable") from exc
