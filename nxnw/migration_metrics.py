"""The orchestrator's Prometheus metrics, served at ``/metrics`` beside the status page.

What ``nxnw migrate --status-port P`` exports (every series labelled with the plan's
name): the phase (``nxnw_migration_phase``, a state set over the phases and
``rollback``, and ``nxnw_migration_phase_number``, its position 1-8 for graphs, 0 after
a rollback), each finished task's duration and each failure, the load's progress per app
(entities, bytes, ranges done and planned), verify's differences per app (found, and
still there after repair), and the depth of both repair journals as N1's ZooKeeper holds
them. The process's other metrics (the ZooKeeper mirror's lag, run in this process) are
on the same page: it serves prometheus_client's default registry.

The journal depths are read when a scrape arrives, off the event loop and within
``JOURNAL_READ_SECONDS``; a read that fails or runs late leaves the last value (and a
line in the log), so a slow ZooKeeper never fails a scrape nor holds the status page.

Must never: touch ZooKeeper or an engine on the event loop; change anything it reads.
ops/alerts.yml and ops/grafana-dashboard.json use these names: a test checks they exist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Enum, Gauge, generate_latest

from sync.state import PHASES, ROLLBACK, STATES

log = logging.getLogger(__name__)

JOURNAL_READ_SECONDS = 5.0

PHASE = Enum("nxnw_migration_phase", "The migration's phase (rollback: rolled back)", ["plan"], states=list(STATES))
PHASE_NUMBER = Gauge("nxnw_migration_phase_number",
                     "The phase's position, prepare=1 .. complete=8; 0 after a rollback", ["plan"])
TASK_SECONDS = Gauge("nxnw_migration_task_seconds", "How long each finished task ran", ["plan", "task", "phase"])
TASK_FAILURES = Counter("nxnw_migration_task_failures_total", "Task runs that failed", ["plan", "task", "phase"])
LOAD_ENTITIES = Gauge("nxnw_migration_load_entities", "Entities (tombstones included) loaded into N2", ["plan", "app"])
LOAD_BYTES = Gauge("nxnw_migration_load_bytes", "Bytes of entities loaded into N2", ["plan", "app"])
LOAD_RANGES_DONE = Gauge("nxnw_migration_load_ranges_done", "Key ranges loaded (resumed ones included)",
                         ["plan", "app"])
LOAD_RANGES_TOTAL = Gauge("nxnw_migration_load_ranges_total", "Key ranges the load planned", ["plan", "app"])
VERIFY_DIFFERENCES = Gauge("nxnw_migration_verify_differences",
                           "Keys the app's last verify found differing between N1 and N2, before any repair",
                           ["plan", "app"])
VERIFY_REMAINING = Gauge("nxnw_migration_verify_remaining",
                         "Keys still differing after the app's last verify (and its repair): non-zero stops the "
                         "migration before proxy", ["plan", "app"])
JOURNAL_DEPTH = Gauge("nxnw_migration_journal_depth",
                      "Keys in the repair journal toward a side (target n1 or n2), read from N1's ZooKeeper",
                      ["plan", "target"])


def set_phase(plan: str, phase: str) -> None:
    PHASE.labels(plan).state(phase)
    PHASE_NUMBER.labels(plan).set(0 if phase == ROLLBACK else PHASES.index(phase) + 1)


def mount_metrics(app: web.Application, refresh: Callable[[], Awaitable[None]]) -> None:
    """Add ``GET /metrics`` to ``app``: ``refresh()`` (bounded), then the default registry."""

    async def metrics(_: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(refresh(), JOURNAL_READ_SECONDS)
        except Exception as exc:  # a scrape still answers, with the values last read
            log.warning("metrics: reading the journal depths failed (%s: %s); serving the last values",
                        type(exc).__name__, exc)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics, name="metrics")
