"""Entity-group lock: one ZooKeeper lock per (app, entity group), for the proxy's transactions.

Error handling
==============

The lock is an ephemeral sequential znode (kazoo's ``Lock`` recipe), so it lives exactly
as long as the session that created it:

* **SUSPENDED** — the connection is down; the session (and the lock) may or may not
  survive. ``is_held`` is False until the client is CONNECTED again with the *same*
  session, and ``ensure_held()`` raises ``GroupLockLost``: a transaction must not commit
  while it cannot know it still holds its group.
* **LOST** — the session expired: the lock is gone, and another client may hold it now.
  ``is_held`` stays False for good; ``release()`` then only forgets the lock.

So a read-check-write calls ``ensure_held()`` immediately before its write. Ownership is
checked against the lock node's ``ephemeralOwner`` right after acquiring: if the session
that made the node expired while kazoo was acquiring, the acquire fails with
``GroupLockLost`` rather than report a lock that no longer exists.

Every wait has a deadline: ``acquire`` takes a timeout (default ``timeout``; kazoo's own
retry is given it as its deadline) and raises ``GroupLockTimeout`` naming the lock path and
the current holder. While ZooKeeper is out of reach kazoo queues the recipe's calls until it
reconnects, so the acquire runs on a thread that is abandoned (cancelled, and its lock
released should it get one later) ``ANSWER_GRACE_S`` past the timeout; the other calls go
through ``bounded_retry``, whose attempts are bounded by its deadline too. ``release``
deletes the node that way; if that fails the node disappears when the session ends, and
``GroupLockError`` says so.

Why the lock node name carries a uuid prefix (kazoo's recipe): a create can succeed on the
server while its reply is lost; on retry the prefix lets the recipe find its own node
instead of creating a second contender that would deadlock behind the first.

Paths: ``/nxnw/locks/<app>/<group>``. The tree mirror copies ``/nxnw``, so a lock held on
N1 is visible on N2 (as a marked persistent copy, see ``sync.mirror``); in ``cow`` mode the
proxy takes the group's lock on both sides (invariant 4), N1 first, then N2.

asyncio
=======

kazoo has no asyncio handler, so ``acquire_async`` (and ``async with``) run the blocking
calls on the bounded executors of ``sync.aio``, by its policy — never on the event loop.
A waiting acquire occupies one thread of the wait pool (``zk_wait_executor``, or the
``wait_executor`` given) for up to its timeout; the timeout counts time spent queued for a
thread. Releases run on the short-call pool (``run_blocking(lock.release)`` outside
``async with``), so they never queue behind waiters. Cancelling the awaiting task cancels
the acquire; if the thread had already got the lock by then, it is released — which is
why ``acquire_async`` submits to the pool itself instead of calling ``run_blocking``.

Must never: report a lock as held when its session may be gone; wait without a deadline;
let a lock object be acquired twice (the recipe is not re-entrant).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, LockTimeout, NoNodeError
from kazoo.protocol.states import KazooState
from kazoo.recipe.lock import Lock

from sync import layout
from sync._zk import CONNECTIVITY_ERRORS, bounded_retry, check_name, check_path, check_timeout, join
from sync.aio import run_blocking, zk_wait_executor

log = logging.getLogger("nxnw.sync.lock")

LOCKS_ROOT = layout.LOCKS
#: How long past its timeout an acquire's thread is waited for before it is abandoned.
ANSWER_GRACE_S = 1.0


class GroupLockError(RuntimeError):
    """The lock could not be taken, kept or released; the message names the lock path."""


class GroupLockTimeout(GroupLockError, TimeoutError):
    """Not acquired within the timeout."""


class GroupLockLost(GroupLockError):
    """The lock's session was suspended or lost: the lock may be held by someone else."""


