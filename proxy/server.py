"""One proxy instance's lifecycle: open everything in ``setup``, serve, close in ``cleanup``.

Modelled on aiohttp's AppRunner: resources are opened and closed in one place, in
reverse order. ``Tenants`` (``proxy/modes.py``) follows the registered plans: each plan's
mode changes arrive from its ``sync.mode`` watcher thread and go to its mode machine, which
adopts each one — data and cache together, one fence,
one drain — and acknowledges it in the instance's membership znode in N1's ZooKeeper.
The lease thread (``proxy/lease.py``) runs for the whole life of the ZooKeeper session.
With ``tls_cert``/``tls_key`` the HTTP site and the memcache listener serve one TLS context
(``proxy/tls.py``); the ZooKeeper client comes from ``sync.zk_client`` with the config's
digest authentication and TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from datastore import Engine, EngineUnavailable, open_engine
from proxy.api import build_app
from proxy.cache import CacheListener, CacheRouter
from proxy.config import ProxyConfig
from proxy.core import ProxyCore
from proxy.lease import ZooKeeperLease
from proxy.modes import Membership, Tenants
from proxy.tls import server_context
from sync.aio import run_blocking
from sync.lock import GroupLock
from sync.writer_clock import WriterClock
from sync.zk_client import refused_chroot, zk_client

log = logging.getLogger("nxnw.proxy.server")


class ProxyServer:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.n1: Engine | None = None
        self.n2: Engine | None = None
        self.zk: KazooClient | None = None
        self.lease: ZooKeeperLease | None = None
        self.clock: WriterClock | None = None
        self.membership: Membership | None = None
        self.modes: Tenants | None = None
        self.core: ProxyCore | None = None
        self.runner: web.AppRunner | None = None
        self.cache: CacheRouter | None = None
        self.listener: CacheListener | None = None
        self.extra_cleanups: list[Callable[[], object]] = []
        self.http_port: int | None = None
        self.ssl_context: ssl.SSLContext | None = None

    async def setup(self) -> None:
        cfg = self.config
        self.n1, self.n2 = open_engine(cfg.n1_engine), open_engine(cfg.n2_engine)
        await self.n1.open()
        await self.n2.open()
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            self.ssl_context = server_context(cfg.tls_cert, cfg.tls_key, cfg.tls_client_ca)
        self.zk = zk_client(cfg.n1_zookeeper, cfg.n1_zookeeper_security, timeout=cfg.session_timeout)
        try:
            await run_blocking(self.zk.start, 15)
        except NoAuthError as exc:  # cleanup stops and closes the client
            raise EngineUnavailable(refused_chroot(cfg.n1_zookeeper, "N1's")) from exc
        # The server may grant a shorter session than asked for: the lease follows the shorter.
        granted = getattr(self.zk, "_session_timeout", 0) / 1000 or cfg.session_timeout
        self.lease = ZooKeeperLease(self.zk, min(granted, cfg.session_timeout) / 2)
        await run_blocking(self.lease.start)
        self.clock = WriterClock(self.zk, cfg.instance, max_offset_ms=cfg.max_clock_offset_ms)
        await run_blocking(self.clock.start)
        self.cache = CacheRouter(cfg.n1_memcached, cfg.n2_memcached, instance=cfg.instance,
                                 fail_limit=cfg.memcache_fail_limit, retry_after=cfg.memcache_retry_after)
        await self.cache.start()
        self.membership = Membership(self.zk, cfg.instance, self.lease)
        self.modes = Tenants(zk=self.zk, membership=self.membership, lease=self.lease, cache=self.cache, n1=self.n1,
                             n2=self.n2, shadow_rate=cfg.shadow_rate, journal_bound=cfg.journal_bound)
        self.core = ProxyCore(instance=cfg.instance, clock=self.clock, modes=self.modes,
                              lock=self._group_lock, admin_token=cfg.admin_token.get_secret_value())
        await self.modes.start()
        await self.modes.wait_adopted(30.0)
        self.runner = web.AppRunner(build_app(self.core, self.cache, self.zk), access_log=None, handler_cancellation=True)
        await self.runner.setup()
        if cfg.memcache_port is not None:
            self.listener = CacheListener(self.cache, cfg.http_host, cfg.memcache_port,
                                          enable_flush=cfg.enable_flush_cmd, ssl_context=self.ssl_context)

    async def start(self) -> None:
        assert self.runner is not None
        site = web.TCPSite(self.runner, self.config.http_host, self.config.http_port, reuse_address=True,
                           ssl_context=self.ssl_context)
        await site.start()
        if self.listener is not None:
            await self.listener.start()
        sockets = site._server.sockets if site._server else []  # the bound port when 0 was asked
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http_port
        log.info("proxy %s serving %s on %s:%s", self.config.instance, "HTTPS" if self.ssl_context else "HTTP",
                 self.config.http_host, self.http_port)

    async def cleanup(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.core is not None:
            await self.core.close()  # shielded writes whose clients left, then the mode in force
        elif self.modes is not None:
            await self.modes.close()
        for cleanup in reversed(self.extra_cleanups):
            result = cleanup()
            if asyncio.iscoroutine(result):
                await result
        if self.cache is not None:
            await self.cache.close()
        if self.membership is not None:
            with contextlib.suppress(Exception):  # the session may be gone: its ephemerals too
                await run_blocking(self.membership.deregister)
        if self.clock is not None:
            await run_blocking(self.clock.stop)
        if self.lease is not None:
            await run_blocking(self.lease.stop)
        if self.zk is not None:
            await run_blocking(self.zk.stop)
            await run_blocking(self.zk.close)
        for engine in (self.n1, self.n2):
            if engine is not None:
                await engine.close()

    @contextlib.asynccontextmanager
    async def _group_lock(self, app: str, group: str) -> AsyncIterator[Callable[[], None]]:
        assert self.zk is not None
        lock = GroupLock(self.zk, app, group, timeout=self.config.lock_timeout, identifier=self.config.instance)
        async with lock:
            yield lock.ensure_held


async def serve(config: ProxyConfig, stop: asyncio.Event) -> None:
    server = ProxyServer(config)
    try:
        await server.setup()
        await server.start()
        await stop.wait()
    finally:
        await server.cleanup()
