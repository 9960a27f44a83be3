"""Running real proxy instances in the test's event loop, against real ZooKeeper and engines."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiohttp
from kazoo.client import KazooClient

from proxy.config import ProxyConfig
from proxy.control import switch_mode
from proxy.server import ProxyServer
from sync import layout
from sync.aio import run_blocking
from sync.mode import ModeState, mark_load_verified, read_mode
from sync.state import PlanRegistry
from nxnw.services.endpoints import HOST, MEMCACHED, ZOOKEEPER


def key_path(app: str, kind: str, key: bytes) -> str:
    return f"/v1/apps/{app}/kinds/{kind}/entities/{base64.urlsafe_b64encode(key).rstrip(b'=').decode()}"


@contextmanager
def zk_chroot(timeout: float = 5) -> Iterator[tuple[str, KazooClient]]:
    """A fresh chroot in N1's ZooKeeper for one test: (its hosts string, a client in it)."""
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}", timeout=timeout)
    admin.start(10)
    admin.ensure_path(root)
    scoped = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}{root}", timeout=timeout)
    scoped.start(10)
    try:
        yield f"{HOST}:{ZOOKEEPER['n1']}{root}", scoped
    finally:
        scoped.stop()
        scoped.close()
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()


@asynccontextmanager
async def zk_namespace() -> AsyncIterator[tuple[str, KazooClient]]:
    """``zk_chroot`` for async tests: mode, journal and locks of one test only."""
    with zk_chroot() as found:
        yield found


def proxy_config(instance: str, n1_url: str, n2_url: str, zk_hosts: str, **extra) -> ProxyConfig:
    return ProxyConfig(instance=instance, n1_engine=n1_url, n2_engine=n2_url,
                       n1_zookeeper=zk_hosts,
                       n1_memcached=f"{HOST}:{MEMCACHED['n1']}", n2_memcached=f"{HOST}:{MEMCACHED['n2']}",
                       http_port=0, admin_token="test-token", **extra)


@asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[tuple[ProxyServer, aiohttp.ClientSession]]:
    server = ProxyServer(config)
    await server.setup()
    try:
        await server.start()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http:
            yield server, http
    finally:
        await server.cleanup()


#: The plan the proxy tests register (``switch``'s default).
TEST_PLAN = "test"


def register_plan(zk: KazooClient, apps: list[str], plan: str = TEST_PLAN,
                  key_prefixes: dict[str, str] | None = None) -> None:
    """Register ``plan`` over ``apps`` (idempotent). Unless ``key_prefixes`` says otherwise,
    the first app's memcache prefix is "": the plan takes every memcache key no other plan
    claims, as the proxy tests' cache clients use keys of every shape."""
    PlanRegistry(zk).register(plan, apps, {apps[0]: ""} if key_prefixes is None else key_prefixes)


async def switch(zk: KazooClient, mode: str, *, plan: str = TEST_PLAN, apps: list[str] | None = None,
                 **kwargs) -> ModeState:
    """``switch_mode`` of ``plan`` as the orchestrator calls it: cow -> proxy after recording
    that the load was verified during the current cow period (the tests that use this load
    nothing). With ``apps``, the plan is registered over them first (once)."""
    if apps is not None:
        await run_blocking(register_plan, zk, apps, plan)
    if mode == "proxy":
        current = await run_blocking(read_mode, zk, path=layout.mode(plan))
        if current is not None and current.mode == "cow":
            await run_blocking(mark_load_verified, zk, current.epoch, path=layout.mode(plan))
    return await run_blocking(switch_mode, zk, plan, mode, **{"drain_timeout": 10, "ack_timeout": 10, **kwargs})
