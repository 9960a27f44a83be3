"""Changing the mode of every proxy instance together, as the orchestrator does it.

``switch_mode`` is the one way a mode changes: it refuses to leave ``cow`` for ``proxy``
while the repair journal toward N2 is not empty (DESIGN invariant 2), or to go back to
``passthrough`` while the journal toward N1 is not empty (rollback loses nothing), then
sets the mode znode by compare-and-set and waits until every registered instance has
acknowledged the new epoch — i.e. no request still runs under the old mode anywhere.
Blocking (kazoo); call it off the event loop.
"""

from __future__ import annotations

import json
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from proxy.journal import JOURNAL_ROOT
from sync.mode import MODES, ModeState, ensure_mode, set_mode

#: Each proxy instance's ephemeral membership znode holds the mode epoch it has adopted.
PROXIES_ROOT = "/nxnw/proxies"

#: The journal that must be empty before entering each mode.
MUST_DRAIN = {"proxy": "n2", "passthrough": "n1"}


class SwitchBlocked(RuntimeError):
    """The switch cannot happen yet; the message says what it waited for."""


def journal_depth(zk: KazooClient, target: str) -> int:
    try:
        return len(zk.get_children(f"{JOURNAL_ROOT}/{target}"))
    except NoNodeError:
        return 0


def members(zk: KazooClient) -> dict[str, dict]:
    """The registered proxy instances and the mode epoch each has adopted."""
    out = {}
    try:
        names = zk.get_children(PROXIES_ROOT)
    except NoNodeError:
        return out
    for name in names:
        try:
            data, _ = zk.get(f"{PROXIES_ROOT}/{name}")
        except NoNodeError:
            continue
        out[name] = json.loads(data)
    return out


def wait_journal_empty(zk: KazooClient, target: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (depth := journal_depth(zk, target)) > 0:
        if time.monotonic() > deadline:
            raise SwitchBlocked(f"the repair journal toward {target} still holds {depth} key(s) after {timeout:g} s; "
                                f"is {target} reachable?")
        time.sleep(0.1)


def wait_acknowledged(zk: KazooClient, state: ModeState, timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = members(zk)
        behind = {n: m for n, m in found.items() if m.get("epoch") != state.epoch}
        if not behind:
            return found
        if time.monotonic() > deadline:
            lagging = ", ".join(f"{n} (epoch {m.get('epoch')}, mode {m.get('mode')})" for n, m in sorted(behind.items()))
            raise SwitchBlocked(f"mode {state.mode} epoch {state.epoch} not acknowledged within {timeout:g} s by: {lagging}")
        time.sleep(0.05)


def switch_mode(zk: KazooClient, mode: str, *, drain_timeout: float = 120.0, ack_timeout: float = 30.0) -> ModeState:
    """Move every proxy to ``mode``; returns the new state once all instances follow it."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; the modes are {', '.join(MODES)}")
    current = ensure_mode(zk)
    if current.mode == mode:
        wait_acknowledged(zk, current, ack_timeout)
        return current
    if mode in MUST_DRAIN:
        wait_journal_empty(zk, MUST_DRAIN[mode], drain_timeout)
    state = set_mode(zk, mode, current.version)
    wait_acknowledged(zk, state, ack_timeout)
    return state
