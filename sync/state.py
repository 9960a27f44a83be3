"""Plans, migration state and task records, persisted in N1's ZooKeeper.

Three stores: ``PlanRegistry`` (a plan's registration and its claims on its apps and
memcache key prefixes), ``MigrationStateStore`` (a plan's migration-state znode,
compare-and-set) and ``TaskRecordStore`` (JSON records filed by task: a snapshot loader's
range checkpoints, the orchestrator's finished tasks, the DNS hand-off's saved copy).
Every path comes from ``sync.layout``; a plan's state and records live under its name.

Claims: registering a plan is one ZooKeeper transaction that creates (or, for a plan
registered before, updates) the plan node, its first mode znode and one claim znode per
app and per key prefix; a claim another live plan holds fails the whole transaction, so
two live plans can never hold one app — ``AppClaimed`` names the other plan and the app.
A plan releases its claims (one transaction again) when it completes or is rolled back;
its node and mode stay, so the proxies keep following its mode.

Error handling
==============

Nothing here holds session-bound state (no watches, no ephemeral nodes), so a SUSPENDED or
LOST session costs nothing but the call in flight: every call goes through a KazooRetry
with a deadline that also retries across a session expiry (the new session simply
continues), and raises ``kazoo.retry.RetryFailedError`` once the deadline has passed.
A process that crashes mid-call resumes from whatever the znodes say.

Compare-and-set: the migration state is only ever written against the version the writer
read (``expected_version``); a different version raises ``StateConflict`` — another
orchestrator moved the migration on. A retried write whose first attempt had in fact
succeeded (reply lost with the connection) is recognised by the ``write_id`` it carries
and returned as a success, not reported as a conflict.

Layout (paths: ``sync/layout.py``):

* ``/nxnw/plans/<plan>/state`` — one JSON document: the current ``phase`` (one of ``STATES``,
  the words of the CLI, logs and status page), ``started_at`` (the migration),
  ``phase_started_at``, ``updated_at`` (unix seconds), ``phases`` (per-phase data, a JSON
  object per phase name) and ``write_id``.
* ``/nxnw/plans/<plan>/checkpoints/<task>/<record-id>`` — one JSON object per record of a
  task: for a snapshot/load task, one per finished (or partly finished) range; for the
  orchestrator's ``<plan>._tasks``, one per finished task. Task and record ids are
  url-quoted into znode names, so any non-empty string works (token ranges contain '/'
  and ':'). Records are last-writer-wins: one writer owns a record at a time.

Must never: write the state without a version check; accept a phase outside ``STATES``;
store a value ZooKeeper would refuse (documents are limited to ``MAX_DOCUMENT_BYTES``).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import BadVersionError, NoNodeError, NodeExistsError, RolledBackError, RuntimeInconsistency
from kazoo.protocol.states import ZnodeStat

from sync import layout
from sync._zk import answer, bounded_retry, check_path, check_timeout, decode_name, encode_name, join
from sync.mode import mode_document

#: The phases of a migration in order: the one vocabulary of the CLI, the znodes, the logs
#: and the status page. ``ROLLBACK`` is not one of them but a state a migration can end in.
PHASES = ("prepare", "sync-zk", "cow", "snapshot+load", "verify", "proxy", "handoff", "complete")
ROLLBACK = "rollback"
STATES = (*PHASES, ROLLBACK)
#: ZooKeeper refuses requests near 1 MB (jute.maxbuffer); stay well below.
MAX_DOCUMENT_BYTES = 512 * 1024


class AppClaimed(RuntimeError):
    """A plan names an app (or a key prefix) another live plan holds; the message names both."""


class StateConflict(RuntimeError):
    """The migration-state znode is not at the version (or existence) the writer expected."""


class CorruptDocument(ValueError):
    """A znode holds data that is not the expected JSON document; the message has the path."""


def check_phase(phase: object) -> str:
    if phase not in STATES:
        raise ValueError(f"unknown migration phase {phase!r}; phases: {', '.join(STATES)}")
    return phase  # type: ignore[return-value]


def _encode(doc: object, what: str) -> bytes:
    try:
        data = json.dumps(doc, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serialisable: {exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{what} is {len(data)} bytes encoded; the limit is {MAX_DOCUMENT_BYTES}")
    return data


def _decode_object(data: bytes, path: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptDocument(f"{path} does not hold JSON ({exc}): {data[:80]!r}") from None
    if not isinstance(doc, dict):
        raise CorruptDocument(f"{path} does not hold a JSON object: {data[:80]!r}")
    return doc


@dataclass(frozen=True)
class MigrationState:
    phase: str
    started_at: float
    phase_started_at: float
    updated_at: float
    #: Per-phase data: ``phases[name]`` is the JSON object recorded for that phase.
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The znode version: pass it to ``update`` as ``expected_version``.
    version: int = 0
    write_id: str = ""

    @property
    def data(self) -> dict[str, Any]:
        """The current phase's data."""
        return self.phases.get(self.phase, {})


