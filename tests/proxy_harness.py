"""Running real proxy instances in the test's event loop, against real ZooKeeper and engines."""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from kazoo.client import KazooClient

from proxy.config import ProxyConfig
from proxy.server import ProxyServer
from nxnw.services.endpoints import HOST, MEMCACHED, ZOOKEEPER


def key_path(app: str, kind: str, key: bytes) -> str:
    return f"/v1/apps/{app}/kinds/{kind}/entities/{base64.urlsafe_b64encode(key).rstrip(b'=').decode()}"


@asynccontextmanager
async def zk_namespace() -> AsyncIterator[tuple[str, KazooClient]]:
    """A fresh chroot in N1's ZooKeeper: mode, journal and locks of one test only."""
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}", timeout=5)
    admin.start(10)
    admin.ensure_path(root)
    scoped = KazooClient(hosts=f"{HOST}:{ZOOKEEPER['n1']}{root}", timeout=5)
    scoped.start(10)
    try:
        yield f"{HOST}:{ZOOKEEPER['n1']}{root}", scoped
    finally:
        scoped.stop()
        scoped.close()
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()


def proxy_config(instance: str, node_id: int, n1_url: str, n2_url: str, zk_hosts: str, **extra) -> ProxyConfig:
    return ProxyConfig(instance=instance, node_id=node_id, n1_engine=n1_url, n2_engine=n2_url,
                       n1_zookeeper=zk_hosts, n2_zookeeper=f"{HOST}:{ZOOKEEPER['n2']}",
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