def _default_identifier() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class GroupLock:
    """The lock of entity group ``group`` of application ``app``.

    One object is one contender: acquire, do the transaction, release; it may be acquired
    again after release. Use ``with lock:`` from threads, ``async with lock:`` from asyncio.
    """

    def __init__(self, client: KazooClient, app: str, group: str, *, timeout: float = 10.0,
                 root: str = LOCKS_ROOT, identifier: str | None = None, op_deadline: float = 10.0,
                 wait_executor: ThreadPoolExecutor | None = None) -> None:
        self.client = client
        self.app = check_name(app, "app")
        self.group = check_name(group, "entity group")
        self.path = join(join(check_path(root, "locks root"), self.app), self.group)
        self.timeout = check_timeout(timeout, "lock timeout")
        self.op_deadline = check_timeout(op_deadline, "op_deadline")
        self.identifier = identifier or _default_identifier()
        self._wait_executor = wait_executor
        self._mutex = threading.Lock()
        self._pending: Lock | None = None     # kazoo lock being acquired
        self._lock: Lock | None = None        # kazoo lock held
        self._owner: int | None = None        # session id owning the held node
        self._lost = False

    # -- state -----------------------------------------------------------------------------

    @property
    def node(self) -> str | None:
        """Full path of this contender's lock node while held."""
        lock = self._lock
        return join(self.path, lock.node) if lock is not None and lock.node else None

    @property
    def is_held(self) -> bool:
        """True only while the lock is held by a session known to be alive right now."""
        client_id = self.client.client_id
        return (self._lock is not None and not self._lost and self.client.state == KazooState.CONNECTED
                and client_id is not None and client_id[0] == self._owner)

    def ensure_held(self) -> None:
        """Raise GroupLockLost unless the lock is held; call it right before the write."""
        if self._lock is None:
            raise GroupLockLost(f"lock {self.path} is not held by this contender")
        if not self.is_held:
            why = "session lost" if self._lost else f"session {self.client.state.lower()}"
            raise GroupLockLost(f"lock {self.path} may no longer be held ({why}); do not write")

    def holder(self) -> str | None:
        """Identifier of the contender that holds the lock now, or None if it is free."""
        retry = bounded_retry(self.op_deadline, ignore_expire=True)
        try:
            children = retry(self.client.get_children, self.path)
        except NoNodeError:
            return None
        contenders = sorted((c[-10:], c) for c in children if "__lock__" in c)
        for _, name in contenders:
            try:
                data, _ = retry(self.client.get, join(self.path, name))
                return data.decode("utf-8", "replace")
            except NoNodeError:
                continue  # released meanwhile: the next one holds it
        return None

    def _on_session(self, state: str) -> None:
        # kazoo connection thread: record only.
        if state == KazooState.LOST:
            self._lost = True

    # -- blocking API ----------------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> None:
        """Block until the lock is held, or raise GroupLockTimeout after ``timeout`` seconds
        (plus ``ANSWER_GRACE_S`` at most, however long ZooKeeper stays out of reach: the
        acquire runs on the wait pool and is abandoned then, as in ``acquire_async``)."""
        timeout = self.timeout if timeout is None else check_timeout(timeout, "lock timeout")
        future = (self._wait_executor or zk_wait_executor()).submit(self._acquire_by, time.monotonic() + timeout,
                                                                     timeout)
        try:
            future.result(timeout + ANSWER_GRACE_S)
        except TimeoutError:
            if future.done():
                raise  # the acquire's own GroupLockTimeout
            raise self._outlived(future, timeout) from None

    def _acquire_by(self, deadline: float, timeout: float) -> None:
        with self._mutex:
            if self._lock is not None or self._pending is not None:
                raise GroupLockError(f"lock {self.path} is already held or being acquired by this "
                                     "contender; it is not re-entrant")
            lock = self._pending = Lock(self.client, self.path, self.identifier)
            self._lost = False
        self.client.add_listener(self._on_session)
        got = False
        try:
            remaining = deadline - time.monotonic()
            if remaining > 0:
                try:
                    got = lock.acquire(timeout=remaining)
                except LockTimeout:
                    got = False
            if not got:
                raise GroupLockTimeout(self._timeout_message(timeout))
            owner = self._node_owner(lock)
            with self._mutex:
                self._lock, self._owner = lock, owner
        except BaseException:
            self.client.remove_listener(self._on_session)
            if got:
                self._delete_node(lock)
            raise
        finally:
            with self._mutex:
                self._pending = None

    def _timeout_message(self, timeout: float) -> str:
        try:
            holder = self.holder()
        except (KazooException, *CONNECTIVITY_ERRORS) as exc:
            holder = f"unknown ({type(exc).__name__})"
        return f"lock {self.path} not acquired within {timeout:g}s; held by {holder}"

    def _node_owner(self, lock: Lock) -> int:
        path = join(self.path, lock.node)
        stat = bounded_retry(self.op_deadline)(self.client.exists, path)
        client_id = self.client.client_id
        if stat is None or client_id is None or stat.ephemeralOwner != client_id[0]:
            raise GroupLockLost(f"lock {self.path}: node {lock.node} vanished with its session while acquiring")
        return stat.ephemeralOwner

    def release(self) -> None:
        """Release the lock (a no-op if it is not held)."""
        with self._mutex:
            lock, self._lock, self._owner = self._lock, None, None
        if lock is None:
            return
        self.client.remove_listener(self._on_session)
        if self._lost:
            lock.is_acquired = False  # the node went with the session
            return
        self._delete_node(lock)

    def _delete_node(self, lock: Lock) -> None:
        path = join(self.path, lock.node)
        try:
            bounded_retry(self.op_deadline)(self.client.delete, path)
        except NoNodeError:
            pass
        except CONNECTIVITY_ERRORS as exc:
            raise GroupLockError(f"lock {self.path}: could not delete {lock.node} within {self.op_deadline:g}s "
                                 f"({type(exc).__name__}); it disappears when this session ends") from exc
        finally:
            lock.is_acquired = False
            lock.node = None

    def __enter__(self) -> GroupLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._release_on_exit(exc is not None)

    def _release_on_exit(self, failing: bool) -> None:
        try:
            self.release()
        except GroupLockError:
            if not failing:
                raise
            log.exception("lock %s: release failed while another error propagates", self.path)

    # -- asyncio API -----------------------------------------------------------------------

    async def acquire_async(self, timeout: float | None = None) -> None:
        """``acquire`` off the event loop; cancelling the task cancels the acquire.

        The thread's acquire is waited for ``ANSWER_GRACE_S`` past its timeout and then
        abandoned: kazoo's recipe makes calls that wait for as long as ZooKeeper is out of
        reach (kazoo queues them until it reconnects), and the lock's timeout must hold then
        too."""
        timeout = self.timeout if timeout is None else check_timeout(timeout, "lock timeout")
        deadline = time.monotonic() + timeout  # queueing for an executor thread counts
        future = (self._wait_executor or zk_wait_executor()).submit(self._acquire_by, deadline, timeout)
        waited = asyncio.wrap_future(future)
        try:
            await asyncio.wait([waited], timeout=timeout + ANSWER_GRACE_S)
        except asyncio.CancelledError:
            waited.cancel()
            self._abandon(future)
            raise
        if not waited.done():
            waited.cancel()
            raise self._outlived(future, timeout)
        waited.result()

    def _outlived(self, future: concurrent.futures.Future, timeout: float) -> GroupLockTimeout:
        """Abandon an acquire whose thread outlived its timeout; the error to raise."""
        self._abandon(future)
        return GroupLockTimeout(f"lock {self.path} not acquired within {timeout:g}s: ZooKeeper did not answer in time")

    def _abandon(self, future: concurrent.futures.Future) -> None:
        if future.cancel():
            return  # never started
        pending = self._pending
        if pending is not None:
            pending.cancel()  # wakes kazoo's wait; it cleans up its node and raises

        def release_if_acquired(f: concurrent.futures.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                try:
                    self.release()
                except GroupLockError:
                    log.exception("lock %s: releasing a lock whose acquire was cancelled", self.path)

        future.add_done_callback(release_if_acquired)

    async def __aenter__(self) -> GroupLock:
        await self.acquire_async()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        await run_blocking(self._release_on_exit, exc is not None)
