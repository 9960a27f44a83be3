"""A kazoo client whose connection to N1's ZooKeeper can go dark: for the tests of what
nxnw does while ZooKeeper is out of reach (``nxnw.partition.Partition``, the fault's relay)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient
from kazoo.protocol.states import KazooState

from nxnw.partition import Partition
from nxnw.services.endpoints import HOST, ZOOKEEPER
from sync._zk import CONNECTIVITY_ERRORS
from sync.aio import run_blocking


@asynccontextmanager
async def client_behind_partition(chroot: str = "", *, client_class: type[KazooClient] = KazooClient,
                                  **kwargs: Any) -> AsyncIterator[tuple[KazooClient, Partition]]:
    """A started client of N1's ZooKeeper (under ``chroot``) through a relay the test can
    ``cut``; healed, stopped and closed at the end. ``kwargs`` go to ``client_class``."""
    relay = Partition((HOST, ZOOKEEPER["n1"]))
    client = client_class(hosts=f"{HOST}:{await relay.start()}{chroot}", timeout=4.0, **kwargs)
    await run_blocking(client.start, 10)
    try:
        yield client, relay
    finally:
        relay.heal()
        await run_blocking(client.stop)
        await run_blocking(client.close)
        await relay.close()


async def until_dropped(client: KazooClient, timeout: float = 30.0) -> None:
    """Return once kazoo has dropped its dark connection (its calls now wait to reconnect)."""
    deadline = time.monotonic() + timeout
    while client.state == KazooState.CONNECTED:
        assert time.monotonic() < deadline, f"kazoo did not notice the partition within {timeout:g} s"
        await asyncio.sleep(0.05)


async def gives_up(call: Callable[[], Awaitable[object]], within: float) -> None:
    """``call`` raises one of CONNECTIVITY_ERRORS within ``within`` s (the test fails if it
    has not returned after 30 s, as a call with no bound does not)."""
    started = time.monotonic()
    with pytest.raises(CONNECTIVITY_ERRORS):
        await asyncio.wait_for(call(), 30)
    assert time.monotonic() - started < within
