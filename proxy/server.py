"""One proxy instance's lifecycle: open everything in ``setup``, serve, close in ``cleanup``.

Modelled on aiohttp's AppRunner: resources are opened and closed in one place, in
reverse order. The instance registers itself as an ephemeral znode
``/nxnw/proxies/<instance>`` in N1's ZooKeeper and writes there the mode epoch it has
fully adopted, so the orchestrator can tell when every instance follows a new mode (and
no request still runs under the old one). Mode changes arrive from ``sync.mode``'s
watcher thread and are applied in order by one task on the event loop, to the cache half
(``proxy.cache``: drain the mirror queues, invalidate dropped keys) and then to the
datastore half, and only then acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from datastore import Engine, HybridLogicalClock, open_engine
from proxy.api import build_app
from proxy.cache import CacheListener, CacheRouter
from proxy.config import ProxyConfig
from proxy.control import PROXIES_ROOT
from proxy.core import ProxyCore
from proxy.journal import JournalReplayer, RepairJournal
from sync.aio import run_blocking
from sync.lock import GroupLock
from sync.mode import ModeState, ModeWatcher, ensure_mode

log = logging.getLogger("nxnw.proxy.server")



class ProxyServer:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.n1: Engine | None = None
        self.n2: Engine | None = None
        self.zk: KazooClient | None = None
        self.watcher: ModeWatcher | None = None
        self.core: ProxyCore | None = None
        self.replayers: list[JournalReplayer] = []
        self.runner: web.AppRunner | None = None
        self.cache: CacheRouter | None = None
        self.listener: CacheListener | None = None
        self.extra_cleanups: list[Callable[[], object]] = []
        self._modes: asyncio.Queue[ModeState | None] = asyncio.Queue()
        self._mode_task: asyncio.Task | None = None
        self.http_port: int | None = None

    @property
    def member_path(self) -> str:
        return f"{PROXIES_ROOT}/{self.config.instance}"

    async def setup(self) -> None:
        cfg = self.config
        self.n1, self.n2 = open_engine(cfg.n1_engine), open_engine(cfg.n2_engine)
        await self.n1.open()
        await self.n2.open()
        self.zk = KazooClient(hosts=cfg.n1_zookeeper, timeout=6.0)
        await run_blocking(self.zk.start, 15)
        self.cache = CacheRouter(cfg.n1_memcached, cfg.n2_memcached, instance=cfg.instance)
        await self.cache.start()
        to_n2 = await run_blocking(RepairJournal, self.zk, "n2")
        to_n1 = await run_blocking(RepairJournal, self.zk, "n1")
        self.core = ProxyCore(instance=cfg.instance, clock=HybridLogicalClock(cfg.node_id), n1=self.n1, n2=self.n2, to_n2=to_n2,
                              to_n1=to_n1, lock=self._group_lock, shadow_rate=cfg.shadow_rate,
                              admin_token=cfg.admin_token)
        await run_blocking(ensure_mode, self.zk)
        await run_blocking(self._register)
        loop = asyncio.get_running_loop()
        self._mode_task = asyncio.create_task(self._follow_modes(), name="follow-modes")
        self.watcher = ModeWatcher(self.zk)
        self.watcher.add_callback(lambda state: loop.call_soon_threadsafe(self._modes.put_nowait, state))
        if self.watcher.current is not None:  # read before the callback was added: adopt it now
            self._modes.put_nowait(self.watcher.current)
        await run_blocking(self.watcher.wait_until, lambda state: state is not None, 15.0)
        while self.core.mode is None:  # the watcher has it; let the follower adopt it
            await asyncio.sleep(0.01)
        self.replayers = [JournalReplayer(to_n2, self.n1, self.n2), JournalReplayer(to_n1, self.n2, self.n1)]
        for replayer in self.replayers:
            replayer.start()
        self.runner = web.AppRunner(build_app(self.core, self.cache, self.zk), access_log=None, handler_cancellation=True)
        await self.runner.setup()
        if cfg.memcache_port is not None:
            self.listener = CacheListener(self.cache, cfg.http_host, cfg.memcache_port)

    async def start(self) -> None:
        assert self.runner is not None
        site = web.TCPSite(self.runner, self.config.http_host, self.config.http_port, reuse_address=True)
        await site.start()
        if self.listener is not None:
            await self.listener.start()
        sockets = site._server.sockets if site._server else []  # the bound port when 0 was asked
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http_port
        log.info("proxy %s serving HTTP on %s:%s", self.config.instance, self.config.http_host, self.http_port)

    async def cleanup(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        if self.runner is not None:
            await self.runner.cleanup()
        for replayer in self.replayers:
            await replayer.stop()
        for cleanup in reversed(self.extra_cleanups):
            result = cleanup()
            if asyncio.iscoroutine(result):
                await result
        if self._mode_task is not None:
            self._mode_task.cancel()
            await asyncio.gather(self._mode_task, return_exceptions=True)
        if self.watcher is not None:
            await run_blocking(self.watcher.close)
        if self.core is not None:
            await self.core.close()
        if self.cache is not None:
            await self.cache.close()
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

    def _register(self, state: ModeState | None = None) -> None:
        assert self.zk is not None
        doc = json.dumps({"instance": self.config.instance, "mode": state.mode if state else None,
                          "epoch": state.epoch if state else None}).encode()
        self.zk.ensure_path(PROXIES_ROOT)
        try:
            self.zk.create(self.member_path, doc, ephemeral=True)
        except NodeExistsError:
            self.zk.set(self.member_path, doc)

    async def _follow_modes(self) -> None:
        """Apply mode changes in order; acknowledge each only once it is fully in force."""
        assert self.core is not None
        while True:
            state = await self._modes.get()
            try:
                if self.cache is not None:
                    # Fencing first: without a known mode, cache writes stop too. A cache switch
                    # drains the mirror queues and invalidates dropped keys before it swaps.
                    self.cache.writable = state is not None
                    if state is not None and state.mode != self.cache.mode:
                        await self.cache.switch(state.mode)
                await self.core.apply_mode(state.mode if state else None)
                if state is not None:
                    await run_blocking(self._register, state)
                    log.info("proxy %s now in mode %s (epoch %d)", self.config.instance, state.mode, state.epoch)
                else:
                    log.warning("proxy %s fenced: no ZooKeeper session or no valid mode", self.config.instance)
            except Exception:
                log.exception("proxy %s could not adopt mode %s", self.config.instance, state)


async def serve(config: ProxyConfig, stop: asyncio.Event) -> None:
    server = ProxyServer(config)
    try:
        await server.setup()
        await server.start()
        await stop.wait()
    finally:
        await server.cleanup()
