"""GroupLock against the real ZooKeepers: exclusion, asyncio use, session loss, visibility on N2."""

from __future__ import annotations

import asyncio
import time

import pytest

from sync.aio import run_blocking
from sync.lock import GroupLock, GroupLockError, GroupLockLost, GroupLockTimeout
from sync.mirror import TreeMirror


def test_second_client_waits_until_the_holder_releases(zk_connect, zk_root):
    a = GroupLock(zk_connect("n1"), "guestbook", "user-7", root=zk_root, identifier="proxy-a")
    b = GroupLock(zk_connect("n1"), "guestbook", "user-7", root=zk_root, identifier="proxy-b")
    a.acquire()
    assert a.is_held

    with pytest.raises(GroupLockTimeout, match=rf"{zk_root}/guestbook/user-7 not acquired within 0.3s; held by proxy-a"):
        b.acquire(timeout=0.3)
    a.release()
    b.acquire(timeout=2)
    assert b.is_held and not a.is_held
    assert len(b.client.get_children(b.path)) == 1  # the timed-out attempt left no node behind
    b.release()


async def test_async_read_check_write_under_the_lock_loses_no_update(zk_connect, zk_root):
    clients = [zk_connect("n1"), zk_connect("n1")]
    counter = f"{zk_root}/counter"
    clients[0].create(counter, b"0", makepath=True)

    async def worker(client, n: int) -> None:
        for _ in range(n):
            async with GroupLock(client, "bank", "acct-1", root=zk_root, timeout=10) as lock:
                value = int(clients[0].get(counter)[0])
                await asyncio.sleep(0.002)  # widen the read-check-write window
                lock.ensure_held()
                client.set(counter, str(value + 1).encode())

    await asyncio.gather(*(worker(c, 10) for c in clients for _ in range(2)))
    assert clients[0].get(counter)[0] == b"40"


async def test_cancelled_async_acquire_leaves_no_contender_behind(zk_connect, zk_root):
    holder = GroupLock(zk_connect("n1"), "app", "g", root=zk_root)
    waiter = GroupLock(zk_connect("n1"), "app", "g", root=zk_root)
    await holder.acquire_async()
    task = asyncio.create_task(waiter.acquire_async(timeout=10))
    await asyncio.sleep(0.3)
    assert len(holder.client.get_children(holder.path)) == 2

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 5
    while len(holder.client.get_children(holder.path)) != 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(holder.client.get_children(holder.path)) == 1
    await run_blocking(holder.release)
    await waiter.acquire_async(timeout=2)  # the cancelled object is usable again
    await run_blocking(waiter.release)


def test_lock_lost_with_its_session_is_reported_and_free_for_others(zk_connect, zk_root, expire_zk_session):
    a_client = zk_connect("n1")
    a = GroupLock(a_client, "app", "g", root=zk_root, identifier="a")
    b = GroupLock(zk_connect("n1"), "app", "g", root=zk_root, identifier="b")
    a.acquire()
    a.ensure_held()

    expire_zk_session(a_client, "n1")

    assert not a.is_held
    with pytest.raises(GroupLockLost, match="session lost"):
        a.ensure_held()
    b.acquire(timeout=2)  # the ephemeral node went with a's session
    a.release()           # forgets; does not touch b's node
    assert b.is_held
    b.release()


def test_lock_held_on_n1_is_visible_on_n2_and_blocks_n2_contenders(zk_connect, zk_hosts, zk_root):
    n1_lock = GroupLock(zk_connect("n1"), "app", "g", root=f"{zk_root}/locks", identifier="n1-holder")
    n2_client = zk_connect("n2")
    n2_lock = GroupLock(n2_client, "app", "g", root=f"{zk_root}/locks", identifier="n2-contender")
    with TreeMirror(zk_hosts["n1"], zk_hosts["n2"], zk_root, op_deadline=5) as mirror:
        # Churn N1's counter so that copied names and N2's own numbering would collide
        # if the mirror did not keep N2's counter above N1's.
        for _ in range(5):
            with n1_lock:
                pass
        n1_lock.acquire()
        mirror.wait_synced(10)

        assert n2_client.get_children(n1_lock.path) == [n1_lock.node.rsplit("/", 1)[1]]
        assert n2_lock.holder() == "n1-holder"
        with pytest.raises(GroupLockTimeout, match="held by n1-holder"):
            n2_lock.acquire(timeout=0.5)

        n1_lock.release()
        mirror.wait_synced(10)
        n2_lock.acquire(timeout=2)
        n1_lock.acquire(timeout=2)  # N1's lock is independent of N2's
        mirror.wait_synced(10)
        assert n2_lock.is_held  # the mirror never deletes N2's own lock node
        n1_lock.release()
        n2_lock.release()


def test_bad_names_and_reentry_are_refused(zk_connect, zk_root):
    client = zk_connect("n1")
    for app, group in [("app/x", "g"), ("app", ""), ("..", "g"), ("app", "a\x00b")]:
        with pytest.raises(ValueError, match="not a valid znode name"):
            GroupLock(client, app, group, root=zk_root)
    with pytest.raises(ValueError, match="positive number"):
        GroupLock(client, "app", "g", root=zk_root, timeout=0)
    lock = GroupLock(client, "app", "g", root=zk_root)
    with lock:
        with pytest.raises(GroupLockError, match="not re-entrant"):
            lock.acquire(timeout=0.2)


async def test_release_is_not_starved_by_waiters_filling_the_wait_pool(zk_connect, zk_root):
    from concurrent.futures import ThreadPoolExecutor

    wait_pool = ThreadPoolExecutor(max_workers=2)
    holder = GroupLock(zk_connect("n1"), "app", "hot", root=zk_root)
    waiters = [GroupLock(zk_connect("n1"), "app", "hot", root=zk_root, wait_executor=wait_pool) for _ in range(2)]
    await holder.acquire_async()
    tasks = [asyncio.create_task(w.acquire_async(timeout=8)) for w in waiters]
    await asyncio.sleep(0.3)  # both wait-pool threads are now blocked waiting

    started = time.monotonic()
    await run_blocking(holder.release)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    assert time.monotonic() - started < 2
    first = next(w for w, t in zip(waiters, tasks) if t in done)
    await run_blocking(first.release)
    await asyncio.gather(*tasks)
    for w in waiters:
        await run_blocking(w.release)
    wait_pool.shutdown()
