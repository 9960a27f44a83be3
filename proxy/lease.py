"""The instance's ZooKeeper lease: how long it may still act on what ZooKeeper last told it.

Responsible for one number: the monotonic time at which the instance last *sent* a
ZooKeeper request that then succeeded. A small thread reads ``/`` every ``lease / 4`` s
to keep it fresh. ``valid()`` is true while that time is less than ``lease`` seconds ago,
with ``lease`` at most half the session timeout the server granted.

Why it fences (the full argument is in ``proxy/modes.py``): a request that succeeded
proves the session was alive on the server at some moment after it was sent, so the
server cannot expire the session — and drop the instance out of the acknowledgement set
of a mode switch — before ``sent + session timeout``. The instance stops acting at
``sent + lease``, earlier. Monotonic time keeps running while the process is stopped
(SIGSTOP), so a resumed instance sees an expired lease before it serves anything; the
thread renews the lease only with a round trip made after the resume.

On session loss: nothing special — requests fail, the lease runs out, and it is renewed
by the first round trip on the new session (the mode watcher's session generation tells
in-flight requests that the old session is gone).

Must never: renew the lease from a request sent before the last one that succeeded, or
from anything but a completed round trip; block the event loop.
"""

from __future__ import annotations

import logging
import threading
import time

from kazoo.client import KazooClient
from prometheus_client import Gauge

from sync._zk import check_timeout

log = logging.getLogger("nxnw.proxy.lease")

LEASE_AGE = Gauge("nxnw_zookeeper_lease_age_seconds", "Seconds since the last successful ZooKeeper round trip began")


class ZooKeeperLease:
    """Renewed by a daemon thread; ``valid()`` and ``age()`` are cheap and thread-safe."""

    def __init__(self, client: KazooClient, lease: float) -> None:
        self.client = client
        self.lease = check_timeout(lease, "lease")
        self._sent_ok = time.monotonic() - self.lease  # invalid until the first round trip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nxnw-zk-lease", daemon=True)
        LEASE_AGE.set_function(self.age)

    def start(self) -> None:
        """Renew once (blocking, bounded by the lease) and start the renewing thread."""
        self._renew()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.lease)

    def age(self) -> float:
        return time.monotonic() - self._sent_ok

    def valid(self) -> bool:
        return time.monotonic() - self._sent_ok < self.lease

    def reason(self) -> str:
        """Why the lease is not valid (for a 503)."""
        return (f"no ZooKeeper round trip succeeded in the last {self.age():.1f} s (lease {self.lease:g} s): "
                "the session may have expired, so this instance may no longer be counted by a mode switch")

    def _renew(self) -> None:
        sent = time.monotonic()
        try:
            self.client.exists_async("/").get(timeout=self.lease / 4)
        except Exception as exc:  # noqa: BLE001 — any failure just leaves the lease to run out
            log.debug("lease round trip failed: %s", exc)
            return
        if sent > self._sent_ok:
            self._sent_ok = sent

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 4):
            self._renew()
