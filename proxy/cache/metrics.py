"""Prometheus metrics of the cache half (all named ``nxnw_cache_*``).

Responsible for: declaring every cache metric once, in one place. Must never: be imported
for its side effects by anything but ``proxy.cache`` (the metrics live in the default
registry, which the proxy's ``/metrics`` endpoint exports).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

#: Operations served synchronously, by mode, the side that served them and operation.
OPS = Counter("nxnw_cache_ops_total", "Cache operations sent synchronously to a side",
              ["mode", "side", "op"])
#: Client-visible latency of each operation through the router (route + memcached).
LATENCY = Histogram("nxnw_cache_op_seconds", "Latency of cache operations through the router",
                    ["mode", "op"],
                    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25, 1.0))
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
