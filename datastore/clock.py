"""Write timestamps: their layout, the step that issues the next one, and ``ClockUnsafe``.

Timestamps are microseconds since the epoch, as Cassandra's ``USING TIMESTAMP`` and HBase
cell timestamps expect, with the writer's id in the low ``NODE_BITS`` bits: two writers
with different ids can then never stamp two writes with the same value. (Engines still
break an equal-timestamp tie identically, ``Entity.wins_over``, for the one request that
carries two values for a key; the ids keep ties between *different* writes out.)

``next_timestamp`` is the hybrid logical clock's one step: the wall clock rounded down to
a multiple of ``TICK_US`` with the writer id in the low bits, or the last timestamp plus
one tick if that is not larger. So a writer issues at most one timestamp per ``TICK_US``
(64 µs) of wall time; above that rate (~15,600 writes/s per writer) its timestamps run
ahead of the wall clock. Six bits (64 writers) rather than more: each bit more halves the
rate one proxy can sustain before its clock runs ahead and it must refuse writes, and one
proxy process serves well over 4,000 writes/s. ``sync.writer_clock.WriterClock`` bounds that lead, the host's
offset from ZooKeeper's clock and the writer id's reuse; ``HybridLogicalClock`` here is
the same step with a hand-given id and no bound, for tools and tests that stamp writes
outside the proxy.

Must never: issue a timestamp that is not larger than the last one it issued or observed,
or import anything of nxnw's (this is ``datastore/``).
"""

from __future__ import annotations

import threading
import time

NODE_BITS = 6
MAX_NODES = 1 << NODE_BITS
#: The clock's resolution per writer: consecutive timestamps of one writer differ by at least this.
TICK_US = MAX_NODES


class ClockUnsafe(RuntimeError):
    """The writer clock refuses to stamp a write now; ``reason`` is a short code for metrics
    (``not_started``, ``offset``, ``ahead``, ``reservation``, ``stopped``), the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def wall_us(skew_us: int = 0) -> int:
    """This host's wall clock in µs since the epoch, plus ``skew_us`` (a fault-injection knob)."""
    return time.time_ns() // 1000 + skew_us


def next_timestamp(last: int, wall: int, node_id: int) -> int:
    """The smallest timestamp of writer ``node_id`` that is > ``last`` and >= ``wall`` rounded
    down to a tick: ``(max(wall, last + TICK_US) >> NODE_BITS) << NODE_BITS | node_id``."""
    return (max(wall, last + TICK_US) >> NODE_BITS) << NODE_BITS | node_id


def check_node_id(node_id: int) -> int:
    if isinstance(node_id, bool) or not isinstance(node_id, int) or not 0 <= node_id < MAX_NODES:
        raise ValueError(f"clock node id {node_id!r} must be in 0..{MAX_NODES - 1}")
    return node_id


class HybridLogicalClock:
    """Monotonic µs timestamps for a hand-given writer id (0 .. MAX_NODES-1), unbounded.

    For tools and tests that stamp writes themselves (snapshot tests, benchmarks). Nothing
    checks that the id is unique or the host's clock sane: the proxy uses
    ``sync.writer_clock.WriterClock``, which does.
    """

    def __init__(self, node_id: int, floor: int = 0) -> None:
        self.node_id = check_node_id(node_id)
        self._last = floor
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            self._last = next_timestamp(self._last, wall_us(), self.node_id)
            return self._last

    def observe(self, ts: int) -> None:
        """Floor the clock above a timestamp seen elsewhere (an engine's answer, a peer)."""
        with self._lock:
            if ts > self._last:
                self._last = ts

    @property
    def last(self) -> int:
        return self._last
