"""The hybrid logical clock that stamps every write.

Timestamps are microseconds since the epoch, as Cassandra's ``USING TIMESTAMP`` and HBase
cell timestamps expect, with the writer's id in the low ``NODE_BITS`` bits: two proxy
instances can then never stamp two different writes with the same value, which would let
engines break the tie differently (Cassandra by greater value, HBase by arrival) and
N1 and N2 disagree. The clock never goes backwards, and ``observe`` floors it above any
timestamp an engine has returned, so a write after a read is always newer than what was
read even when this host's clock is behind the one that wrote it.
"""

from __future__ import annotations

import threading
import time

NODE_BITS = 4
MAX_NODES = 1 << NODE_BITS


class HybridLogicalClock:
    """Monotonic µs timestamps, unique per writer id (0 .. MAX_NODES-1)."""

    def __init__(self, node_id: int, floor: int = 0) -> None:
        if not 0 <= node_id < MAX_NODES:
            raise ValueError(f"clock node id {node_id} must be in 0..{MAX_NODES - 1}")
        self.node_id = node_id
        self._last = floor
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            base = max(time.time_ns() // 1000, self._last + MAX_NODES) >> NODE_BITS
            self._last = (base << NODE_BITS) | self.node_id
            return self._last

    def observe(self, ts: int) -> None:
        """Floor the clock above a timestamp seen elsewhere (an engine's answer, a peer)."""
        with self._lock:
            if ts > self._last:
                self._last = ts

    @property
    def last(self) -> int:
        return self._last
