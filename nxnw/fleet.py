"""The demo's own child processes: proxy instances and a dedicated N2 memcached.

This module is responsible for starting, watching, signalling and replacing the
processes a demo run owns, so that the fault campaign (``nxnw/faults.py``) can kill,
pause and restart them: each proxy instance is a real ``nxnw proxy serve`` process with
its HTTP and memcache ports on loopback, and N2's memcached is a memcached of the run's
own on a free port, so stopping it disturbs nobody else's tests. It must never signal a
process it did not start, and never stop a shared service.

Failure handling: a process that does not answer before its deadline is reported with
the tail of its log, and killed, so that a retry starts clean.

With ``ProxyTls`` the instances serve HTTPS and TLS on their memcache ports, and this
module's own calls to them (``/healthz``, ``/admin/state``) verify them with its CA.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import socket
import subprocess
import sys
import ssl
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from nxnw.services.base import log_tail
from nxnw.services.endpoints import HOST
from proxy.tls import client_context
from sync.aio import io_executor, run_blocking

READY_TIMEOUT = 60.0


def free_port(*addresses: str) -> int:
    """A TCP port free on every address (two instances may listen on one port, two addresses)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no TCP port free on all of {addresses}")


class ChildFailed(RuntimeError):
    """A child process died or did not answer in time; the message has its log tail."""


@dataclass(frozen=True)
class ProxyTls:
    """TLS of a fleet's proxies: the certificate and key they serve, the CA that signed it."""

    cert: str
    key: str
    ca: str


@dataclass
class ProxyProcess:
    """One ``nxnw proxy serve`` instance: a name, an address and two ports (its writer id
    comes from ZooKeeper)."""

    instance: str
    host: str
    port: int
    memcache_port: int
    plan_path: Path
    log_path: Path
    admin_token: str
    tls: ProxyTls | None = None
    popen: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @functools.cached_property
    def client_ssl(self) -> ssl.SSLContext | bool:
        """What a client of this instance passes as aiohttp's ``ssl``: its CA, or the default."""
        return client_context(self.tls.ca) if self.tls else True

    def start(self) -> None:
        argv = [sys.executable, "-m", "nxnw.cli", "proxy", "serve", str(self.plan_path), "--instance", self.instance,
                "--host", self.host, "--port", str(self.port),
                "--memcache-port", str(self.memcache_port)]
        if self.tls:
            argv += ["--tls-cert", self.tls.cert, "--tls-key", self.tls.key]
        env = {**os.environ, "NXNW_ADMIN_TOKEN": self.admin_token, "NXNW_LOG": os.environ.get("NXNW_LOG", "INFO")}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"proxy {self.instance} was never started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    async def healthy(self, http: aiohttp.ClientSession) -> bool:
        """True when the instance answers /healthz with a mode (it can take writes)."""
        try:
            async with http.get(f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=2),
                                ssl=self.client_ssl) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise ChildFailed(f"proxy {self.instance} exited {self.popen.returncode if self.popen else None} "
                                      f"before answering\n{log_tail(self.log_path)}")
                if await self.healthy(http):
                    return
                await asyncio.sleep(0.2)
        self.signal(signal.SIGKILL)
        raise ChildFailed(f"proxy {self.instance} did not answer /healthz on {self.url} within {timeout:.0f} s\n"
                          f"{log_tail(self.log_path)}")

    async def admin_state(self) -> dict:
        """The instance's ``/admin/state`` (behind its admin token)."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.url}/admin/state", headers={"Authorization": f"Bearer {self.admin_token}"},
                                timeout=aiohttp.ClientTimeout(total=5), ssl=self.client_ssl) as resp:
                resp.raise_for_status()
                return await resp.json()

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGCONT (it may be paused), SIGTERM, and SIGKILL when it does not exit in time."""
        if not self.alive():
            return
        assert self.popen is not None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.popen.poll() is None:
            self.signal(signal.SIGKILL)
            self.popen.wait()


@dataclass
class ProxyFleet:
    """The run's proxy instances, one per slot (an address and its ports), replaceable.

    Each slot keeps its address and ports for the whole run, so clients that fail over
    between the slots find a replacement where the killed instance was. A replacement gets
    a new instance name and a new writer id: a killed instance's ephemeral membership and
    writer id stay taken until its ZooKeeper session expires.
    """

    plan_path: Path
    workdir: Path
    slots: list[tuple[str, int, int]]
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    tls: ProxyTls | None = None
    #: a plan file per slot instead of ``plan_path`` (the ``partition-zookeeper`` fault gives
    #: each slot its own path to N1's ZooKeeper)
    slot_plans: list[Path] | None = None
    current: list[ProxyProcess] = field(default_factory=list)
    retired: list[ProxyProcess] = field(default_factory=list)

    def _new(self, slot: int) -> ProxyProcess:
        host, port, memcache_port = self.slots[slot]
        generation = sum(1 for p in self.retired if p.host == host and p.port == port)
        name = f"demo-p{slot}" + (f"-r{generation}" if generation else "")
        plan = self.plan_path if self.slot_plans is None else self.slot_plans[slot]
        return ProxyProcess(name, host, port, memcache_port, plan, self.workdir / f"{name}.log", self.admin_token,
                            self.tls)

    async def start(self) -> None:
        self.current = [self._new(slot) for slot in range(len(self.slots))]
        for proxy in self.current:
            proxy.start()
        await asyncio.gather(*(proxy.wait_ready() for proxy in self.current))

    async def replace(self, slot: int) -> ProxyProcess:
        """Start a new instance in ``slot`` (the old one must be dead) and wait until it serves."""
        old = self.current[slot]
        if old.alive():
            raise RuntimeError(f"proxy {old.instance} (pid {old.pid}) still runs; kill it before replacing it")
        self.retired.append(old)
        new = self._new(slot)
        self.current[slot] = new
        new.start()
        await new.wait_ready()
        return new

    async def stop(self) -> None:
        await asyncio.gather(*(proxy.stop() for proxy in [*self.current, *self.retired]))


@dataclass
class MemcachedProcess:
    """A memcached of this run's own on a free loopback port (N2's cache in the demo)."""

    port: int
    log_path: Path
    popen: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    async def start(self, timeout: float = 20.0) -> None:
        # -u root: memcached refuses to run as root without naming the user explicitly.
        argv = ["memcached", "-l", HOST, "-p", str(self.port), "-U", "0", "-m", "64", "-c", "1024", "-u", "root"]
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ChildFailed(f"memcached on {self.address} exited before answering\n{log_tail(self.log_path)}")
            if await run_blocking(self._answers, executor=io_executor()):
                return
            await asyncio.sleep(0.1)
        await self.stop()
        raise ChildFailed(f"memcached on {self.address} did not answer within {timeout:.0f} s\n{log_tail(self.log_path)}")

    def _answers(self) -> bool:
        client = Client((HOST, self.port), connect_timeout=0.5, timeout=0.5)
        try:
            return client.version() is not None
        except (OSError, MemcacheError):
            return False
        finally:
            client.close()

    async def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.kill()
        await run_blocking(self.popen.wait, executor=io_executor())
