"""A plan's mode znode: which path its apps' data takes — ``passthrough``, ``cow`` or ``proxy``.

Every plan has its own mode znode (``sync.layout.mode(plan)``; every function here takes
its path): the proxies apply it to that plan's apps only, every other app stays in
``passthrough`` (``proxy/modes.py``).

Error handling
==============

Fencing (invariant 3) rests on this file. ``ModeWatcher.current`` is None — and the proxy
refuses writes — whenever the watcher cannot know the mode:

* **SUSPENDED** (connection lost, session maybe alive) and **LOST** (session expired):
  ``current`` becomes None at once, from the kazoo state listener.
* **CONNECTED again**: the watcher re-reads the znode, re-arming its watch, and only then
  sets ``current``. A read that started before a later disconnect is discarded, so a
  stale value is never reported as fresh.
* The znode missing, or holding data that is not a valid mode document: ``current`` is
  None (logged with the value), so a proxy never guesses.

kazoo drops every watch on connection loss and does not restore them, which is why the
watcher re-arms its watch itself on reconnect. It keeps the mode from a data watch it
manages itself (get-with-watch, re-armed after every event and every reconnect) rather
than kazoo's ``DataWatch`` recipe, because that recipe retries without a deadline on
kazoo's callback thread: after an outage its backoff can leave the watch un-armed for up
to a minute, during which a mode change would go unseen by a connected proxy.

Writes are compare-and-set on the znode version: ``set_mode(client, mode,
expected_version)`` fails with ``ModeConflict`` if someone else changed the mode since the
caller read it. Retries have a deadline; a retried write whose first attempt had in fact
succeeded is recognised by the ``write_id`` it carries, not reported as a conflict.

The document: ``{"mode": "cow", "epoch": 3, "updated_at": <unix s>, "write_id": <hex>}``;
``epoch`` is the znode version it was written at (0 at creation, +1 per change).

Transitions
===========

``TRANSITIONS`` is the one table of allowed mode changes; ``transition(current, target,
verified_epoch)`` answers every caller (``proxy.control.switch_mode``, which the
orchestrator, the CLI and ``POST /admin/mode`` all call) with the ``Transition`` or
``TransitionRefused`` naming the reason:

* passthrough → cow: start copying writes to N2;
* cow → proxy: only once the load was verified identical *during this cow period*
  (``mark_load_verified`` recorded the current cow mode's epoch; a rollback and a new cow
  period void an older verification), and then the journal toward N2 must be empty;
* proxy → passthrough, cow → passthrough: rollback; the journal toward N1 must be empty;
* the same mode again: an idempotent re-acknowledgement (the same checks run again);
* anything else is refused (e.g. passthrough → proxy would serve an N2 never loaded).

The load verification lives in its own znode next to the mode znode
(``<mode path>-load-verified``, ``{"cow_epoch": 3}``), written by the orchestrator.

Must never: report a mode while the session is not known to be alive; accept a mode name
outside ``MODES``; overwrite the mode without a version check; allow a transition the
table does not list.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError, NodeExistsError
from kazoo.protocol.states import EventType, KazooState, WatchedEvent, ZnodeStat

from sync._zk import CONNECTIVITY_ERRORS, bounded_retry, check_path, check_timeout

log = logging.getLogger("nxnw.sync.mode")

MODES = ("passthrough", "cow", "proxy")


class ModeConflict(RuntimeError):
    """A compare-and-set of the mode found a different version than expected."""


class InvalidModeData(ValueError):
    """The mode znode holds something that is not a mode document."""


class TransitionRefused(RuntimeError):
    """The transition table does not allow this change now; the message says why."""


@dataclass(frozen=True)
class Transition:
    """One allowed change of mode and what must hold around it."""

    source: str
    target: str
    #: why the change is made, in the operator's words
    purpose: str
    #: the repair journal ("n1" or "n2") that must be empty once every instance drained
    #: the old mode, or None
    journal_empty: str | None = None
    #: the load must have been verified identical during the current cow period
    needs_load_verified: bool = False


TRANSITIONS: dict[tuple[str, str], Transition] = {(t.source, t.target): t for t in (
    Transition("passthrough", "cow", "start copying writes to N2"),
    Transition("cow", "proxy", "serve from N2", journal_empty="n2", needs_load_verified=True),
    Transition("proxy", "passthrough", "roll back to N1", journal_empty="n1"),
    Transition("cow", "passthrough", "roll back to N1", journal_empty="n1"),
)}

#: The checks a re-acknowledgement of the current mode repeats.
SAME_MODE = {"passthrough": Transition("passthrough", "passthrough", "re-acknowledge", journal_empty="n1"),
             "cow": Transition("cow", "cow", "re-acknowledge"),
             "proxy": Transition("proxy", "proxy", "re-acknowledge", journal_empty="n2")}


def transition(current: ModeState, target: str, verified_epoch: int | None) -> Transition:
    """The allowed transition from ``current`` to ``target``, or TransitionRefused saying why."""
    check_mode(target)
    if current.mode == target:
        return SAME_MODE[target]
    found = TRANSITIONS.get((current.mode, target))
    if found is None:
        allowed = ", ".join(t for (s, t) in TRANSITIONS if s == current.mode)
        raise TransitionRefused(f"mode {current.mode} (epoch {current.epoch}) cannot change to {target}; "
                                f"from {current.mode} the allowed modes are: {allowed}")
    if found.needs_load_verified and verified_epoch != current.epoch:
        seen = "no verification is recorded" if verified_epoch is None else (
            f"the recorded verification is of cow epoch {verified_epoch}")
        raise TransitionRefused(f"{current.mode} -> {target} needs the load verified identical during this cow "
                                f"period (epoch {current.epoch}), but {seen}: run verify first")
    return found


def load_verified_path(mode_path: str) -> str:
    return check_path(mode_path, "mode path") + "-load-verified"


def mark_load_verified(client: KazooClient, cow_epoch: int, *, path: str, deadline: float = 10.0) -> None:
    """Record that every app's load was verified identical during the cow mode of ``cow_epoch``.

    Call it with the epoch of the cow mode that was current while verify ran: a later mode
    change makes the record stale, so cow -> proxy is refused until verify runs again.
    """
    if isinstance(cow_epoch, bool) or not isinstance(cow_epoch, int) or cow_epoch < 0:
        raise ValueError(f"cow_epoch must be a mode epoch (int >= 0), got {cow_epoch!r}")
    data = json.dumps({"cow_epoch": cow_epoch, "verified_at": time.time()}).encode()
    target = load_verified_path(path)
    bounded_retry(deadline, ignore_expire=True).put(client, target, data)


def load_verified_epoch(client: KazooClient, *, path: str, deadline: float = 10.0) -> int | None:
    """The cow epoch the last ``mark_load_verified`` named, or None (never, or unreadable)."""
    try:
        data, _ = bounded_retry(deadline, ignore_expire=True)(client.get, load_verified_path(path))
    except NoNodeError:
        return None
    try:
        epoch = json.loads(data).get("cow_epoch")
    except (ValueError, UnicodeDecodeError, AttributeError):
        log.error("load verification znode holds %r, not a document: treated as not verified", data[:80])
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


@dataclass(frozen=True)
class ModeState:
    mode: str
    epoch: int
    #: The znode version: pass it to ``set_mode`` as ``expected_version``.
    version: int
    updated_at: float
    write_id: str = ""


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; allowed modes: {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def parse_mode(data: bytes, stat: ZnodeStat) -> ModeState:
    """The mode document in ``data``, or InvalidModeData saying what is wrong with it."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidModeData(f"mode znode data is not JSON ({exc}): {data[:80]!r}") from None
    if not isinstance(doc, dict):
        raise InvalidModeData(f"mode znode data is not a JSON object: {data[:80]!r}")
    mode, epoch, updated = doc.get("mode"), doc.get("epoch"), doc.get("updated_at", 0.0)
    if mode not in MODES:
        raise InvalidModeData(f"mode znode names unknown mode {mode!r}; allowed modes: {', '.join(MODES)}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise InvalidModeData(f"mode znode epoch {epoch!r} is not a non-negative integer")
    if isinstance(updated, bool) or not isinstance(updated, (int, float)):
        raise InvalidModeData(f"mode znode updated_at {updated!r} is not a number")
    return ModeState(mode, epoch, stat.version, float(updated), str(doc.get("write_id", "")))


def mode_document(mode: str, epoch: int, write_id: str = "") -> bytes:
    """The bytes of a mode znode (a plan's registration creates its first one in the same
    ZooKeeper transaction as the plan node and its claims)."""
    check_mode(mode)
    return json.dumps({"mode": mode, "epoch": epoch, "updated_at": time.time(), "write_id": write_id or uuid.uuid4().hex},
                      sort_keys=True).encode()


def read_mode(client: KazooClient, *, path: str, deadline: float = 10.0) -> ModeState | None:
    """The mode now (None if the znode does not exist). Raises InvalidModeData."""
    try:
        data, stat = bounded_retry(deadline, ignore_expire=True)(client.get, check_path(path, "mode path"))
    except NoNodeError:
        return None
    return parse_mode(data, stat)


def set_mode(client: KazooClient, mode: str, expected_version: int | None, *, path: str,
             deadline: float = 10.0) -> ModeState:
    """Compare-and-set the mode.

    ``expected_version`` is the ``version`` of the ModeState the decision was based on;
    ``None`` creates the znode and requires that it does not exist. Raises ValueError for
    an unknown mode, ModeConflict if the znode is not at ``expected_version``.
    """
    check_mode(mode)
    check_path(path, "mode path")
    if expected_version is not None and (isinstance(expected_version, bool) or not isinstance(expected_version, int)
                                         or expected_version < 0):
        raise ValueError(f"expected_version must be a znode version (int >= 0) or None to create, "
                         f"got {expected_version!r}")
    write_id = uuid.uuid4().hex
    epoch = 0 if expected_version is None else expected_version + 1
    data = mode_document(mode, epoch, write_id)
    retry = bounded_retry(deadline, ignore_expire=True)
    try:
        if expected_version is None:
            retry(client.create, path, data, makepath=True)
            version = 0
        else:
            version = retry(client.set, path, data, version=expected_version).version
    except (NodeExistsError, BadVersionError, NoNodeError) as exc:
        try:
            now = read_mode(client, path=path, deadline=deadline)
        except InvalidModeData:
            now = None
        if now is not None and now.write_id == write_id:
            return now  # our first attempt had succeeded; its reply was lost
        found = "does not exist" if isinstance(exc, NoNodeError) else (
            f"is at version {now.version} (mode {now.mode!r})" if now is not None else "exists with invalid data")
        wanted = "to be absent" if expected_version is None else f"at version {expected_version}"
        raise ModeConflict(f"mode znode {path} {found}; expected it {wanted}: re-read the mode and decide "
                           "again") from exc
    return ModeState(mode, epoch, version, json.loads(data)["updated_at"], write_id)


def ensure_mode(client: KazooClient, default: str = "passthrough", *, path: str,
                deadline: float = 10.0) -> ModeState:
    """The current mode, creating the znode with ``default`` if it does not exist."""
    check_mode(default)
    state = read_mode(client, path=path, deadline=deadline)
    if state is not None:
        return state
    try:
        return set_mode(client, default, None, path=path, deadline=deadline)
    except ModeConflict:
        state = read_mode(client, path=path, deadline=deadline)
        if state is None:
            raise
        return state


class ModeWatcher:
    """Keeps the current mode of one client's view, fenced on session trouble.

    Needs a started client. It runs one small thread of its own that does the reads;
    callbacks added with ``add_callback`` run on that thread with the new ``current``
    (a ModeState or None) each time it changes; they must not block for long.
    """

    def __init__(self, client: KazooClient, *, path: str, deadline: float = 10.0) -> None:
        self.client = client
        self.path = check_path(path, "mode path")
        self.deadline = check_timeout(deadline, "deadline")
        self._cv = threading.Condition()
        self._state: ModeState | None = None
        self._fresh = False
        self._generation = 0          # bumped on every SUSPENDED/LOST
        self._refresh_wanted = True
        self._notify_wanted = False
        self._retry_at: float | None = None
        self._closed = False
        self._callbacks: list[Callable[[ModeState | None], None]] = []
        self._watch = self._on_event
        client.add_listener(self._on_session)
        self._thread = threading.Thread(target=self._run, name=f"nxnw-mode-watch{self.path}", daemon=True)
        self._thread.start()

    @property
    def current(self) -> ModeState | None:
        """The mode, or None while the session is not known alive or the mode is unknown."""
        with self._cv:
            return self._state if self._fresh else None

    def view(self) -> tuple[ModeState | None, int]:
        """``current`` and the session generation, read together.

        The generation changes on every SUSPENDED/LOST: a request that noted it when it was
        admitted can tell, before it answers, whether the session it relied on was interrupted
        meanwhile — even if the watcher has since reconnected and reads a mode again.
        """
        with self._cv:
            return (self._state if self._fresh else None), self._generation

    @property
    def mode(self) -> str | None:
        state = self.current
        return state.mode if state else None

    def add_callback(self, callback: Callable[[ModeState | None], None]) -> None:
        with self._cv:
            self._callbacks.append(callback)

    def wait_until(self, predicate: Callable[[ModeState | None], bool], timeout: float) -> ModeState | None:
        """Block until ``predicate(current)`` holds; TimeoutError (with ``current``) if it does not."""
        deadline = time.monotonic() + check_timeout(timeout, "timeout")
        with self._cv:
            while True:
                current = self._state if self._fresh else None
                if predicate(current):
                    return current
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"mode watcher {self.path}: condition not met within {timeout:g}s; "
                                       f"current is {current}")
                self._cv.wait(remaining)

    def wait_for(self, mode: str, timeout: float) -> ModeState:
        """Block until the current mode is ``mode``."""
        check_mode(mode)
        state = self.wait_until(lambda s: s is not None and s.mode == mode, timeout)
        assert state is not None
        return state

    def close(self) -> None:
        self.client.remove_listener(self._on_session)
        with self._cv:
            self._closed = True
            self._fresh = False
            self._cv.notify_all()
        self._thread.join(self.deadline)

    def __enter__(self) -> ModeWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- kazoo callbacks: record and wake the reader, never block --------------------------

    def _on_session(self, state: str) -> None:
        with self._cv:
            if state == KazooState.CONNECTED:
                self._refresh_wanted = True
            else:
                self._generation += 1
                if self._fresh:
                    self._fresh = False
                    self._notify_wanted = True
            self._cv.notify_all()

    def _on_event(self, event: WatchedEvent) -> None:
        if event.type == EventType.NONE:
            return  # a watch dropped on connection loss; the session listener handles it
        with self._cv:
            self._refresh_wanted = True
            self._cv.notify_all()

    # -- reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._closed or self._refresh_wanted or self._notify_wanted):
                    wait = None if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
                    if wait == 0.0:
                        self._retry_at, self._refresh_wanted = None, True
                        break
                    self._cv.wait(wait)
                if self._closed:
                    return
                refresh, self._refresh_wanted = self._refresh_wanted, False
                notify, self._notify_wanted = self._notify_wanted, False
                generation = self._generation
            if notify:
                self._emit()
            if refresh:
                self._refresh(generation)

    def _refresh(self, generation: int) -> None:
        if self.client.state != KazooState.CONNECTED:
            return  # the CONNECTED listener asks again
        retry = bounded_retry(self.deadline)
        try:
            try:
                data, stat = retry(self.client.get, self.path, watch=self._watch)
                state = parse_mode(data, stat)
            except NoNodeError:
                if retry(self.client.exists, self.path, watch=self._watch) is not None:
                    with self._cv:
                        self._refresh_wanted = True  # created between the two reads
                    return
                log.warning("mode znode %s does not exist: no mode, writes refused", self.path)
                state = None
            except InvalidModeData as exc:
                log.error("mode znode %s: %s; no mode, writes refused", self.path, exc)
                state = None
        except CONNECTIVITY_ERRORS as exc:
            log.warning("mode watcher %s: read failed (%s); retrying", self.path, type(exc).__name__)
            with self._cv:
                self._retry_at = time.monotonic() + 0.5
            return
        with self._cv:
            if self._closed or generation != self._generation:
                return  # the connection dropped while we read: stay fenced until the next read
            changed = not self._fresh or self._state != state
            self._state, self._fresh = state, True
            self._cv.notify_all()
        if changed:
            self._emit()

    def _emit(self) -> None:
        with self._cv:
            callbacks, current = list(self._callbacks), (self._state if self._fresh else None)
        for callback in callbacks:
            try:
                callback(current)
            except Exception:
                log.exception("mode watcher %s: callback %r failed", self.path, callback)
