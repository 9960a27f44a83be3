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

Must never: move the lease back to an older round trip, or renew it from anything but a
completed round trip; block the event loop.
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
    """Renewed by a daemon thread; ``valid()`` and ``age()`` are cheap and thread-safe.

    Each renewal is an asynchronous read whose completion callback moves ``sent_ok`` to the
    time that read was *sent*: a slow reply still counts (for the time it was sent), and a
    slow round trip never delays the next renewal.
    """

    def __init__(self, client: KazooClient, lease: float) -> None:
        self.client = client
        self.lease = check_timeout(lease, "lease")
        self._lock = threading.Lock()
        self._sent_ok = time.monotonic() - self.lease  # invalid until the first round trip
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nxnw-zk-lease", daemon=True)
        LEASE_AGE.set_function(self.age)

    def start(self, timeout: float = 10.0) -> None:
        """Start renewing; return once one round trip succeeded (TimeoutError if none did)."""
        self._thread.start()
        if not self._first.wait(timeout):
            raise TimeoutError(f"no ZooKeeper round trip succeeded within {timeout:g} s: no lease")

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
            result = self.client.exists_async("/")
        except Exception as exc:  # noqa: BLE001 — a closed or expired client: the lease runs out
            log.debug("lease round trip not sent: %s", exc)
            return
        result.rawlink(lambda done: self._completed(done, sent))

    def _completed(self, result, sent: float) -> None:
        if not result.successful():
            log.debug("lease round trip failed: %s", result.exception)
            return
        with self._lock:
            if sent > self._sent_ok:
                self._sent_ok = sent
        self._first.set()

    def _run(self) -> None:
        while True:
            self._renew()
            if self._stop.wait(self.lease / 4):
                return
