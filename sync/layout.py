"""The ZooKeeper layout: every znode path nxnw uses, in one place.

Responsible for: naming every path (constants for the fleet-wide roots, functions for the
per-instance, per-plan and per-app ones). Every other module asks this one; none spells a
path. Must never: hold state or talk to ZooKeeper (it only builds strings).

All of it lives in N1's ZooKeeper (under the chroot of the ``zookeeper`` address, if any),
but for the mirror's markers in N2's.
"mirrored" means the plan's ``sync_paths`` include it by default, so the tree mirror copies
it to N2; nothing else of nxnw's is mirrored.

::

  /nxnw
  ├── proxies/<instance>            EPHEMERAL  written by each proxy instance (proxy/modes.py, Membership)
  │                                 {"instance", "incarnation", "session",
  │                                  "plans": {<plan>: {"mode", "epoch"}}}: the epoch of each
  │                                 plan's mode this instance acknowledged on this session.
  │                                 switch_mode(plan) waits for every child to name that
  │                                 plan's new epoch (an instance that does not know the plan
  │                                 yet has not acknowledged it).
  ├── proxy-leases/<instance>       persistent  written by each instance, removed at a clean
  │                                 shutdown or by switch_mode once waited out: {"lease": s}
  ├── clock/…                       persistent+ephemeral  the writer clock (sync/writer_clock.py):
  │   ├── writers/<id>              EPHEMERAL  the holder of writer id <id>
  │   ├── high-water/<id>           the id's reserved timestamp
  │   └── instances/<instance>      the id an instance last held
  ├── locks/<app>/<group>/…         EPHEMERAL  entity-group locks (sync/lock.py); MIRRORED
  ├── app-claims/<app>              persistent  {"plan": <plan>}: the one live plan that holds
  │                                 the app. Created in one transaction with the plan's
  │                                 registration, deleted when the plan completes or is
  │                                 rolled back (sync/state.py, PlanRegistry)
  ├── prefix-claims/p-<hex>         persistent  {"plan", "app", "prefix"}: the same for a
  │                                 memcache key prefix (hex of its bytes), so two live plans
  │                                 never route the same keys
  └── plans/<plan>                  persistent  {"plan", "apps", "key_prefixes": {app: prefix},
      │                             "live", "registered_at"}: written by the orchestrator at
      │                             registration (apps and prefixes never change afterwards);
      │                             proxies follow every child of plans/ (proxy/modes.py, Tenants)
      ├── mode                      persistent  the plan's mode document (sync/mode.py),
      │                             created with the plan (passthrough, epoch 0); set only by
      │                             switch_mode (proxy/control.py)
      ├── mode-load-verified        persistent  {"cow_epoch"}: the orchestrator's verify gate
      │                             (sync/mode.py names it after the mode znode)
      ├── cache-dirty/<inst>@<run>  persistent  "cow cache dirty" marker of one run of an
      │                             instance in the plan's cow (proxy/modes.py)
      ├── journal/<target>/…        persistent  the plan's repair journals toward n1 and n2
      │                             (proxy/journal.py): k-<hash> entries, r-<app>-… range marks
      ├── state                     persistent  the plan's migration state (sync/state.py)
      └── checkpoints/<task>/<id>   persistent  task records: the loader's range checkpoints,
                                    the orchestrator's finished tasks (<plan>._tasks)

  /nxnw/migration/checkpoints/<task>/<id>   persistent  the range checkpoints of the tool
                                    that runs without a plan (``nxnw snapshot``, in process or
                                    on Dask); a plan's Dask copy keeps its checkpoints under
                                    the plan, beside the in-process copy's

In N2's ZooKeeper, besides the mirrored subtrees:

  /nxnw-mirror/ephemerals/<path>    persistent  written by the tree mirror (sync/mirror.py): one
                                    marker per copy of an N1 ephemeral node, so that the copy
                                    is removed once N1's node is gone
"""

from __future__ import annotations

ROOT = "/nxnw"
PROXIES = f"{ROOT}/proxies"
LEASES = f"{ROOT}/proxy-leases"
CLOCK = f"{ROOT}/clock"
LOCKS = f"{ROOT}/locks"
PLANS = f"{ROOT}/plans"
APP_CLAIMS = f"{ROOT}/app-claims"
PREFIX_CLAIMS = f"{ROOT}/prefix-claims"
SHARED_CHECKPOINTS = f"{ROOT}/migration/checkpoints"
#: In N2's ZooKeeper, outside /nxnw (which N2's own proxies will use once N2 serves).
MIRROR_MARKERS = "/nxnw-mirror/ephemerals"


def proxy_member(instance: str) -> str:
    return f"{PROXIES}/{instance}"


def proxy_lease(instance: str) -> str:
    return f"{LEASES}/{instance}"


def plan(name: str) -> str:
    return f"{PLANS}/{name}"


def mode(plan_name: str) -> str:
    return f"{plan(plan_name)}/mode"


def cache_dirty(plan_name: str) -> str:
    return f"{plan(plan_name)}/cache-dirty"


def journal(plan_name: str, target: str) -> str:
    return f"{plan(plan_name)}/journal/{target}"


def state(plan_name: str) -> str:
    return f"{plan(plan_name)}/state"


def checkpoints(plan_name: str) -> str:
    return f"{plan(plan_name)}/checkpoints"


def app_claim(app: str) -> str:
    return f"{APP_CLAIMS}/{app}"


def prefix_claim(prefix: bytes) -> str:
    return f"{PREFIX_CLAIMS}/p-{prefix.hex()}"
