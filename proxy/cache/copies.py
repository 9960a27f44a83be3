"""The asynchronous copy of cache writes (COW) and cache-on-read fills (COR) to the other side.

Responsible for: a bounded queue of copy jobs from ``source`` (the side that was written
or read) to ``dest`` (the side being kept warm), drained by a few background workers; the
set of keys whose copy was dropped (``dropped``), so that a mode switch can invalidate
them on ``dest`` first (DESIGN invariant 5).

Must never: block or fail the client's request (a full queue drops the job and records
the key); leave on ``dest`` a value that ``source`` has since overwritten, deleted or let
expire, whatever the order in which jobs, other proxy instances' jobs and fills land.

How a copy stays safe in any order — *write, then verify against the source*
--------------------------------------------------------------------------
Every job that puts a value on ``dest`` carries the source's CAS of the version it copies
(``ms … c`` tells the writer the CAS it stored; ``mg … c`` tells a reader the CAS it read):

1. store the value on ``dest`` (``set`` for a write's copy, ``add`` for a fill) and note the CAS
   ``dest`` gave it;
2. read the key's CAS on the source again (``mg key c``);
3. if the source no longer holds that version (other CAS, or absent), delete the copy on
   ``dest`` *only if* ``dest`` still holds exactly our copy (``md key C<dest cas>``).

A side may be a pool of servers (``pool.py``): each key lives on one server of each side,
always the same one, so everything below holds per key on that server; a batch's
requests go to their keys' servers, each server's share pipelined on its own connection.

Argument. CAS values are unique per memcached, and every write to an item (set, append,
incr, delete + re-add, …) gives it a new one; only ``touch`` does not, and a touch's own
copy re-copies the item with its new TTL. If step 2 sees the CAS read in step 0, no
write happened on the source between our read and step 2, and step 1 lies in that
interval: our copy was current when it landed. Any later write W happens after step 2,
so W's own job reads/stores after W and lands on ``dest`` after our copy — an overwrite
or delete of W wins. If step 2 sees a change, some write W happened in the window; step 3
removes our copy unless something already replaced it (then ``md`` answers EX and that
newer copy, which is verified by its own job, stays). If W's job ran *before* our step 1
(the dangerous order: "delete copied, then the stale fill lands" — mcrouter's
WarmUpRoute hazard), step 3 still removes our copy because W happened before step 2.
The argument uses only the two servers' state, so it holds across proxy instances and
for any interleaving of workers; the worst outcome of a race is a miss on ``dest``.

A delete needs no verification: removing an item from a cache is always safe.

Two ways a copy runs, the same three steps either way: queued jobs are taken by the
workers in batches (pipelined round trips per batch); a set relayed by the listener's
callback path, and the fill after a hit it relayed, are copied at once by a chain of
callbacks on the sides' pipelined connections (``copy_value_now``, ``fill_now``,
``_CopyChain``) — no task or coroutine, which is most of what a copy costs the proxy's one
event loop. The argument above does not depend on which way a copy of a key ran, nor on
their order.

Jobs that cannot complete (a server error, a timeout between steps 1 and 3, a drain that
runs out of time) and jobs dropped because the queue is full record their key in
``dropped``; ``invalidate_dropped`` deletes those keys on ``dest``.

Not guaranteed: that ``dest`` is warm (any race ends in a miss, never a stale hit); that
``dest`` expires an item in the same second as the source (TTLs have one-second
granularity and a copied relative exptime starts when the copy lands); anything about
keys written to the source by something other than this proxy; anything after a crash —
the queue and ``dropped`` live in memory; for that, an instance in ``cow`` holds a durable
"cow cache dirty" marker (``proxy/modes.py``), and ``switch_mode`` flushes N2 before
``proxy`` while the marker of an instance that did not drain remains. A source run
with CAS disabled (``memcached -C``, every CAS 0) cannot be verified: write copies then only
delete on ``dest`` and fills are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from proxy.cache import metrics
from proxy.cache.client import REPLY_LINE, Item, Outcome, RelayConnection, StoreMode
from proxy.cache.errors import SwitchError
from proxy.cache.pool import MemcachePool

log = logging.getLogger("nxnw.proxy.cache.copies")

#: memcached reads an exptime above 30 days as an absolute unix time.
_RELATIVE_LIMIT = 30 * 24 * 3600

# job kinds (tuples keep the hot path allocation-light)
_DELETE, _VALUE, _CURRENT, _FILL, _FILL_KEY = "delete", "value", "current", "fill", "fill-key"
#: COR jobs: a fill with the item the client read, or by key (the worker reads the item)
_FILLS = (_FILL, _FILL_KEY)

BeforeFill = Callable[[bytes], Awaitable[None]]


def exptime_from_ttl(ttl: int | None) -> int | None:
    """memcached's remaining TTL (``mg … t``) as an exptime to store, or None if expiring."""
    if ttl is None or ttl == -1:
        return 0
    if ttl <= 0:
        return None  # expires this second: T0 would mean "never", so do not copy it
    if ttl > _RELATIVE_LIMIT:
        return int(time.time()) + ttl
    return ttl


