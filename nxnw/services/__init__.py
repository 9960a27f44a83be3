"""The local services that the tests, the demo and the benchmarks run against.

``up`` starts them in parallel (each one idempotent: a service that already answers is
left alone) and fails naming every service that did not come up. This is the only code
that starts services: ``make services``, the test session fixture and ``nxnw demo`` all
call it.
"""

from __future__ import annotations

import importlib
from concurrent.futures import ThreadPoolExecutor

from nxnw.services.base import Context, Service, ServiceStartError

#: name -> (module, class, constructor args after the context)
SERVICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "memcached-n1": ("nxnw.services.memcached", "MemcachedService", ("n1",)),
    "memcached-n2": ("nxnw.services.memcached", "MemcachedService", ("n2",)),
    "zookeeper-n1": ("nxnw.services.zookeeper", "ZooKeeperService", ("n1",)),
    "zookeeper-n2": ("nxnw.services.zookeeper", "ZooKeeperService", ("n2",)),
    "cassandra": ("nxnw.services.cassandra", "CassandraService", ()),
    "hbase": ("nxnw.services.hbase", "HBaseService", ()),
    "bind": ("nxnw.services.bind", "BindService", ()),
    "moto": ("nxnw.services.moto", "MotoService", ()),
}


class ServicesDown(RuntimeError):
    """One or more services failed to start; the message has one section per service."""


def service(name: str, ctx: Context | None = None) -> Service:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}")
    module, cls, args = SERVICES[name]
    return getattr(importlib.import_module(module), cls)(ctx or Context(), *args)


def up(names: list[str] | None = None, ctx: Context | None = None) -> dict[str, float]:
    """Start every named service (all by default); return seconds each took (0 = was up)."""
    ctx = ctx or Context()
    names = list(SERVICES) if names is None else names
    if not names:
        return {}
    services = [service(n, ctx) for n in names]
    took = {svc.name: 0.0 for svc in services if svc.healthy()}
    stopped = [svc for svc in services if svc.name not in took]
    # Installs (apt, Maven) are not safe to run concurrently; do them one by one first.
    for svc in stopped:
        svc.install()
    with ThreadPoolExecutor(max_workers=max(1, len(stopped))) as pool:
        futures = {svc.name: pool.submit(svc.start) for svc in stopped}
    errors = []
    for name, fut in futures.items():
        try:
            took[name] = fut.result()
        except Exception as exc:  # every failure is reported, not just the first
            errors.append(str(exc) if isinstance(exc, ServiceStartError) else f"{name}: {type(exc).__name__}: {exc}")
    if errors:
        raise ServicesDown("\n\n".join(errors))
    return {svc.name: took[svc.name] for svc in services}


def down(names: list[str] | None = None, ctx: Context | None = None) -> None:
    ctx = ctx or Context()
    for name in list(SERVICES) if names is None else names:
        service(name, ctx).down()


def status(ctx: Context | None = None) -> dict[str, bool]:
    ctx = ctx or Context()
    return {name: service(name, ctx).healthy() for name in SERVICES}
