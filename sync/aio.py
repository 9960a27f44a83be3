"""The one place where sync/'s blocking kazoo calls leave the asyncio event loop.

Error handling
==============

Nothing here talks to ZooKeeper; errors raised by the blocking call (session loss
included) are re-raised in the awaiting coroutine unchanged.

kazoo has no asyncio handler: each call blocks a thread, and a lock acquire can block for
its whole timeout. The proxy (aiohttp) must never run those on its event loop, so the
async methods in sync/ hand them to two bounded thread pools:

* ``zk_executor()`` — short calls (a read, a write, a lock *release*);
* ``zk_wait_executor()`` — lock *acquires*, which wait for the holder.

Two pools, because with one, enough waiters on a busy group would occupy every thread
and the holder's release would queue behind them until their timeouts expired. Each
pool's size bounds the calls of its kind in progress at once; further calls queue, and a
lock's timeout counts the time spent queued.

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
#: Threads for lock acquires (each may wait up to its timeout), process-wide.
ZK_WAIT_THREADS = 32

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
    """The bounded executor for lock acquires, which block while they wait."""
    return _pool("nxnw-zk-wait", ZK_WAIT_THREADS)


async def run_blocking(fn: Callable[..., T], /, *args: object, executor: ThreadPoolExecutor | None = None,
                       **kwargs: object) -> T:
    """Run ``fn(*args, **kwargs)`` on the bounded ZooKeeper executor and await its result."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor or zk_executor(), functools.partial(fn, *args, **kwargs))