class CopyQueue:
    """Bounded queue of copies ``source`` → ``dest``, drained by ``workers`` tasks.

    ``maxsize`` bounds the jobs waiting. Fills are shed first: one is admitted only while
    the queue is less than ``fill_share`` full, and at most once per key at a time.
    ``before_fill`` is a test seam: awaited by the worker after the fill's value was read
    from the source and before it is stored on ``dest`` — the window of the COR race.

    A worker takes up to ``batch_max`` jobs at once, after waiting ``linger`` s for more
    to arrive, and runs them as one batch of pipelined requests: at most four round trips
    per batch instead of two or three per job, which is what keeps COW/COR cheap for the
    requests that share the proxy's CPU. ``linger`` is added to the copy's delay, never
    to a client's request.

    ``may_copy()`` is asked once per batch, before anything is stored on ``dest``: while it
    is False (the instance is fenced) the batch stores no value — each copy becomes a delete
    on ``dest`` and fills are skipped — since removing a key is always safe.
    """

    def __init__(self, source: MemcachePool, dest: MemcachePool, *, maxsize: int = 10000, workers: int = 4,
                 fill_share: float = 0.5, max_dropped: int = 1_000_000, linger: float = 0.001, batch_max: int = 64,
                 before_fill: BeforeFill | None = None, may_copy: Callable[[], bool] = lambda: True) -> None:
        if maxsize < 1 or workers < 1:
            raise ValueError(f"CopyQueue needs maxsize >= 1 and workers >= 1, got {maxsize} and {workers}")
        self.source = source
        self.dest = dest
        self.maxsize = maxsize
        self.workers = workers
        self.before_fill = before_fill
        self.may_copy = may_copy
        self.max_dropped = max_dropped
        self.linger = linger
        self.batch_max = batch_max
        #: keys whose copy did not happen or could not be verified; invalidated at a switch
        self.dropped: set[bytes] = set()
        #: True once ``dropped`` hit ``max_dropped``: keys were lost, only a flush is safe
        self.overflowed = False
        self._fill_limit = int(maxsize * fill_share)
        self._pending_fills: set[bytes] = set()
        # key -> (source CAS, monotonic time) of a version recently seen on dest: a hit on
        # that same version needs no fill (not even the probe). Only ever *skips* a fill,
        # so a wrong entry costs warmth, never correctness; entries expire after
        # ``known_for`` s so an item evicted from dest is filled again.
        self._on_dest: dict[bytes, tuple[int, float]] = {}
        self.known_max = 100_000
        self.known_for = 60.0
        # one FIFO per worker, chosen by key: a key's jobs run in order, one at a time, so
        # within this instance the last write's copy is the last to land (a race with
        # another instance can still cost a miss, never a stale value)
        self._shards: list[asyncio.Queue[tuple]] = [asyncio.Queue() for _ in range(workers)]
        self._waiting = 0  # queued, not yet taken by a worker; bounded by maxsize
        self._unfinished = 0  # queued or running
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task] = []
        label = dest.side or dest.server
        self._label = label
        self._depth = metrics.COPY_DEPTH.labels(label)
        self._depth.set_function(lambda: self._waiting)
        self._dropped_full = metrics.COPIES_DROPPED.labels(label, "queue_full")
        self._fill_shed = metrics.COR_FILLS.labels("shed")
        # each job's result counted without a ``labels`` look-up per job (it takes a lock)
        self._copy_results = {r: metrics.COPIES.labels(label, r).inc for r in ("copied", "deleted", "lost", "undone")}
        self._fill_results = {r: metrics.COR_FILLS.labels({"copied": "done"}.get(r, r)).inc
                              for r in ("copied", "deleted", "lost", "undone", "present", "expiring", "unverifiable")}

    @property
    def depth(self) -> int:
        """Jobs waiting (not yet taken by a worker)."""
        return self._waiting

    @property
    def pending(self) -> int:
        """Jobs waiting or running."""
        return self._unfinished

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._work(shard), name=f"cache-copy-{self._label}-{i}")
                           for i, shard in enumerate(self._shards)]

    async def close(self) -> None:
        """Stop the workers; jobs still queued are abandoned (their keys join ``dropped``)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for job in self._take_all():
            if job[0] not in _FILLS:
                self._drop(job[1], "closed")

    # --- enqueue (synchronous, never blocks the request) --------------------------------

    def copy_value(self, key: bytes, value: bytes, flags: int, exptime: int, source_cas: int) -> None:
        """The source now holds ``value`` under CAS ``source_cas`` (set/add/replace/cas)."""
        if exptime < 0:  # stored already expired: on dest that is a delete
            self.copy_delete(key)
        else:
            self._put((_VALUE, key, value, flags, exptime, source_cas))

    def copy_value_now(self, key: bytes, value: bytes, flags: int, exptime: int, source_cas: int) -> None:
        """``copy_value`` for the listener's callback path: the copy starts at once, as a
        chain of callbacks on the sides' pipelined connections (``_CopyChain``) — the same
        three steps as a worker's batch (store on dest, re-read the source's CAS, undo on
        dest if it changed), without a task, batch or coroutine. It counts as pending
        (a drain or flush waits for it) and is bounded like the queue: beyond ``maxsize``
        jobs it is dropped and its key recorded. While fenced, or for a value already
        expired or stored without CAS, it is a queued delete, as in a batch."""
        if exptime < 0 or not source_cas or not self.may_copy():
            self.copy_delete(key)
            return
        self._on_dest.pop(key, None)
        if self._unfinished >= self.maxsize:
            self._dropped_full.inc()
            self._record_dropped(key)
            return
        src, dst = self.source.relay_for(key), self.dest.relay_for(key)
        if src is None or dst is None:  # a server marked down: the copy would fail
            self._drop(key, "failed")
            return
        if not self._unfinished:
            self._idle.clear()
        self._unfinished += 1
        chain = _CopyChain(self, key, source_cas, src, dst)
        dst.send(chain, b"ms %b %d MS F%d T%d c\r\n%b\r\n" % (key, len(value), flags, exptime, value))

    def may_need_fill(self, key: bytes) -> bool:
        """False while dest was seen holding the key's source version within ``known_for``
        s and nothing was written to it through this queue since (``offer_fill_key``'s
        rule): a hit then needs no fill, so the listener need not read the item's CAS."""
        known = self._on_dest.get(key)
        return known is None or time.monotonic() - known[1] >= self.known_for

    def fill_now(self, key: bytes, item: Item) -> None:
        """``offer_fill`` for the listener's callback path (COR): the fill starts at once as
        a ``_CopyChain`` — ``add`` on dest, re-read the source's CAS, undo if it changed —
        under ``offer_fill``'s rules (skipped while dest is known to hold this version, shed
        while the key's fill runs or fills fill their share of the queue, never while
        fenced). With the ``before_fill`` test seam set, it is queued (the seam is awaited)."""
        if self.before_fill is not None:
            self.offer_fill(key, item)
            return
        known = self._on_dest.get(key)
        if known is not None and known[0] == item.cas and time.monotonic() - known[1] < self.known_for:
            return
        if key in self._pending_fills or self._unfinished >= self._fill_limit:
            self._fill_shed.inc()
            return
        exptime = exptime_from_ttl(item.ttl)
        if exptime is None:
            self._fill_results["expiring"]()
            return
        if not item.cas:
            self._fill_results["unverifiable"]()
            return
        if not self.may_copy():
            return
        src, dst = self.source.relay_for(key), self.dest.relay_for(key)
        if src is None or dst is None:
            return
        self._pending_fills.add(key)
        if not self._unfinished:
            self._idle.clear()
        self._unfinished += 1
        chain = _CopyChain(self, key, item.cas, src, dst, fill=True)
        dst.send(chain, b"ms %b %d ME F%d T%d c\r\n%b\r\n" % (key, len(item.value), item.flags, exptime, item.value))

    def copy_current(self, key: bytes) -> None:
        """The source changed ``key`` in a way we did not see (append, incr, touch, …): the
        worker reads the result back from the source and copies that."""
        self._put((_CURRENT, key))

    def copy_delete(self, key: bytes) -> None:
        """Delete ``key`` on dest (a delete, or a write whose outcome on the source is unknown)."""
        self._put((_DELETE, key))

    def offer_fill(self, key: bytes, item: Item) -> bool:
        """COR: copy ``item`` just read from the source to dest, unless dest has the key."""
        known = self._on_dest.get(key)
        if known is not None and known[0] == item.cas and time.monotonic() - known[1] < self.known_for:
            return False
        if key in self._pending_fills or self._waiting >= self._fill_limit:
            self._fill_shed.inc()
            return False
        self._pending_fills.add(key)
        self._enqueue((_FILL, key, item))
        return True

    def offer_fill_key(self, key: bytes) -> bool:
        """COR for a read relayed untouched (its reply was not parsed, so no CAS or TTL is
        known here): the worker reads the item from the source and fills it as ``offer_fill``
        does. Skipped while dest was seen holding the key's source version within
        ``known_for`` s and nothing was written to it through this queue since (a skip only
        ever costs warmth)."""
        known = self._on_dest.get(key)
        if known is not None and time.monotonic() - known[1] < self.known_for:
            return False
        if key in self._pending_fills or self._waiting >= self._fill_limit:
            self._fill_shed.inc()
            return False
        self._pending_fills.add(key)
        self._enqueue((_FILL_KEY, key))
        return True

    def _put(self, job: tuple) -> None:
        self._on_dest.pop(job[1], None)
        if self._waiting >= self.maxsize:
            self._dropped_full.inc()
            self._record_dropped(job[1])
        else:
            self._enqueue(job)

    def _enqueue(self, job: tuple) -> None:
        self._shards[hash(job[1]) % self.workers].put_nowait(job)
        self._waiting += 1
        if not self._unfinished:
            self._idle.clear()
        self._unfinished += 1

    def _finished(self) -> None:
        self._unfinished -= 1
        if not self._unfinished:
            self._idle.set()

    def _take_all(self) -> list[tuple]:
        """Remove every job not yet taken by a worker."""
        jobs = []
        for shard in self._shards:
            while not shard.empty():
                jobs.append(shard.get_nowait())
                self._waiting -= 1
                self._finished()
        return jobs

    def _drop(self, key: bytes, reason: str) -> None:
        metrics.COPIES_DROPPED.labels(self._label, reason).inc()
        self._record_dropped(key)

    def _record_dropped(self, key: bytes) -> None:
        if len(self.dropped) >= self.max_dropped:
            if not self.overflowed:
                log.error("copy queue to %s: more than %d dropped keys; only a flush of %s is safe now",
                          self.dest.server, self.max_dropped, self.dest.server)
            self.overflowed = True
            return
        self.dropped.add(key)

    # --- workers -------------------------------------------------------------------------

    async def _work(self, shard: asyncio.Queue[tuple]) -> None:
        while True:
            batch = [await shard.get()]
            if self.linger:
                await asyncio.sleep(self.linger)  # let a batch form: fewer round trips per copy
            while len(batch) < self.batch_max and not shard.empty():
                batch.append(shard.get_nowait())
            self._waiting -= len(batch)
            try:
                await self._run(batch)
            except asyncio.CancelledError:
                for job in batch:  # cancelled mid-copy (close): dest may hold an unverified copy
                    self._drop(job[1], "closed")
                raise
            except Exception as exc:  # noqa: BLE001 — every failure is recorded and logged
                log.warning("cache copy of %d keys (first %r) to %s failed; they will be invalidated at the "
                            "next switch: %s", len(batch), batch[0][1], self.dest.server, exc)
                for job in batch:
                    self._drop(job[1], "failed")
            finally:
                for job in batch:
                    if job[0] in _FILLS:
                        self._pending_fills.discard(job[1])
                    self._finished()

    async def _run(self, batch: list[tuple]) -> None:
        """One batch, in four pipelined round trips at most (see the module docstring):
        A. read what the jobs need (the source's current item for ``current`` jobs, a
           probe of dest for fills); B. store/delete on dest, in job order; C. re-read the
           source's CAS of every key stored in B; D. undo, on dest, each copy whose source
           version changed — only if dest still holds exactly that copy."""
        src, dst = self.source, self.dest
        current = [job for job in batch if job[0] is _CURRENT or job[0] is _FILL_KEY]
        fills = [job for job in batch if job[0] in _FILLS]
        items: dict[bytes, Item | None] = {}
        present: set[bytes] = set()

        async def read_source() -> None:
            replies = await src.batch([(job[1], src.cmd_get(job[1])) for job in current])
            for job, reply in zip(current, replies):
                items[job[1]] = src.reply_get(reply)

        async def probe_dest() -> None:
            replies = await dst.batch([(job[1], dst.cmd_peek(job[1])) for job in fills])
            for job, reply in zip(fills, replies):
                if dst.reply_peek(reply) is not None:
                    present.add(job[1])

        phase_a = ([read_source()] if current else []) + ([probe_dest()] if fills else [])
        if phase_a:
            await asyncio.gather(*phase_a)

        # B: (job, request, source CAS of the copied version; 0 for a delete)
        writes: list[tuple[tuple, bytes, int]] = []
        copying = self.may_copy()
        for job in batch:
            kind, key = job[0], job[1]
            if not copying:
                if kind not in _FILLS:
                    metrics.COPIES_DROPPED.labels(self._label, "fenced").inc()
                    writes.append((job, dst.cmd_delete(key), 0))
                continue
            if kind is _DELETE:
                writes.append((job, dst.cmd_delete(key), 0))
            elif kind is _VALUE:
                _, _, value, flags, exptime, source_cas = job
                if source_cas:
                    writes.append((job, dst.cmd_store(key, value, flags=flags, exptime=exptime), source_cas))
                else:  # CAS disabled on the source: a copy cannot be verified, delete instead
                    writes.append((job, dst.cmd_delete(key), 0))
            elif kind is _CURRENT:
                item = items[key]
                exptime = None if item is None else exptime_from_ttl(item.ttl)
                if item is None or exptime is None or not item.cas:
                    writes.append((job, dst.cmd_delete(key), 0))
                else:
                    writes.append((job, dst.cmd_store(key, item.value, flags=item.flags, exptime=exptime), item.cas))
            else:
                item = job[2] if kind is _FILL else items[key]
                exptime = None if item is None else exptime_from_ttl(item.ttl)
                if item is None:
                    metrics.COR_FILLS.labels("gone").inc()
                elif exptime is None:
                    metrics.COR_FILLS.labels("expiring").inc()
                elif not item.cas:
                    metrics.COR_FILLS.labels("unverifiable").inc()
                elif key in present:
                    metrics.COR_FILLS.labels("present").inc()
                    self._known(key, item.cas)
                else:
                    if self.before_fill is not None:
                        await self.before_fill(key)
                    writes.append((job, dst.cmd_store(key, item.value, mode=StoreMode.ADD, flags=item.flags,
                                                      exptime=exptime), item.cas))
        if not writes:
            return
        replies = await dst.batch([(job[1], cmd) for job, cmd, _ in writes])
        results: dict[int, str] = {}
        stored: list[tuple[int, tuple, int, int]] = []  # (index, job, source CAS, dest CAS)
        for i, ((job, _, source_cas), reply) in enumerate(zip(writes, replies)):
            if not source_cas:
                dst.reply_delete(reply)
                results[i] = "deleted"
                continue
            outcome, dest_cas = dst.reply_store(reply)
            if outcome is Outcome.STORED:
                stored.append((i, job, source_cas, dest_cas))
            else:
                results[i] = "lost"  # add found a value on dest: a newer copy, or an earlier fill
        if stored:
            replies = await src.batch([(job[1], src.cmd_peek(job[1])) for _, job, _, _ in stored])
            undo = []
            for (i, job, source_cas, dest_cas), reply in zip(stored, replies):
                now = src.reply_peek(reply)
                if now is not None and now.cas == source_cas:
                    results[i] = "copied"
                    self._known(job[1], source_cas)
                else:
                    undo.append((i, job, dest_cas))
            if undo:
                replies = await dst.batch([(job[1], dst.cmd_delete(job[1], dest_cas)) for _, job, dest_cas in undo])
                for (i, _, _), reply in zip(undo, replies):
                    dst.reply_delete(reply)
                    results[i] = "undone"
        copy_results, fill_results = self._copy_results, self._fill_results
        for i, (job, _, _) in enumerate(writes):
            (fill_results if job[0] in _FILLS else copy_results)[results[i]]()

    def _known(self, key: bytes, source_cas: int) -> None:
        known = self._on_dest
        known[key] = (source_cas, time.monotonic())
        if len(known) > self.known_max:
            del known[next(iter(known))]

    def _chain_ended(self, key: bytes, fill: bool, result: str | None) -> None:
        """A ``_CopyChain`` is over: ``result`` as a batch counts it, None if it failed."""
        if result is None:  # a fill too: its copy may have landed unverified
            self._drop(key, "failed")
        elif fill:
            self._fill_results[result]()
        else:
            self._copy_results[result]()
        if fill:
            self._pending_fills.discard(key)
        self._finished()

    # --- at a mode switch ----------------------------------------------------------------

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for every job to finish. Jobs still waiting then are not
        run: write copies join ``dropped``, fills are discarded. Returns how many were dropped."""
        if self.pending == 0:
            return 0
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return 0
        except TimeoutError:
            pass
        left = 0
        for job in self._take_all():
            if job[0] in _FILLS:
                self._pending_fills.discard(job[1])
            else:
                self._drop(job[1], "drain_timeout")
                left += 1
        # jobs already running finish (each step has the client's timeout), so that none
        # of them lands on dest after the switch
        bound = 4 * max(self.source.timeout, self.dest.timeout) + 1.0
        try:
            async with asyncio.timeout(bound):
                await self._idle.wait()
        except TimeoutError:
            raise SwitchError(f"copy jobs to {self.dest.server} still running {bound}s "
                              "after the drain timeout") from None
        return left

    async def invalidate_dropped(self, *, parallel: int = 32) -> int:
        """Delete on dest every key in ``dropped``; returns how many. Raises ``SwitchError``
        (leaving the keys that failed in ``dropped``) if any delete fails, or if ``dropped``
        overflowed (then only a flush of dest is safe: the router's ``flush_all`` calls
        ``forget_dropped`` after it)."""
        if self.overflowed:
            raise SwitchError(f"more than {self.max_dropped} cache copies to {self.dest.server} were dropped; "
                              "only a flush is safe now: send flush_all (no delay) to this proxy's memcache "
                              "listener, started with --enable-flush-cmd, then switch again")
        keys = list(self.dropped)
        failures: list[tuple[bytes, BaseException]] = []
        for start in range(0, len(keys), parallel):
            chunk = keys[start:start + parallel]
            results = await asyncio.gather(*(self.dest.delete(k) for k in chunk), return_exceptions=True)
            for key, res in zip(chunk, results):
                if isinstance(res, BaseException):
                    failures.append((key, res))
                else:
                    self.dropped.discard(key)
        metrics.INVALIDATED.labels(self._label).inc(len(keys) - len(failures))
        if failures:
            key, exc = failures[0]
            raise SwitchError(f"could not invalidate {len(failures)} of {len(keys)} dropped keys on "
                              f"{self.dest.server} (first: {key!r}: {exc})")
        return len(keys)

    def forget_dropped(self) -> None:
        """After dest was flushed at once (``CacheRouter.flush_all``, once this queue was
        drained): no key whose copy was dropped has a value left on dest."""
        self.dropped.clear()
        self.overflowed = False


class _CopyChain:
    """One write's copy run by callbacks (``CopyQueue.copy_value_now``), one step at a
    time on the sides' pipelined connections (``RelayConnection`` entries): 1. ``ms … c``
    on dest (its CAS noted); 2. ``mg key c`` on the source; 3. if the source no longer holds
    ``source_cas``, ``md key C<dest CAS>`` on dest. The module docstring's argument holds
    as for a batch: it uses only the two servers' state, in any interleaving with other
    copies of the key. A failed step (no reply, an error line) drops the copy and records
    its key, as a failed batch does."""

    __slots__ = ("queue", "key", "source_cas", "dest_cas", "step", "src", "dst", "fill", "framing", "deadline")

    def __init__(self, queue: CopyQueue, key: bytes, source_cas: int, src: RelayConnection,
                 dst: RelayConnection, *, fill: bool = False) -> None:
        self.queue = queue
        self.fill = fill
        self.key = key
        self.source_cas = source_cas
        self.dest_cas = 0
        self.step = 1
        self.src = src
        self.dst = dst
        self.framing = REPLY_LINE
        self.deadline = 0.0

    def done(self, reply: bytes, cas: int) -> None:
        step = self.step
        if step == 1:  # ``HD c<cas>``: stored on dest
            if self.fill and reply == b"NS\r\n":  # an ``add``: dest holds the key already
                self.queue._known(self.key, self.source_cas)
                self.queue._chain_ended(self.key, True, "present")
                return
            if reply[:4] != b"HD c" or not reply[4:-2].isdigit():
                self._failed(f"stored with {reply[:80]!r}")
                return
            self.dest_cas = int(reply[4:-2])
            self.step = 2
            self.src.send(self, b"mg %b c\r\n" % self.key)
        elif step == 2:  # the source's CAS now: ``HD c<cas>``, or ``EN`` if gone
            if reply[:4] == b"HD c" and reply[4:-2].isdigit() and int(reply[4:-2]) == self.source_cas:
                self.queue._known(self.key, self.source_cas)
                self.queue._chain_ended(self.key, self.fill, "copied")
            elif reply[:2] in (b"HD", b"EN"):
                self.step = 3
                self.dst.send(self, b"md %b C%d\r\n" % (self.key, self.dest_cas))
            else:
                self._failed(f"re-read of the source answered {reply[:80]!r}")
        elif reply[:2] in (b"HD", b"NF", b"EX"):  # undone, or dest already holds something else
            self.queue._chain_ended(self.key, self.fill, "undone")
        else:
            self._failed(f"undo answered {reply[:80]!r}")

    def fail(self, exc: Exception) -> None:
        self._failed(str(exc))

    def _failed(self, why: str) -> None:
        log.warning("cache copy of %r to %s failed; it will be invalidated at the next switch: %s", self.key,
                    self.queue.dest.server, why)
        self.queue._chain_ended(self.key, self.fill, None)
