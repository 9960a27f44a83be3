"""Prometheus metrics of the cache half (all named ``nxnw_cache_*``).

Responsible for: declaring every cache metric once, in one place. Must never: be imported
for its side effects by anything but ``proxy.cache`` (the metrics live in the default
registry, which the proxy's ``/metrics`` endpoint exports).
"""

from __future__ import annotations

import bisect
import weakref

from prometheus_client import Counter, Gauge, Histogram

#: Operations served synchronously, by mode, the side that served them and operation.
OPS = Counter("nxnw_cache_ops_total", "Cache operations sent synchronously to a side",
              ["mode", "side", "op"])
_LATENCY_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0)
#: Client-visible latency of each operation through the router (route + memcached).
LATENCY = Histogram("nxnw_cache_op_seconds", "Latency of cache operations through the router",
                    ["mode", "op"], buckets=_LATENCY_BUCKETS)
COPY_DEPTH = Gauge("nxnw_cache_copy_queue_depth", "Jobs waiting in a copy queue", ["dest"])
COPIES = Counter("nxnw_cache_copies_total", "Copy jobs run, by destination and result",
                  ["dest", "result"])
COPIES_DROPPED = Counter("nxnw_cache_copies_dropped_total",
                          "Copies dropped (queue full, failed, or left at a drain); "
                          "their keys are invalidated at the next switch",
                          ["dest", "reason"])
COR_FILLS = Counter("nxnw_cache_cor_fills_total", "Cache-on-read fills of the cold side, by result",
                    ["result"])
INVALIDATED = Counter("nxnw_cache_dropped_keys_invalidated_total",
                      "Keys whose copy was dropped, deleted on the target side at a mode switch", ["dest"])
SWITCHES = Counter("nxnw_cache_switches_total", "Cache mode switches, by target mode and result",
                   ["mode", "result"])


class Tally:
    """One op's requests on the listener's callback path, counted in plain numbers and added
    into its ``OPS`` and ``LATENCY`` children in bulk (``flush``, run by the listener every
    second and when it closes).

    Why: through ``prometheus_client`` a counter increment and a histogram observation take
    a lock each and cost a fifth of the proxy's CPU per relayed request (measured: 15–25 µs
    of ~100 on this machine). The exported figures lag by at most a second. The histogram
    is filled through its children's bucket and sum values (``_buckets``, ``_sum``), the
    same objects ``observe`` adds to: prometheus_client has no bulk observe.
    """

    __slots__ = ("count", "seconds", "buckets", "_counter", "_histogram", "__weakref__")

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * len(_BOUNDS)
        self._counter = counter
        self._histogram = histogram
        _TALLIES.add(self)

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        if not self.count:
            return
        count, seconds, buckets = self.count, self.seconds, self.buckets
        self.count, self.seconds, self.buckets = 0, 0.0, [0] * len(_BOUNDS)
        self._counter.inc(count)
        self._histogram._sum.inc(seconds)  # type: ignore[attr-defined]
        for i, n in enumerate(buckets):
            if n:
                self._histogram._buckets[i].inc(n)  # type: ignore[attr-defined]


_BOUNDS = (*_LATENCY_BUCKETS, float("inf"))
_TALLIES: weakref.WeakSet[Tally] = weakref.WeakSet()


def flush_tallies() -> None:
    """Add every ``Tally`` into its metrics now."""
    for tally in list(_TALLIES):
        tally.flush()