class MigrationStateStore:
    """The migration-state znode, read and compare-and-set (blocking calls)."""

    def __init__(self, client: KazooClient, *, path: str, deadline: float = 10.0) -> None:
        self.client = client
        self.path = check_path(path, "state path")
        self.deadline = check_timeout(deadline, "deadline")

    def _retry(self):  # a fresh KazooRetry per call: its deadline counts from the call
        return bounded_retry(self.deadline, ignore_expire=True)

    def get(self) -> MigrationState | None:
        """The state now, or None if no migration has been recorded."""
        try:
            data, stat = self._retry()(self.client.get, self.path)
        except NoNodeError:
            return None
        return self._parse(data, stat)

    def _parse(self, data: bytes, stat: ZnodeStat) -> MigrationState:
        doc = _decode_object(data, self.path)
        try:
            phase = check_phase(doc["phase"])
            phases = doc.get("phases", {})
            if not isinstance(phases, dict) or not all(isinstance(v, dict) for v in phases.values()):
                raise ValueError(f"'phases' is not an object of objects: {phases!r}"[:200])
            return MigrationState(phase, float(doc["started_at"]), float(doc["phase_started_at"]),
                                  float(doc["updated_at"]), phases, stat.version, str(doc.get("write_id", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocument(f"{self.path} is not a migration-state document: {exc}") from None

    def create(self, phase: str = "prepare", data: dict[str, Any] | None = None) -> MigrationState:
        """Record a new migration in ``phase``; StateConflict if one is already recorded."""
        check_phase(phase)
        now = time.time()
        doc = {"phase": phase, "started_at": now, "phase_started_at": now, "updated_at": now,
               "phases": {phase: self._phase_data(data)}, "write_id": uuid.uuid4().hex}
        return self._write(doc, None)

    def update(self, expected_version: int, *, phase: str | None = None,
               data: dict[str, Any] | None = None) -> MigrationState:
        """Compare-and-set: move to ``phase`` and/or replace the (new) current phase's data.

        Raises StateConflict if the znode is not at ``expected_version``.
        """
        if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0:
            raise ValueError(f"expected_version must be a znode version (int >= 0), got {expected_version!r}")
        if phase is not None:
            check_phase(phase)
        current = self.get()
        if current is None:
            raise StateConflict(f"{self.path} does not exist; expected it at version {expected_version}")
        if current.version != expected_version:
            raise StateConflict(f"{self.path} is at version {current.version} (phase {current.phase!r}), "
                                f"not {expected_version}: re-read the state and decide again")
        now = time.time()
        phases = copy.deepcopy(current.phases)
        target = phase or current.phase
        if data is not None or target not in phases:
            phases[target] = self._phase_data(data)
        doc = {"phase": target, "started_at": current.started_at,
               "phase_started_at": now if target != current.phase else current.phase_started_at,
               "updated_at": now, "phases": phases, "write_id": uuid.uuid4().hex}
        return self._write(doc, expected_version)

    def delete(self, expected_version: int) -> None:
        """Remove the record (after ``complete`` or a finished ``rollback``); CAS like update."""
        try:
            self._retry()(self.client.delete, self.path, version=expected_version)
        except NoNodeError:
            pass
        except BadVersionError as exc:
            raise StateConflict(f"{self.path} is not at version {expected_version}; not deleted") from exc

    @staticmethod
    def _phase_data(data: dict[str, Any] | None) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"phase data must be a JSON object (dict), got {type(data).__name__}")
        return copy.deepcopy(data)

    def _write(self, doc: dict[str, Any], expected_version: int | None) -> MigrationState:
        data = _encode(doc, f"migration state for {self.path}")
        try:
            if expected_version is None:
                self._retry()(self.client.create, self.path, data, makepath=True)
                version = 0
            else:
                version = self._retry()(self.client.set, self.path, data, version=expected_version).version
        except (NodeExistsError, BadVersionError, NoNodeError) as exc:
            now = self.get()
            if now is not None and now.write_id == doc["write_id"]:
                return now  # our first attempt had succeeded; its reply was lost
            found = "does not exist" if now is None else f"is at version {now.version} (phase {now.phase!r})"
            wanted = "to be absent" if expected_version is None else f"at version {expected_version}"
            raise StateConflict(f"{self.path} {found}; expected it {wanted}") from exc
        return MigrationState(doc["phase"], doc["started_at"], doc["phase_started_at"], doc["updated_at"],
                              doc["phases"], version, doc["write_id"])


class TaskRecordStore:
    """JSON records filed by task, one znode each (blocking calls).

    The snapshot loader's range checkpoints go through ``nxnw.checkpoints`` (which adapts
    this store to the loader's async ``snapshot.CheckpointStore`` interface); the
    orchestrator keeps its finished tasks and the DNS hand-off's copy here directly.
    """

    def __init__(self, client: KazooClient, *, root: str = layout.SHARED_CHECKPOINTS, deadline: float = 10.0) -> None:
        self.client = client
        self.root = check_path(root, "task records root")
        self.deadline = check_timeout(deadline, "deadline")

    def _retry(self):
        return bounded_retry(self.deadline, ignore_expire=True)

    def _task_path(self, task: str) -> str:
        return join(self.root, encode_name(task, "task"))

    def _path(self, task: str, record_id: str) -> str:
        return join(self._task_path(task), encode_name(record_id, "record id"))

    def put(self, task: str, record_id: str, value: dict[str, Any]) -> None:
        """Store ``value`` (a JSON object) as the record ``record_id`` of ``task``."""
        path = self._path(task, record_id)
        if not isinstance(value, dict):
            raise ValueError(f"record {task}/{record_id} must be a JSON object (dict), got {type(value).__name__}")
        self._retry().put(self.client, path, _encode(value, f"record {task}/{record_id}"))

    def get(self, task: str, record_id: str) -> dict[str, Any] | None:
        path = self._path(task, record_id)
        try:
            data, _ = self._retry()(self.client.get, path)
        except NoNodeError:
            return None
        return _decode_object(data, path)

    def list(self, task: str) -> dict[str, dict[str, Any]]:
        """Every record of ``task``: record id -> value (reads pipelined)."""
        task_path = self._task_path(task)
        client, end = self.client, time.monotonic() + self.deadline

        def read_all() -> dict[str, bytes]:
            try:
                names = answer(client, client.get_children_async(task_path), end, "get_children")
            except NoNodeError:
                return {}
            pending = {name: client.get_async(join(task_path, name)) for name in names}
            found = {}
            for name, result in pending.items():
                try:
                    found[name] = answer(client, result, end, "get")[0]
                except NoNodeError:
                    pass  # cleared meanwhile
            return found

        raw = self._retry()(read_all)
        return {decode_name(name): _decode_object(data, join(task_path, name)) for name, data in sorted(raw.items())}

    def clear(self, task: str, record_id: str | None = None) -> None:
        """Delete one record, or (``record_id=None``) every record of ``task``."""
        path = self._task_path(task) if record_id is None else self._path(task, record_id)
        try:
            self._retry()(self.client.delete, path, recursive=True)
        except NoNodeError:
            pass


@dataclass(frozen=True)
class RegisteredPlan:
    """A plan as registered: its apps and their memcache key prefixes never change."""

    name: str
    apps: tuple[str, ...]
    key_prefixes: dict[str, str]
    live: bool


def default_key_prefixes(apps: list[str] | tuple[str, ...], prefixes: dict[str, str] | None = None) -> dict[str, str]:
    """Each app's memcache key prefix: the plan's setting, else ``"<app>:"``."""
    return {app: (prefixes or {}).get(app, f"{app}:") for app in apps}


class PlanRegistry:
    """Plan registration and claims (blocking calls; see the module docstring)."""

    def __init__(self, client: KazooClient, *, deadline: float = 10.0) -> None:
        self.client = client
        self.deadline = check_timeout(deadline, "deadline")

    def _retry(self):
        return bounded_retry(self.deadline, ignore_expire=True)

    def get(self, name: str) -> RegisteredPlan | None:
        try:
            data, _ = self._retry()(self.client.get, layout.plan(name))
        except NoNodeError:
            return None
        return parse_plan(name, data)

    def names(self) -> list[str]:
        try:
            return sorted(self._retry()(self.client.get_children, layout.PLANS))
        except NoNodeError:
            return []

    def holder(self, app: str) -> str | None:
        """The live plan that holds ``app``, or None."""
        try:
            data, _ = self._retry()(self.client.get, layout.app_claim(app))
        except NoNodeError:
            return None
        return str(_decode_object(data, layout.app_claim(app)).get("plan"))

    def _claims(self, plan: RegisteredPlan) -> list[tuple[str, bytes, str]]:
        """(path, data, what) of every claim the plan makes."""
        out = [(layout.app_claim(app), json.dumps({"plan": plan.name}).encode(), f"app {app}") for app in plan.apps]
        for app, prefix in plan.key_prefixes.items():
            out.append((layout.prefix_claim(prefix.encode()),
                        json.dumps({"plan": plan.name, "app": app, "prefix": prefix}).encode(),
                        f"memcache key prefix {prefix!r} (app {app})"))
        return out

    def register(self, name: str, apps: list[str], key_prefixes: dict[str, str] | None = None) -> RegisteredPlan:
        """Register (or re-register) plan ``name`` over ``apps`` and claim them in one
        transaction; AppClaimed naming the live plan that holds one; ValueError if the plan
        was registered before with other apps or prefixes."""
        wanted = RegisteredPlan(name, tuple(apps), default_key_prefixes(apps, key_prefixes), True)
        existing = self.get(name)
        if existing is not None and (set(existing.apps), existing.key_prefixes) != (set(wanted.apps),
                                                                                    wanted.key_prefixes):
            raise ValueError(f"plan {name} is registered with apps {', '.join(existing.apps)} and key prefixes "
                             f"{existing.key_prefixes}; a plan's apps never change: give the new plan another name")
        if existing is not None and existing.live:
            return existing
        for path, _, what in self._claims(wanted):  # a readable refusal before the transaction
            self._refuse_if_held(path, what, name)
        doc = _encode({"plan": name, "apps": list(wanted.apps), "key_prefixes": wanted.key_prefixes, "live": True,
                       "registered_at": time.time()}, f"plan {name}")
        for root in (layout.PLANS, layout.APP_CLAIMS, layout.PREFIX_CLAIMS):
            self._retry()(self.client.ensure_path, root)
        failed: list[Exception] = []
        for _ in range(3):
            def build(transaction: TransactionRequest) -> None:  # runs within this iteration
                if existing is None:
                    transaction.create(layout.plan(name), doc)
                    transaction.create(layout.mode(name), mode_document("passthrough", 0))
                else:
                    transaction.set_data(layout.plan(name), doc)
                for path, data, _ in self._claims(wanted):
                    transaction.create(path, data)

            results = self._retry().transaction(self.client, build)
            failed = [r for r in results if isinstance(r, Exception)
                      and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
            if not failed:
                return wanted
            for path, _, what in self._claims(wanted):
                self._refuse_if_held(path, what, name)
            now = self.get(name)
            if now is not None and now.live:
                return now  # our first attempt had committed; its reply was lost
            existing = now
        raise StateConflict(f"plan {name}'s registration kept racing with another writer ({failed[0]!r}); try again")

    def _refuse_if_held(self, path: str, what: str, name: str) -> None:
        try:
            data, _ = self._retry()(self.client.get, path)
        except NoNodeError:
            return
        other = _decode_object(data, path).get("plan")
        if other != name:
            raise AppClaimed(f"plan {other} holds {what}; plan {name} cannot claim it until {other} completes or "
                             "is rolled back")

    def release(self, name: str) -> None:
        """Drop the plan's claims and mark it not live (it completed or was rolled back)."""
        plan = self.get(name)
        if plan is None or not plan.live:
            return
        data, stat = self._retry()(self.client.get, layout.plan(name))
        released = _encode({**_decode_object(data, layout.plan(name)), "live": False}, f"plan {name}")
        held = [path for path, _, _ in self._claims(plan) if self._retry()(self.client.exists, path) is not None]

        def build(transaction: TransactionRequest) -> None:
            transaction.set_data(layout.plan(name), released, version=stat.version)
            for path in held:
                transaction.delete(path)

        results = self._retry().transaction(self.client, build)
        failed = [r for r in results if isinstance(r, Exception)
                  and not isinstance(r, (RolledBackError, RuntimeInconsistency))]
        if failed and (now := self.get(name)) is not None and now.live:
            raise StateConflict(f"plan {name}'s claims were not released ({failed[0]!r}); try again")


def parse_plan(name: str, data: bytes) -> RegisteredPlan:
    """The plan node's document; CorruptDocument if it is not one."""
    path = layout.plan(name)
    doc = _decode_object(data, path)
    apps, prefixes = doc.get("apps"), doc.get("key_prefixes")
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps) or not isinstance(prefixes, dict) \
            or not all(isinstance(p, str) for p in prefixes.values()):
        raise CorruptDocument(f"{path} is not a plan document: {data[:120]!r}")
    return RegisteredPlan(name, tuple(apps), dict(prefixes), bool(doc.get("live", True)))
