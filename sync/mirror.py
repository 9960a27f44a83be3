"""Tree mirror: copy a subtree of N1's ZooKeeper to N2, then keep it current until stopped.

Error handling
==============

The mirror holds its own session on each side and listens to both:

* **N1 SUSPENDED or LOST.** kazoo drops every watch a client holds on *any* connection
  loss (it does not re-send them after reconnecting), so a change made while the connection
  was down would never be notified. The mirror therefore schedules a full resync for when
  N1 is CONNECTED again: it re-reads every node of the subtree (re-arming its watches) and
  applies whatever differs. Nodes whose N1 stat (mzxid, pzxid, aversion, owner) is what the
  mirror last applied are not re-read on N2.
* **N2 SUSPENDED.** The session, and everything already written, survive. Calls in flight
  are retried until ``op_deadline``; if that passes, a full resync runs after reconnection.
* **N2 LOST.** A full *verifying* resync: N2 is re-read node by node rather than trusted to
  match what the mirror remembers applying; missing nodes are created, differing data and
  ACLs are set, extra nodes are deleted.
* Every ZooKeeper call goes through a ``KazooRetry`` with a deadline (``op_deadline``).
  When a retry gives up, the work is not dropped: a full resync is scheduled. A node that
  cannot be copied for another reason (no permission on N2, say) is logged with its path,
  kept in ``errors`` (``wait_synced`` raises ``MirrorError`` naming it) and retried at the
  next full resync; it does not stop the rest of the tree.

What is copied
==============

Data, ACLs and names. Sequential nodes keep their names (they are created on N2 by name,
not with the sequence flag). The mirror owns ``root`` on N2: what is there and not on N1
is deleted (N2's own ephemeral nodes excepted, below), and if N1 has no ``root``, N2 has
none either. ACL changes fire no ZooKeeper watch, so an ACL-only change on N1 reaches N2
with the node's next data or children change, or at the next full resync (every
``resync_interval`` seconds, verifying). Nodes N2 lacks (the initial copy, a new subtree)
are copied in pipelined batches of siblings — N1 reads and N2 creates in flight together,
no N2 reads — about 1,000 nodes/s on loopback; a node already on N2 is compared field by
field.

**Ephemeral nodes** (policy). An N1 ephemeral node is copied to N2 as a *persistent* node
with the same name and data, and *marked*: its path is recorded under ``marker_path`` on
N2 (default ``/nxnw-mirror/ephemerals/<url-quoted path>``; the marker is written before the
copy, so an unmarked copy never exists). When the node vanishes on N1 (its session ended,
or it was deleted) the copy and its marker are deleted on N2. Copies are persistent so that
an N1 lock stays visible on N2 across the mirror's own N2 reconnects; the marker lets
``purge_ephemeral_copies`` remove copies left behind once mirroring has stopped (a copy of
a lock held by a dead N1 session would otherwise block N2's lock forever).

**N2's own ephemeral nodes are never deleted.** A node that exists on N2 but not on N1 is
deleted — unless it is ephemeral: the mirror only ever creates persistent nodes, so an
ephemeral node on N2 belongs to a live N2 client (a lock taken on N2 in ``cow`` mode); it
and the ancestors that hold it are left alone. If N2 has its own ephemeral node where N1
has a node, that path is reported in ``errors``, not overwritten.

**Sequence counters.** ZooKeeper names a sequential child after its parent's count of child
*creations*. The ``cversion`` a client sees counts creations and deletions (the server's
DataNode.copyStat reports ``2 * creations - numChildren``), so the next suffix is
``(cversion + numChildren) // 2`` (``next_sequence_suffix``). N2 must never hand out a
suffix N1 has already issued — a new N2 lock contender would take the name of a copied N1
holder, or sort ahead of it. So before the mirror creates a parent's missing children on
N2 it raises that parent's N2 counter to *at least N1's whole counter*, not to N1's minus
the children about to be copied: those copies are created by name one by one, and until
the last of them exists (or if N1 deleted one meanwhile, so it is never copied) an N2
counter raised only part-way would hand a new N2 node a suffix N1 issued. The copies then
add one each, leaving N2's counter ahead of N1's: a gap in N2's numbering is harmless, a
repeat is not. Names are copied, not re-generated, so the counter is raised by creating
and deleting a throw-away child (``.nxnw-seq-bump``), many pairs per ZooKeeper
multi-transaction (each creation adds one; a ~256 KB multi holds about a thousand pairs,
~17,000 per second on loopback). Most of that work falls in the initial copy; afterwards
N2's counter stays ahead by the children it copied, and N1's creations rarely need a bump.

Stopping: ``finish`` runs one last verifying full resync (reading every node and ACL on
both sides, so even an ACL-only change, which fires no watch, arrives) and only then
stops. If that sync cannot complete in time, ``finish`` raises and the mirror keeps
running, so the caller can retry or decide; ``stop`` alone stops without it.

Threading
=========

The mirror runs one background worker thread; it is not an asyncio object. Watch callbacks
(on kazoo's callback thread) only mark paths dirty; the worker reads N1 and writes N2. So
``start``, ``stop`` and ``wait_synced`` block: from a coroutine, call them through
``sync.aio.run_blocking``.

Lag: ``lag`` (and the gauge ``nxnw_zk_mirror_lag_seconds{root=...}``) is the age in
seconds of the oldest N1 change the mirror knows of and has not finished applying, a
pending full resync counting from when it was needed; 0 when caught up.

Must never: write to N1; touch N2 outside ``root`` other than the ancestors of ``root``
(created empty, open ACL) and the marker registry; delete an ephemeral node on N2.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from kazoo.client import KazooClient
from kazoo.exceptions import (KazooException, NoAuthError, NoNodeError, NodeExistsError, NotEmptyError,
                              RolledBackError)
from kazoo.protocol.states import Callback, EventType, KazooState, WatchedEvent, ZnodeStat
from prometheus_client import Gauge

from sync import layout
from sync._zk import (CONNECTIVITY_ERRORS, bounded_retry, check_path, check_timeout, decode_name, encode_name,
                      is_under, join, parent_of)
from sync.zk_client import zk_client

log = logging.getLogger("nxnw.sync.mirror")

MIRROR_LAG = Gauge("nxnw_zk_mirror_lag_seconds",
                   "Age of the oldest N1 ZooKeeper change not yet applied to N2 (0 when caught up)", ["root"])

DEFAULT_MARKER_PATH = layout.MIRROR_MARKERS
#: The throw-away child created and deleted to raise an N2 parent's sequence counter.
BUMP_CHILD = ".nxnw-seq-bump"
#: Bytes of create+delete operations per multi; ZooKeeper refuses packets near 1 MB
#: (jute.maxbuffer) and drops the connection.
_BUMP_MULTI_BYTES = 256 * 1024
_RESERVED = "/zookeeper"
#: Sibling nodes copied per pipelined batch.
_NEW_BATCH = 256

ClientSource = str | Callable[[], KazooClient]


class MirrorError(RuntimeError):
    """Some nodes could not be copied; ``errors`` maps each path to the reason."""

    def __init__(self, root: str, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        sample = "; ".join(f"{p}: {e}" for p, e in list(errors.items())[:5])
        super().__init__(f"zk mirror {root}: {len(errors)} node(s) not copied to N2: {sample}")


@dataclass
class MirrorStats:
    full_syncs: int = 0
    events: int = 0
    created: int = 0
    updated: int = 0
    acls_set: int = 0
    deleted: int = 0
    sequence_increments: int = 0


class _Applied(NamedTuple):
    """What the mirror last made N2 match, per path, as N1 stat fields."""
    mzxid: int
    pzxid: int
    aversion: int
    ephemeral_owner: int


class _SrcNode(NamedTuple):
    """One N1 node as read for copying."""
    data: bytes
    stat: ZnodeStat
    children: list[str]
    cstat: ZnodeStat
    acl: list


def next_sequence_suffix(stat: ZnodeStat) -> int:
    """The suffix ZooKeeper gives the next sequential child of the node with this stat."""
    return (stat.cversion + stat.numChildren) // 2


class TreeMirror:
    """Mirror N1's ``root`` subtree onto N2 (see the module docstring for every policy).

    ``src`` and ``dst`` are ``host:port[,host:port]`` strings, or zero-argument callables
    returning a new, unstarted KazooClient. The mirror owns the clients it makes: it starts
    them in ``start`` and closes them in ``stop``.
    """

    def __init__(self, src: ClientSource, dst: ClientSource, root: str, *,
                 session_timeout: float = 10.0, op_deadline: float = 10.0,
                 resync_interval: float | None = 300.0, marker_path: str = DEFAULT_MARKER_PATH,
                 src_auth: list[tuple[str, str]] | None = None,
                 dst_auth: list[tuple[str, str]] | None = None) -> None:
        self.root = check_path(root, "mirror root")
        self.marker_path = check_path(marker_path, "marker path")
        if self.marker_path == "/":
            raise ValueError("marker path must not be '/'")
        self._marker_top = "/" + self.marker_path.split("/")[1]
        if is_under(self.root, self._marker_top) or is_under(self.root, _RESERVED):
            raise ValueError(f"mirror root {root!r} lies inside {self._marker_top!r} or {_RESERVED!r}, "
                             "which the mirror never copies")
        if isinstance(src, str) and isinstance(dst, str) and src == dst:
            raise ValueError(f"source and destination are the same ensemble {src!r}")
        self.op_deadline = check_timeout(op_deadline, "op_deadline")
        self.session_timeout = check_timeout(session_timeout, "session_timeout")
        self.resync_interval = None if resync_interval is None else check_timeout(resync_interval, "resync_interval")
        self._src_source, self._dst_source = src, dst
        self._src_auth, self._dst_auth = src_auth, dst_auth
        self.stats = MirrorStats()

        self._cv = threading.Condition()
        # Everything below guarded by _cv.
        self._dirty: dict[str, float] = {}          # path -> when its first pending event arrived
        self._resync_since: float | None = None      # a full resync is pending since then
        self._resync_verify = False
        self._inflight_since: float | None = None
        self._src_connected = self._dst_connected = False
        self._synced_once = False
        self._stopping = False
        self._errors: dict[str, str] = {}
        # Worker thread only.
        self._applied: dict[str, _Applied] = {}
        self._marked: set[str] = set()
        self._current: str | None = None
        self._last_full_sync = 0.0

        self._watch = self._on_src_event  # one bound method, so kazoo's watcher sets dedupe it
        self._src: KazooClient | None = None
        self._dst: KazooClient | None = None
        self._thread: threading.Thread | None = None
        self._retry = bounded_retry(self.op_deadline, interrupt=lambda: self._stopping)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to both sides and start the worker; the initial copy runs in the background."""
        if self._thread is not None:
            raise RuntimeError(f"zk mirror {self.root} was already started")
        self._src = self._make_client(self._src_source, self._src_auth, "N1")
        self._dst = self._make_client(self._dst_source, self._dst_auth, "N2")
        try:
            for side, client in (("N1", self._src), ("N2", self._dst)):
                try:
                    client.start(timeout=self.op_deadline)
                except Exception as exc:
                    raise ConnectionError(f"zk mirror {self.root}: cannot connect to {side} "
                                          f"({client.hosts}): {exc}") from exc
        except BaseException:
            self._close_clients()
            raise
        with self._cv:
            self._src_connected = self._src.connected
            self._dst_connected = self._dst.connected
            self._resync_since, self._resync_verify = time.monotonic(), True
        self._src.add_listener(self._on_src_state)
        self._dst.add_listener(self._on_dst_state)
        MIRROR_LAG.labels(root=self.root).set_function(lambda: self.lag)
        self._thread = threading.Thread(target=self._run, name=f"nxnw-zk-mirror{self.root}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker and close both sessions. Copies of N1 ephemerals stay on N2."""
        with self._cv:
            if self._stopping or self._thread is None:
                return
            self._stopping = True
            self._cv.notify_all()
        self._src.remove_listener(self._on_src_state)
        self._dst.remove_listener(self._on_dst_state)
        for client in (self._src, self._dst):
            try:
                client.stop()  # a call in flight in the worker fails with ConnectionClosedError
            except Exception:
                log.exception("zk mirror %s: stopping client %s", self.root, client.hosts)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("zk mirror %s: worker did not exit within %.1fs", self.root, timeout)
        self._close_clients()
        try:
            MIRROR_LAG.remove(self.root)
        except KeyError:
            pass

    def finish(self, timeout: float) -> None:
        """One last verifying full resync, then stop: N2 then holds what N1 held at this call.

        Raises TimeoutError or MirrorError (see ``wait_synced``) if the sync does not complete
        within ``timeout``; the mirror is then still running and ``finish`` may be retried.
        """
        with self._cv:
            if self._thread is None or self._stopping:
                raise RuntimeError(f"zk mirror {self.root} is not running")
            self._request_resync(verify=True)
            self._cv.notify_all()
        self.wait_synced(timeout)
        self.stop()

    def __enter__(self) -> TreeMirror:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _make_client(self, source: ClientSource, auth: list[tuple[str, str]] | None, side: str) -> KazooClient:
        if isinstance(source, str):
            return zk_client(source, timeout=self.session_timeout, auth_data=auth)
        client = source()
        if not isinstance(client, KazooClient):
            raise TypeError(f"zk mirror {self.root}: the {side} client factory returned {client!r}, not a KazooClient")
        return client

    def _close_clients(self) -> None:
        for client in (self._src, self._dst):
            if client is not None:
                try:
                    client.stop()
                    client.close()
                except Exception:
                    log.exception("zk mirror %s: closing client %s", self.root, client.hosts)

    # -- observation -----------------------------------------------------------------------

    @property
    def src_client(self) -> KazooClient | None:
        """The mirror's own N1 session (for tests and diagnostics; do not stop it)."""
        return self._src

    @property
    def dst_client(self) -> KazooClient | None:
        """The mirror's own N2 session (for tests and diagnostics; do not stop it)."""
        return self._dst

    @property
    def errors(self) -> dict[str, str]:
        with self._cv:
            return dict(self._errors)

    @property
    def lag(self) -> float:
        """Seconds since the oldest N1 change not yet applied to N2 (0.0 when caught up)."""
        with self._cv:
            times = [t for t in (self._inflight_since, self._resync_since) if t is not None]
            if self._dirty:
                times.append(next(iter(self._dirty.values())))
        return max(0.0, time.monotonic() - min(times)) if times else 0.0

    def wait_synced(self, timeout: float) -> None:
        """Block until every N1 change committed before this call is applied on N2.

        Raises TimeoutError (with what is still pending) if that takes longer than
        ``timeout``, and MirrorError if some nodes could not be copied.
        """
        if self._thread is None or self._stopping:
            raise RuntimeError(f"zk mirror {self.root} is not running")
        deadline = time.monotonic() + check_timeout(timeout, "timeout")
        self._drain_src_notifications(deadline, timeout)
        with self._cv:
            while not self._caught_up():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"zk mirror {self.root} not synced within {timeout:g}s: "
                                       f"{self._backlog()}")
                self._cv.wait(remaining)
            errors = dict(self._errors)
        if errors:
            raise MirrorError(self.root, errors)

    def _drain_src_notifications(self, deadline: float, timeout: float) -> None:
        # ZooKeeper sends a session its watch notifications before the reply to any later
        # request, so after a sync() round trip every notification for a change committed
        # before this call has reached kazoo, which queues watch callbacks in order on one
        # thread: once a marker queued behind them has run, they have all marked their paths.
        try:
            bounded_retry(max(deadline - time.monotonic(), 0.01), ignore_expire=True)(self._src.sync, "/")
        except CONNECTIVITY_ERRORS as exc:
            raise TimeoutError(f"zk mirror {self.root} not synced within {timeout:g}s: "
                               f"N1 unreachable ({type(exc).__name__})") from exc
        drained = threading.Event()
        self._src.handler.dispatch_callback(Callback("watch", drained.set, ()))
        if not drained.wait(max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"zk mirror {self.root} not synced within {timeout:g}s: "
                               "N1 watch callbacks are backed up")

    def _caught_up(self) -> bool:
        # Idle with errors counts: wait_synced then raises MirrorError naming them, rather
        # than time out on an initial copy that failed outright.
        return ((self._synced_once or bool(self._errors)) and not self._dirty and self._inflight_since is None
                and self._resync_since is None and self._src_connected and self._dst_connected)

    def _backlog(self) -> str:
        return (f"{len(self._dirty)} path(s) pending, full resync "
                f"{'pending' if self._resync_since is not None else 'not pending'}, "
                f"in flight: {self._current if self._inflight_since is not None else None}, "
                f"N1 {'connected' if self._src_connected else 'disconnected'}, "
                f"N2 {'connected' if self._dst_connected else 'disconnected'}, "
                f"initial copy {'done' if self._synced_once else 'not done'}, "
                f"{len(self._errors)} node(s) failing")

    # -- kazoo callbacks (never block: they run on kazoo's threads) ---------------------------

    def _on_src_event(self, event: WatchedEvent) -> None:
        # kazoo sends path-less NONE events to every watcher it drops on connection loss;
        # the state listener has already scheduled the resync that replaces those watches.
        if event.type == EventType.NONE or not event.path:
            return
        with self._cv:
            self.stats.events += 1
            self._dirty.setdefault(event.path, time.monotonic())
            self._cv.notify_all()

    def _on_src_state(self, state: str) -> None:
        with self._cv:
            self._src_connected = state == KazooState.CONNECTED
            if state != KazooState.CONNECTED:
                self._request_resync(verify=False)
            self._cv.notify_all()

    def _on_dst_state(self, state: str) -> None:
        with self._cv:
            self._dst_connected = state == KazooState.CONNECTED
            if state == KazooState.LOST:
                self._request_resync(verify=True)
            self._cv.notify_all()

    def _request_resync(self, verify: bool, since: float | None = None) -> None:
        # Caller holds _cv.
        since = time.monotonic() if since is None else since
        self._resync_since = since if self._resync_since is None else min(self._resync_since, since)
        self._resync_verify = self._resync_verify or verify

    # -- worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._next_job()
            if job is None:
                return
            kind, verify = job
            try:
                if kind == "full":
                    self._full_sync(verify)
                else:
                    self._sync_subtree(kind, deep=False, verify=False)
            except Exception as exc:
                if self._stopping:
                    return
                self._after_failure(exc)
            finally:
                with self._cv:
                    self._inflight_since = None
                    self._cv.notify_all()

    def _next_job(self) -> tuple[str, bool] | None:
        """("full", verify) or (dirty path, False); None when stopping."""
        with self._cv:
            while not self._stopping:
                now = time.monotonic()
                if (self.resync_interval is not None and self._last_full_sync and self._resync_since is None
                        and now - self._last_full_sync >= self.resync_interval):
                    self._request_resync(verify=True, since=now)
                if self._src_connected and self._dst_connected:
                    if self._resync_since is not None:
                        since = min([self._resync_since, *self._dirty.values()])
                        verify = self._resync_verify
                        self._resync_since, self._resync_verify = None, False
                        self._dirty.clear()  # the full resync reads every node's current state
                        self._inflight_since = since
                        return "full", verify
                    if self._dirty:
                        path, since = next(iter(self._dirty.items()))
                        del self._dirty[path]
                        self._inflight_since = since
                        return path, False
                wait = None
                if self.resync_interval is not None and self._last_full_sync:
                    wait = max(0.05, self._last_full_sync + self.resync_interval - now)
                self._cv.wait(wait)
            return None

    def _after_failure(self, exc: Exception) -> None:
        current = self._current
        if current is not None:  # whatever was half-applied there is re-checked on N2
            self._applied.pop(current, None)
            self._applied.pop(parent_of(current), None)
        with self._cv:
            since = self._inflight_since
            if isinstance(exc, CONNECTIVITY_ERRORS):
                log.warning("zk mirror %s: %s while syncing %s; full resync once both sides are connected",
                            self.root, type(exc).__name__, current)
                self._request_resync(verify=False, since=since)
            elif isinstance(exc, KazooException):  # e.g. no permission on root's parent on N2
                self._errors[current or self.root] = _describe(exc)
                log.error("zk mirror %s: cannot sync %s: %s", self.root, current, _describe(exc))
            else:
                # A bug, not a ZooKeeper condition: say so loudly; the periodic resync retries.
                log.exception("zk mirror %s: unexpected error while syncing %s", self.root, current)
                self._errors[current or self.root] = f"{type(exc).__name__}: {exc}"

    def _full_sync(self, verify: bool) -> None:
        self.stats.full_syncs += 1
        self._last_full_sync = time.monotonic()  # also when it fails: the periodic resync retries
        self._current = self.root
        log.info("zk mirror %s: full resync (%s)", self.root, "verifying N2" if verify else "N1 changes only")
        if verify:
            self._applied.clear()
        with self._cv:
            self._errors.clear()
        self._load_markers()
        if self.root != "/":
            self._retry(self._dst.ensure_path, parent_of(self.root))
        self._sync_subtree(self.root, deep=True, verify=verify)
        self._last_full_sync = time.monotonic()
        with self._cv:
            self._synced_once = True

    def _sync_subtree(self, path: str, deep: bool, verify: bool) -> None:
        # Work items: (path, deep) is "make N2's path match N1's"; a list of sibling paths
        # is "copy these, known to be missing on N2" (pipelined, see _copy_new).
        stack: list[tuple[str, bool] | list[str]] = [(path, deep)]
        while stack:
            if self._stopping:
                return
            item = stack.pop()
            if isinstance(item, list):
                self._copy_new(item, stack)
                continue
            node, node_deep = item
            self._current = node
            try:
                self._sync_node(node, node_deep, verify, stack)
            except CONNECTIVITY_ERRORS:
                raise
            except NoNodeError:
                # The node vanished on one side between two of our reads (N1 churn, say):
                # not an error — look at it again from the top.
                self._applied.pop(node, None)
                self._mark_dirty(node)
            except KazooException as exc:
                self._record_error(node, exc)
            else:
                self._clear_error(node)
        self._current = None

    def _record_error(self, path: str, exc: KazooException) -> None:
        reason = _describe(exc)
        log.error("zk mirror %s: cannot copy %s: %s", self.root, path, reason)
        self._applied.pop(path, None)
        with self._cv:
            self._errors[path] = reason

    def _clear_error(self, path: str) -> None:
        if self._errors:
            with self._cv:
                self._errors.pop(path, None)

    @staticmethod
    def _push_new(stack: list, paths: list[str]) -> None:
        for i in range(0, len(paths), _NEW_BATCH):
            stack.append(paths[i:i + _NEW_BATCH])

    def _copy_new(self, paths: list[str], stack: list) -> None:
        """Copy sibling nodes that N2 lacks: N1 reads and N2 creates pipelined, no N2 reads.

        The initial copy and every new subtree go this way; a node that turns out to exist
        on N2 after all is handed to the ordinary ``_sync_node`` path.
        """
        self._current = paths[0]
        reads = self._retry(self._read_src_batch, paths)
        fresh: dict[str, _SrcNode] = {}
        for path, read in reads.items():
            if isinstance(read, KazooException):
                self._record_error(path, read)
            elif read is not None:  # None: gone from N1 already, and N2 never had it
                if read.stat.ephemeralOwner and path not in self._marked:
                    self._put_marker(path, read.stat.ephemeralOwner)  # before the copy
                fresh[path] = read
        outcomes = self._retry(self._create_dst_batch, fresh)
        for path, outcome in outcomes.items():
            node = fresh[path]
            if outcome == "exists":  # made meanwhile, or by our own attempt before a retry
                stack.append((path, True))
            elif outcome == "no parent":
                self._applied.pop(parent_of(path), None)
                self._mark_dirty(parent_of(path))
            elif isinstance(outcome, KazooException):
                self._record_error(path, outcome)
            else:
                self.stats.created += 1
                children = [c for c in node.children if not self._excluded(join(path, c))]
                try:
                    target = next_sequence_suffix(node.cstat)  # all of N1's, before any child exists here
                    if target > 0:
                        self._raise_sequence_counter(path, target)
                except CONNECTIVITY_ERRORS:
                    raise
                except KazooException as exc:
                    self._record_error(path, exc)
                    continue
                self._applied[path] = _Applied(node.stat.mzxid, node.cstat.pzxid, node.stat.aversion,
                                               node.stat.ephemeralOwner)
                self._clear_error(path)
                self._push_new(stack, [join(path, c) for c in children])

    def _read_src_batch(self, paths: list[str]) -> dict[str, _SrcNode | KazooException | None]:
        src, watch = self._src, self._watch
        pending = [(p, src.get_async(p, watch=watch), src.get_children_async(p, watch=watch, include_data=True),
                    src.get_acls_async(p)) for p in paths]
        out: dict[str, _SrcNode | KazooException | None] = {}
        for path, got, listed, acls in pending:
            try:
                data, stat = got.get()
                children, cstat = listed.get()
                acl, _ = acls.get()
            except NoNodeError:
                out[path] = None
            except CONNECTIVITY_ERRORS:
                raise
            except KazooException as exc:
                out[path] = exc
            else:
                out[path] = _SrcNode(data, stat, children, cstat, acl)
        return out

    def _create_dst_batch(self, nodes: dict[str, _SrcNode]) -> dict[str, str | KazooException]:
        pending = [(p, self._dst.create_async(p, n.data, acl=n.acl)) for p, n in nodes.items()]
        out: dict[str, str | KazooException] = {}
        for path, created in pending:
            try:
                created.get()
                out[path] = "created"
            except NodeExistsError:
                out[path] = "exists"
            except NoNodeError:
                out[path] = "no parent"
            except CONNECTIVITY_ERRORS:
                raise
            except KazooException as exc:
                out[path] = exc
        return out

    def _sync_node(self, path: str, deep: bool, verify: bool, stack: list) -> None:
        """Make N2's ``path`` match N1's: data, ACL, marker, set of children, sequence counter.

        Missing children are pushed on ``stack`` as one batch for ``_copy_new``, so their
        subtrees follow; with ``deep`` every other child is pushed too.
        """
        src, dst, retry = self._src, self._dst, self._retry
        try:
            data, sstat = retry(src.get, path, watch=self._watch)
            children, cstat = retry(src.get_children, path, watch=self._watch, include_data=True)
        except NoNodeError:
            if path == self.root and retry(src.exists, path, watch=self._watch) is not None:
                self._mark_dirty(path)  # re-created between our reads; the exists watch may have fired already
                return
            self._delete_dst_subtree(path)
            return
        children = [c for c in children if not self._excluded(join(path, c))]
        key = _Applied(sstat.mzxid, cstat.pzxid, sstat.aversion, sstat.ephemeralOwner)
        previous = self._applied.pop(path, None)
        if previous == key and not verify:
            self._applied[path] = key
            if deep:
                stack.extend((join(path, c), True) for c in children)
            return

        is_ephemeral = sstat.ephemeralOwner != 0
        if is_ephemeral and path not in self._marked:
            self._put_marker(path, sstat.ephemeralOwner)  # before the copy: no unmarked copy, ever
        try:
            dst_data, dstat = retry(dst.get, path)
        except NoNodeError:
            acl, _ = retry(src.get_acls, path)
            try:
                retry(dst.create, path, data, acl=acl)
            except NoNodeError:
                # N2 lacks the parent: events arrived out of order. The parent's own sync
                # finds this child missing and copies it.
                self._applied.pop(parent_of(path), None)
                self._mark_dirty(parent_of(path))
                return
            except NodeExistsError:
                # Created meanwhile — or our create succeeded and its reply was lost, and
                # the retry hit our own node. Either way: look again.
                stack.append((path, deep))
                return
            self.stats.created += 1
            dst_children, dst_next = [], 0
        else:
            if dstat.ephemeralOwner:
                raise _N2Ephemeral(f"N2 holds an ephemeral node of its own session 0x{dstat.ephemeralOwner:x} "
                                   f"at {path}; the mirror never replaces N2's ephemeral nodes")
            if dst_data != data:
                retry(dst.set, path, data)
                self.stats.updated += 1
            if verify or previous is None or previous.aversion != sstat.aversion:
                acl, _ = retry(src.get_acls, path)
                dst_acl, _ = retry(dst.get_acls, path)
                if sorted(acl) != sorted(dst_acl):
                    retry(dst.set_acls, path, acl)
                    self.stats.acls_set += 1
            dst_children, dcstat = retry(dst.get_children, path, include_data=True)
            dst_next = next_sequence_suffix(dcstat)
        if not is_ephemeral and path in self._marked:
            self._drop_marker(path)  # re-created on N1 as a persistent node

        src_set, dst_set = set(children), set(dst_children)
        for child in dst_children:
            if child not in src_set and not self._excluded(join(path, child)):
                self._delete_dst_subtree(join(path, child))
        missing = [c for c in children if c not in dst_set]
        # Raise N2's counter to all of N1's before the missing children are created: until
        # the last copy exists, a counter short by their number would reissue N1's suffixes.
        target = next_sequence_suffix(cstat)
        if dst_next < target:
            self._raise_sequence_counter(path, target)
        self._applied[path] = key
        self._push_new(stack, [join(path, c) for c in missing])
        if deep:
            stack.extend((join(path, c), True) for c in children if c in dst_set)

    def _delete_dst_subtree(self, path: str) -> None:
        """Delete ``path`` and its subtree on N2, except N2's own ephemeral nodes and their ancestors."""
        try:
            children, stat = self._retry(self._dst.get_children, path, include_data=True)
        except NoNodeError:
            self._forget(path)
            return
        if stat.ephemeralOwner:
            log.info("zk mirror %s: keeping %s on N2: an ephemeral node of N2 session 0x%x",
                     self.root, path, stat.ephemeralOwner)
            return
        for child in children:
            if not self._excluded(join(path, child)):
                self._delete_dst_subtree(join(path, child))
        try:
            self._retry(self._dst.delete, path)
            self.stats.deleted += 1
        except NoNodeError:
            pass
        except NotEmptyError:
            log.info("zk mirror %s: keeping %s on N2: it holds N2's own ephemeral nodes", self.root, path)
            return
        self._forget(path)

    def _forget(self, path: str) -> None:
        self._applied.pop(path, None)
        if path in self._marked:
            self._drop_marker(path)

    def _raise_sequence_counter(self, path: str, target: int) -> None:
        """Create+delete BUMP_CHILD under N2's ``path`` until its next suffix is >= target."""
        bump = join(path, BUMP_CHILD)
        per_multi = max(1, _BUMP_MULTI_BYTES // (2 * (len(bump.encode()) + 64)))

        def step() -> int:
            # Re-reads the counter each time: a retried multi may have committed already.
            stat = self._dst.exists(path)
            if stat is None:
                return 0
            n = min(target - next_sequence_suffix(stat), per_multi)
            if n <= 0:
                return 0
            tx = self._dst.transaction()
            for _ in range(n):
                tx.create(bump)
                tx.delete(bump)
            failed = [r for r in tx.commit() if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
            if failed:
                raise failed[0]
            return n

        while not self._stopping:
            n = self._retry(step)
            if n == 0:
                return
            self.stats.sequence_increments += n

    # -- ephemeral markers (on N2) -------------------------------------------------------------

    def _marker(self, path: str) -> str:
        return join(self.marker_path, encode_name(path, "marked path"))

    def _load_markers(self) -> None:
        try:
            names = self._retry(self._dst.get_children, self.marker_path)
        except NoNodeError:
            names = []
        self._marked = {p for p in map(decode_name, names) if is_under(p, self.root)}

    def _put_marker(self, path: str, owner: int) -> None:
        payload = json.dumps({"path": path, "n1_session": f"0x{owner:x}", "copied_at": time.time()}).encode()
        try:
            self._retry(self._dst.create, self._marker(path), payload, makepath=True)
        except NodeExistsError:
            pass
        self._marked.add(path)

    def _drop_marker(self, path: str) -> None:
        try:
            self._retry(self._dst.delete, self._marker(path))
        except NoNodeError:
            pass
        self._marked.discard(path)

    # -- helpers -----------------------------------------------------------------------------

    def _excluded(self, path: str) -> bool:
        return is_under(path, _RESERVED) or is_under(path, self._marker_top)

    def _mark_dirty(self, path: str) -> None:
        with self._cv:
            self._dirty.setdefault(path, time.monotonic())
            self._cv.notify_all()


def _describe(exc: KazooException) -> str:
    if isinstance(exc, NoAuthError):
        return "NoAuthError: the mirror's identity lacks a permission on this node on N1 or N2 (pass src_auth/dst_auth)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _N2Ephemeral(KazooException):
    """N2 has its own ephemeral node where N1 has a node: reported, never overwritten."""


def ephemeral_copies(client: KazooClient, root: str, *, marker_path: str = DEFAULT_MARKER_PATH,
                     deadline: float = 10.0) -> list[str]:
    """Paths under ``root`` on N2 (``client``) that are marked copies of N1 ephemeral nodes."""
    check_path(root, "root")
    try:
        names = bounded_retry(deadline, ignore_expire=True)(client.get_children, check_path(marker_path, "marker path"))
    except NoNodeError:
        return []
    return sorted(p for p in map(decode_name, names) if is_under(p, root))


def purge_ephemeral_copies(client: KazooClient, root: str, *, marker_path: str = DEFAULT_MARKER_PATH,
                           deadline: float = 10.0) -> list[str]:
    """Delete, on N2, the marked copies of N1 ephemerals under ``root`` and their markers.

    For after mirroring has stopped (at handoff or rollback): a copy left behind would, for
    a lock, block N2's lock forever. Never call it while a mirror of ``root`` is running.
    Returns the paths deleted.
    """
    retry = bounded_retry(deadline, ignore_expire=True)
    purged = []
    for path in ephemeral_copies(client, root, marker_path=marker_path, deadline=deadline):
        try:
            retry(client.delete, path)
            purged.append(path)
        except NoNodeError:
            pass
        except NotEmptyError:
            log.warning("purge: %s on N2 has children now; left in place, marker removed", path)
        try:
            retry(client.delete, join(marker_path, encode_name(path, "marked path")))
        except NoNodeError:
            pass
    return purged
