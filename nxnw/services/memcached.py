"""One memcached per deployment (N1, N2) on loopback, from the Debian package.

This module is responsible for starting our own memcached for deployment ``n1`` or
``n2`` on its port from :mod:`endpoints`, and for proving it answers with a real
set/get. It must never use, stop or reconfigure a system-wide memcached: installing the
Debian package may start one on 11211 (through its init script); ours is a separate
process on a separate port, and the two never meet. UDP is off (``-U 0``) so nothing of
ours listens where a reflection attack could use it.
"""

from __future__ import annotations

import uuid

from pymemcache.client.base import Client

from nxnw.services import endpoints
from nxnw.services.base import Context, Service, apt_install


class MemcachedService(Service):
    """memcached for one deployment: ``memcached-n1`` on 21211, ``memcached-n2`` on 21212."""

    start_timeout = 20.0

    def __init__(self, ctx: Context, deployment: str) -> None:
        if deployment not in endpoints.MEMCACHED:
            raise ValueError(f"unknown deployment {deployment!r} for memcached; expected one of {sorted(endpoints.MEMCACHED)}")
        self.deployment = deployment
        self.name = f"memcached-{deployment}"
        self.port = endpoints.MEMCACHED[deployment]
        super().__init__(ctx)

    def install(self) -> None:
        apt_install(["memcached"], ["memcached"], "the N1 and N2 memcache servers")

    def command(self) -> list[str]:
        # -u root: memcached refuses to run as root without naming the user explicitly.
        return ["memcached", "-l", endpoints.HOST, "-p", str(self.port), "-U", "0",
                "-m", "256", "-c", "4096", "-u", "root"]

    def probe(self) -> None:
        # A key of our own, expiring at once and deleted after, so a probe never leaves
        # anything behind that a test comparing N1's and N2's caches could see.
        key = f"nxnw-probe-{uuid.uuid4().hex}"
        value = uuid.uuid4().hex.encode()
        client = Client((endpoints.HOST, self.port), connect_timeout=1.0, timeout=1.0)
        try:
            if not client.set(key, value, expire=2, noreply=False):
                raise RuntimeError(f"memcached {self.name} did not store {key}")
            got = client.get(key)
            if got != value:
                raise RuntimeError(f"memcached {self.name} returned {got!r} for {key}, expected {value!r}")
            client.delete(key, noreply=False)
        finally:
            client.close()
