"""ZooKeeper sessions for nxnw's commands: started off the event loop, always closed.

One place for how a command connects (timeouts, the error an unreachable ensemble gives),
so every command reports it the same way: ``EngineUnavailable`` naming the ensemble. The
client itself, with the deployment's digest authentication and TLS, comes from
``sync.zk_client`` (pass the plan's ``zookeeper_security`` of that deployment).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from datastore import EngineUnavailable
from sync.aio import run_blocking
from sync.zk_client import ZooKeeperSecurity, refused_chroot, zk_client

CONNECT_SECONDS = 8.0


async def start_zk(hosts: str, what: str, security: ZooKeeperSecurity | None = None) -> KazooClient:
    """A started client; ``what`` names the ensemble in the error ("N1's", "N2's")."""
    client = zk_client(hosts, security, timeout=6.0)
    try:
        await run_blocking(client.start, CONNECT_SECONDS)
    except NoAuthError as exc:  # connected, then refused the chroot's first read: the digest is missing or wrong
        await stop_zk(client)
        raise EngineUnavailable(refused_chroot(hosts, what)) from exc
    except Exception as exc:
        await stop_zk(client)  # a started client must be stopped before it can be closed
        raise EngineUnavailable(f"{what} ZooKeeper at {hosts} did not answer within {CONNECT_SECONDS:g} s "
                                f"({type(exc).__name__})") from exc
    return client


async def stop_zk(client: KazooClient) -> None:
    await run_blocking(client.stop)
    await run_blocking(client.close)


@asynccontextmanager
async def zk_session(hosts: str, what: str, security: ZooKeeperSecurity | None = None) -> AsyncIterator[KazooClient]:
    client = await start_zk(hosts, what, security)
    try:
        yield client
    finally:
        await stop_zk(client)
