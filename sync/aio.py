"""The one executor policy of nxnw: where a blocking call leaves the asyncio event loop.

The policy
==========

Every blocking call made from a coroutine outside ``datastore/`` leaves the loop through
``run_blocking(fn, *args, executor=..., **kwargs)``, on the bounded pool of its kind:

* ``zk_executor()`` (the default) — short ZooKeeper calls: a read, a write, a
  transaction, a lock *release*, a session's start or stop;
* ``zk_wait_executor()`` — ZooKeeper *waits*, calls that block until another party acts:
  a lock acquire (waits for the holder), a mode switch's drain, a mirror's sync, a
  journal emptying, a watcher's condition;
* ``io_executor()`` — every other blocking call: DNS updates and the waits for them,
  service starts and stops, subprocess waits, memcached flushes.

Separate pools, because each kind would starve the others: enough waiters on a busy lock
group would occupy every thread and the holder's release would queue behind them until
their timeouts expired; a DNS hand-off holding threads for its TTL must not delay the
ZooKeeper calls that keep a migration's state. Each pool's size bounds the calls of its
kind in progress at once; further calls queue (a lock acquire counts the time queued
against its timeout). Pass arguments as arguments (``run_blocking(fn, a, timeout=t)``),
not wrapped in a lambda; ``executor`` is the one keyword ``run_blocking`` keeps for itself.

Two exceptions, each for a reason:

* **Engines** keep their own executor, and within ``datastore/`` each engine's ``_run``
  is the one way out of the loop: ``datastore/`` imports nothing of nxnw's, and an
  engine sizes its executor for its connections (SQLite's one thread owns its
  connection; each HBase thread keeps its own Thrift connection), so it cannot share
  these pools.
* ``GroupLock.acquire_async`` (sync/lock.py) submits to the wait pool itself: it must hold
  the ``concurrent.futures`` future to release a lock whose acquire completed after the
  awaiting task was cancelled.

bench/ and tests may use the loop's default executor for their own harness work.

Error handling
==============

Nothing here talks to ZooKeeper; errors raised by the blocking call (session loss
included) are re-raised in the awaiting coroutine unchanged.

Must never: run a blocking call on the event loop thread, or create threads without bound.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: Threads for short blocking ZooKeeper calls made on behalf of coroutines, process-wide.
ZK_EXECUTOR_THREADS = 8
#: Threads for ZooKeeper waits (lock acquires and the like; each may wait up to its timeout), process-wide.
ZK_WAIT_THREADS = 32
#: Threads for other blocking work (DNS, services, subprocesses, memcached flushes), process-wide.
IO_THREADS = 16

_executors: dict[str, ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _pool(name: str, threads: int) -> ThreadPoolExecutor:
    with _executors_lock:
        if name not in _executors:
            _executors[name] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        return _executors[name]


def zk_executor() -> ThreadPoolExecutor:
    """The bounded executor for short blocking kazoo calls (created on first use)."""
    return _pool("nxnw-zk", ZK_EXECUTOR_THREADS)


def zk_wait_executor() -> ThreadPoolExecutor:
    """The bounded executor for ZooKeeper waits (lock acquires, drains, syncs), which block while they wait."""
    return _pool("nxnw-zk-wait", ZK_WAIT_THREADS)


def io_executor() -> ThreadPoolExecutor:
    """The bounded executor for blocking work that is not ZooKeeper's: DNS, services, subprocesses."""
    return _pool("nxnw-io", IO_THREADS)


async def run_blocking(fn: Callable[..., T], /, *args: object, executor: ThreadPoolExecutor | None = None,
                       **kwargs: object) -> T:
    """Run ``fn(*args, **kwargs)`` on ``executor`` (default: the short ZooKeeper calls'
    pool, ``zk_executor()``) and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor or zk_executor(), functools.partial(fn, *args, **kwargs))
