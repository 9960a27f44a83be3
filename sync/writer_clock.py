"""The proxy's writer clock: a writer id from ZooKeeper, a persisted high-water mark, and a
bound on this host's offset from ZooKeeper's clock.

What it promises (DESIGN invariant 1). ``now()`` returns timestamps (``datastore.clock``
layout) that are

* **unique across the fleet**: the writer id in the low bits is held by one live instance
  at a time (an ephemeral znode), and an id taken over from a crashed or expired holder is
  floored above every timestamp that holder may have issued (the high-water mark below);
* **increasing per instance across restarts**: a restarted instance takes back its previous
  id when it is free, and floors at that id's high-water mark whatever id it gets (if
  another instance holds it by then, its mark runs up to ``reservation_s`` ahead, and the
  restarted instance waits that long before it stamps, reason ``ahead``);
* **ordered in real time beyond the bound**: ``now()`` refuses (``ClockUnsafe``) whenever a
  timestamp could be more than ``max_offset_ms`` away from ZooKeeper's clock. Two instances
  that both keep that bound issue timestamps within ``2 * max_offset_ms`` of each other, so
  a write invoked more than 2 × ``max_offset_ms`` (the ordering bound) after another
  write was acknowledged — on any instance — gets a larger timestamp and wins.

Why the bound holds. Let e be the host's true offset (wall − ZooKeeper). A timestamp issued
at wall time w is ts ≤ w + lead, so ts − zk = lead + e; and ts ≥ w − TICK_US (rounding), so
zk − ts ≤ −e + TICK_US. The clock knows e to within u (below) and refuses unless both
``lead + offset + u`` and ``|offset| + u + TICK_US`` are ≤ ``max_offset_ms``. ``lead`` is
how far the clock runs ahead of its wall clock: a writer above one write per ``TICK_US``
(64 µs) of wall time, or a clock floored at a high-water mark after a crash. Such a writer
is refused until its wall clock catches up; the refusal says so.

How the offset is measured. Every renewal of the high-water mark (one ZooKeeper write per
``tick_s``) is bracketed by the local clock: the znode's ``mtime`` (ms, the leader's clock)
was stamped within the round trip ``rtt`` that began at wall time ``before``, so the offset
at ``before`` lies in ``[before − (mtime + 1 ms), before − mtime + rtt]``; the estimate is
the middle, the uncertainty half the width. ``rtt`` is timed by the monotonic clock, never
as a difference of two wall readings: a step of the wall clock inside the round trip would
make that bracket narrower than the round trip, even negative, and the clock would trust it
as its tightest measurement. Between measurements the estimate follows this host's wall
clock against its monotonic clock, so a step of the wall clock (NTP, ``skew_us``) counts at
once, and the uncertainty grows by ``DRIFT_PPM`` of the time since the measurement. Each
wall reading is taken between two monotonic ones, and the gap between them counts as
uncertainty too: a thread preempted between a wall and a monotonic read would otherwise
shift the offset by as long as it was held off.

The high-water mark. Before issuing any timestamp above R the clock has persisted R in
``<root>/high-water/<id>`` (R = now + ``reservation_s``, renewed every ``tick_s``); a new
holder of the id floors its clock above the R it reads. A renewal is a compare-and-set on
the znode version, so an old holder that does not yet know it lost the id (a paused
process, an expired session) cannot raise R behind the new holder's back: either its
renewal fails (version moved) and it stops at its last persisted R, or the new holder's
write fails and it reads the renewed R again. A clean ``stop()`` lowers R to the last
timestamp issued, so a restart after a clean stop does not wait; a restart after a crash
waits (refusing with reason ``ahead``) up to ``reservation_s`` for its wall clock to pass R.

Error handling
==============

* **SUSPENDED**: timestamps go on up to the persisted R (any new holder floors above it);
  renewals fail, and once R is reached ``now()`` refuses (``reservation``). The mode
  watcher fences the proxy in the meantime anyway.
* **LOST** (session expired): the writer node is gone and the id may be taken. Timestamps
  still go on up to R (same argument); the background thread takes an id again on the new
  session (the same one if it is free), floored at the old id's last timestamp and the new
  id's high-water mark.
* Every ZooKeeper call has a deadline (``bounded_retry``). A ``create`` of the writer node
  whose reply was lost is recognised on retry by the node's ephemeral owner (our session);
  a high-water renewal whose reply was lost, by the write id in its data.

Threading: ``start()`` and ``stop()`` block (run them off the event loop); ``now()``,
``observe()`` and the properties only take an in-process lock and never block on
ZooKeeper. Must never: issue a timestamp above its persisted reservation, issue one while
it knows its offset is beyond the bound, or delete a writer node it does not own.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError
from kazoo.protocol.states import KazooState, ZnodeStat
from prometheus_client import Counter, Gauge

from datastore.clock import MAX_NODES, TICK_US, ClockUnsafe, next_timestamp, wall_us
from sync import layout
from sync._zk import CONNECTIVITY_ERRORS, bounded_retry, check_name, check_path, check_timeout, join

log = logging.getLogger("nxnw.sync.writer_clock")

#: Every znode of the writer clock lives under this root: ``writers/<id>`` (ephemeral, the
#: holder), ``high-water/<id>`` (persistent, the reservation R), ``instances/<instance>``
#: (persistent, the id an instance last held).
CLOCK_ROOT = layout.CLOCK
DEFAULT_MAX_OFFSET_MS = 250.0
DEFAULT_RESERVATION_S = 2.0
DEFAULT_TICK_S = 0.5
#: Allowance for this host's clock drifting from ZooKeeper's between two measurements.
DRIFT_PPM = 200
#: The oldest measurement the offset estimate may still rest on when later ones were looser.
MEASUREMENT_MAX_AGE_S = 30.0
#: Deadline of one ZooKeeper call made by the background thread.
CALL_DEADLINE_S = 2.0
REASONS = ("not_started", "offset", "ahead", "reservation", "stopped")

OFFSET = Gauge("nxnw_writer_clock_offset_seconds",
               "This instance's clock minus ZooKeeper's, as last estimated (positive: ahead)", ["instance"])
UNCERTAINTY = Gauge("nxnw_writer_clock_uncertainty_seconds",
                    "Uncertainty of the offset estimate (half the bracketing round trip, plus drift)", ["instance"])
WRITER_ID = Gauge("nxnw_writer_clock_writer_id", "The writer id this instance holds (-1: none)", ["instance"])
UNSAFE = Gauge("nxnw_writer_clock_unsafe",
               "1 for the reason this instance refuses to stamp writes now, 0 for the others", ["instance", "reason"])
REFUSALS = Counter("nxnw_writer_clock_refusals_total", "Writes the writer clock refused to stamp, by reason",
                   ["instance", "reason"])
FUTURE = Counter("nxnw_writer_clock_future_timestamps_total",
                 "Observed timestamps beyond ZooKeeper's clock plus the bound: not followed", ["instance"])


@dataclass(frozen=True, slots=True)
class Lease:
    """The writer id held and the reservation persisted for it: issue nothing above ``reserved``."""

    node_id: int
    reserved: int
    version: int


@dataclass(frozen=True, slots=True)
class Reading:
    """This host's wall clock (skewed) read between two readings of its monotonic clock:
    the wall reading belongs to monotonic instant ``mono`` give or take ``gap`` µs (a thread
    preempted between the two reads would otherwise shift every offset derived from them)."""

    wall: int
    mono: int
    gap: int


def read_clocks(skew_us: int) -> Reading:
    first = time.monotonic_ns()
    wall = wall_us(skew_us)
    last = time.monotonic_ns()
    return Reading(wall, (first + last) // 2000, (last - first + 1999) // 2000)


@dataclass(frozen=True, slots=True)
class Measurement:
    """This host's offset from ZooKeeper's clock, ``offset_us`` ± ``uncertainty_us``, taken
    at monotonic instant ``mono`` when the wall clock read ``wall`` (all µs)."""

    offset_us: float
    uncertainty_us: float
    wall: int
    mono: int


def measure(before: Reading, after_mono: int, mtime_ms: int) -> Measurement:
    """The offset at ``before`` of a znode write made between the reading ``before`` and the
    monotonic instant ``after_mono`` whose ``mtime`` ZooKeeper stamped as ``mtime_ms``.

    Only ``before``'s wall reading is used; the round trip is timed by the monotonic clock.
    A step of the wall clock inside the round trip would otherwise mix two time frames in
    one bracket: a step back makes it narrower than the round trip, even of negative width,
    and it would pass for the tightest measurement there is. Measured this way the step
    counts later, like any other, as the wall clock moving against the monotonic one.

    The monotonic instant paired with the wall reading may lie up to the reading's gap off
    it. Lying after, it times the round trip short and ``carry_forward``'s elapsed time
    short by as much, which cancels on the high side of the bracket and not on the low
    one; lying before, it errs the safe way on both sides. So the bracket widens by the gap
    on its low side only.
    """
    lo = before.wall - (mtime_ms * 1000 + 1000) - before.gap
    hi = before.wall - mtime_ms * 1000 + (after_mono - before.mono)
    return Measurement((lo + hi) / 2, (hi - lo) / 2, before.wall, before.mono)


def carry_forward(m: Measurement, now: Reading) -> tuple[float, float]:
    """(offset, uncertainty) in µs at the instant of ``now``, from the measurement ``m``: the
    offset moves as the wall clock moves against the monotonic one (a step counts at once),
    and the uncertainty grows by ``now``'s gap and by ``DRIFT_PPM`` of the time since."""
    elapsed = max(0, now.mono - m.mono)
    return (m.offset_us + (now.wall - m.wall) - elapsed,
            m.uncertainty_us + now.gap + elapsed * DRIFT_PPM / 1_000_000)


class WriterClock:
    """``now()`` → a unique, bounded timestamp, or ``ClockUnsafe`` with the reason.

    ``zk`` is a started client of N1's ZooKeeper (the caller owns it); ``instance`` names
    this proxy instance (one znode name). ``skew_us`` is added to the local time the clock
    reads: a test and fault-injection knob that stands for a host whose clock is off; it may
    be changed while the clock runs.
    """

    def __init__(self, zk: KazooClient, instance: str, *, max_offset_ms: float = DEFAULT_MAX_OFFSET_MS,
                 root: str = CLOCK_ROOT, reservation_s: float = DEFAULT_RESERVATION_S,
                 tick_s: float = DEFAULT_TICK_S, skew_us: int = 0) -> None:
        self.zk = zk
        self.instance = check_name(instance, "writer clock instance")
        self.root = check_path(root, "writer clock root")
        self.max_offset_us = check_timeout(max_offset_ms, "max_offset_ms") * 1000
        self.reservation_us = int(check_timeout(reservation_s, "reservation_s") * 1_000_000)
        self.tick_s = check_timeout(tick_s, "tick_s")
        if self.tick_s * 1_000_000 >= self.reservation_us / 2:
            raise ValueError(f"tick_s {tick_s} must be under half of reservation_s {reservation_s}: "
                             "the reservation must be renewed before it runs out")
        if isinstance(skew_us, bool) or not isinstance(skew_us, int):
            raise ValueError(f"skew_us must be an integer of microseconds, got {skew_us!r}")
        self.skew_us = skew_us
        self._lock = threading.Lock()
        self._last = 0
        self._lease: Lease | None = None
        self._measurement: Measurement | None = None
        self._stopped = False
        self._started = False
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unsafe_reason: str | None = "not_started"
        #: Tells this clock's writer node from another clock's on the same session.
        self._token = uuid.uuid4().hex
        WRITER_ID.labels(instance).set(-1)
        self._publish_unsafe("not_started")

    # ---- znode paths ----

    def _writer_path(self, node_id: int) -> str:
        return join(join(self.root, "writers"), f"{node_id:03d}")

    def _high_water_path(self, node_id: int) -> str:
        return join(join(self.root, "high-water"), f"{node_id:03d}")

    def _instance_path(self) -> str:
        return join(join(self.root, "instances"), self.instance)

    # ---- what the proxy calls ----

    @property
    def last(self) -> int:
        return self._last

    @property
    def node_id(self) -> int | None:
        lease = self._lease
        return None if lease is None else lease.node_id

    @property
    def offset_ms(self) -> float | None:
        """This instance's clock minus ZooKeeper's now, in ms (None before the first measurement)."""
        now = self._offset_now(read_clocks(self.skew_us))
        return None if now is None else now[0] / 1000

    @property
    def uncertainty_ms(self) -> float | None:
        now = self._offset_now(read_clocks(self.skew_us))
        return None if now is None else now[1] / 1000

    @property
    def max_offset_ms(self) -> float:
        return self.max_offset_us / 1000

    def now(self) -> int:
        """The next timestamp; ``ClockUnsafe`` (nothing issued) when it could break a promise."""
        with self._lock:
            try:
                ts = self._next()
            except ClockUnsafe as exc:
                REFUSALS.labels(self.instance, exc.reason).inc()
                if self._unsafe_reason != exc.reason:
                    self._publish_unsafe(exc.reason)
                raise
            self._last = ts
        if self._unsafe_reason is not None:
            self._publish_unsafe(None)
        return ts

    def observe(self, ts: int) -> None:
        """Floor the clock above a timestamp seen elsewhere (an engine's answer, a peer).

        Only up to what this clock may issue: a timestamp beyond ZooKeeper's clock plus the
        bound cannot come from a writer that keeps the bound, and following it would carry
        this clock past the bound for every write. It is counted and not followed.
        """
        with self._lock:
            if ts <= self._last:
                return
            reading = read_clocks(self.skew_us)
            now = self._offset_now(reading)
            if now is not None:
                limit = int(reading.wall - now[0] - now[1] + self.max_offset_us) - TICK_US
                if ts > limit:
                    FUTURE.labels(self.instance).inc()
                    ts = limit
            self._last = max(self._last, ts)

    def _offset_now(self, now: Reading) -> tuple[float, float] | None:
        """(offset, uncertainty) in µs at the instant of ``now``, from the last measurement."""
        m = self._measurement
        return None if m is None else carry_forward(m, now)

    def _next(self) -> int:
        """The timestamp ``now()`` would issue, checked against every promise (under the lock)."""
        if self._stopped:
            raise ClockUnsafe("stopped", f"writer clock of {self.instance} is stopped")
        lease, reading = self._lease, read_clocks(self.skew_us)
        wall = reading.wall
        estimate = self._offset_now(reading)
        if lease is None or estimate is None:
            raise ClockUnsafe("not_started", f"writer clock of {self.instance} holds no writer id yet")
        offset, error = estimate
        bound = self.max_offset_us
        if abs(offset) + error + TICK_US > bound:
            raise ClockUnsafe("offset", f"clock of {self.instance} is {offset / 1000:+.1f} ms ± {error / 1000:.1f} ms "
                                        f"from ZooKeeper's, beyond the bound of {bound / 1000:g} ms")
        ts = next_timestamp(self._last, wall, lease.node_id)
        if ts - wall + offset + error > bound:
            raise ClockUnsafe("ahead", f"clock of {self.instance} would run {(ts - wall + offset) / 1000:.1f} ms ahead of "
                                       f"ZooKeeper's, beyond the bound of {bound / 1000:g} ms (more than one write per "
                                       f"{TICK_US} µs, or floored after a restart); writes resume as its wall clock "
                                       "catches up")
        if ts > lease.reserved:
            raise ClockUnsafe("reservation", f"clock of {self.instance}: high-water reservation for writer id "
                                             f"{lease.node_id} was not renewed in time (ZooKeeper unreachable?)")
        return ts

    def _publish_unsafe(self, reason: str | None) -> None:
        self._unsafe_reason = reason
        for name in REASONS:
            UNSAFE.labels(self.instance, name).set(1 if name == reason else 0)

    # ---- lifecycle (blocking: run off the event loop) ----

    def start(self, timeout: float = 10.0) -> None:
        """Take a writer id, reserve and measure once, then keep both fresh in the background."""
        if self._started:
            raise RuntimeError(f"writer clock of {self.instance} is already started")
        check_timeout(timeout, "start timeout")
        self._started = True
        self.zk.add_listener(self._on_state)
        try:
            self._acquire(timeout)
        except BaseException:
            self.zk.remove_listener(self._on_state)
            self._started = False
            raise
        self._thread = threading.Thread(target=self._run, name=f"writer-clock-{self.instance}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop issuing; persist the last timestamp as the high-water mark and give the id back."""
        with self._lock:
            self._stopped = True
        self._publish_unsafe("stopped")
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.zk.remove_listener(self._on_state)
        last, lease = self._last, self._lease  # nothing issues or renews any more
        if lease is None or not self._started:
            return
        try:
            self._persist(lease, max(last, 1), CALL_DEADLINE_S)
        except (BadVersionError, NoNodeError) + CONNECTIVITY_ERRORS as exc:
            # The reservation stays as it was: higher than ``last``, so still correct.
            log.warning("writer clock %s: could not lower the high-water mark of id %d to its last timestamp: %s",
                        self.instance, lease.node_id, exc)
        try:
            self._release(lease.node_id)
        except CONNECTIVITY_ERRORS as exc:
            log.warning("writer clock %s: writer node of id %d not deleted (%s); it goes with the session",
                        self.instance, lease.node_id, exc)
        WRITER_ID.labels(self.instance).set(-1)

    def _on_state(self, state: KazooState) -> None:
        # kazoo's connection thread: only flag, never call ZooKeeper here.
        if state == KazooState.LOST:
            self._lost.set()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                if self._lost.is_set():
                    self._lost.clear()
                    try:
                        self._acquire(CALL_DEADLINE_S * 4)
                    except BaseException:
                        self._lost.set()
                        raise
                else:
                    self._renew()
            except (BadVersionError, NoNodeError) as exc:
                log.warning("writer clock %s lost writer id %s (%s); taking one again",
                            self.instance, self.node_id, type(exc).__name__)
                self._lost.set()
            except CONNECTIVITY_ERRORS as exc:
                log.info("writer clock %s: ZooKeeper call failed (%s); the reservation runs on until %s",
                         self.instance, type(exc).__name__, self._lease.reserved if self._lease else None)
            except Exception:
                log.exception("writer clock %s: unexpected error in the background thread", self.instance)
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        estimate = self._offset_now(read_clocks(self.skew_us))
        if estimate is not None:
            OFFSET.labels(self.instance).set(estimate[0] / 1e6)
            UNCERTAINTY.labels(self.instance).set(estimate[1] / 1e6)
        with self._lock:
            try:
                self._next()
                reason = None
            except ClockUnsafe as exc:
                reason = exc.reason
        if reason != self._unsafe_reason:
            self._publish_unsafe(reason)

    # ---- ZooKeeper ----

    def _acquire(self, deadline: float) -> None:
        """Hold a writer id (the previous one if free), floored at every mark it must exceed."""
        retry = bounded_retry(deadline, ignore_expire=True)
        previous = self._previous_id(retry)
        candidates = list(range(MAX_NODES))
        random.shuffle(candidates)
        if previous is not None:
            candidates.remove(previous)
            candidates.insert(0, previous)
        node_id = next((i for i in candidates if self._claim(i, retry)), None)
        if node_id is None:
            raise RuntimeError(f"writer clock {self.instance}: all {MAX_NODES} writer ids under "
                               f"{join(self.root, 'writers')} are held by live instances")
        floor = self._last
        if previous is not None and previous != node_id:
            floor = max(floor, self._read_high_water(previous, retry)[0])
        while True:
            reserved, version = self._read_high_water(node_id, retry)
            floor = max(floor, reserved)
            target = max(wall_us(self.skew_us), floor) + self.reservation_us
            try:
                lease = self._persist(Lease(node_id, reserved, version), target, deadline)
                break
            except (BadVersionError, NodeExistsError):
                continue  # a previous holder renewed between our read and write: read it again
        retry.put(self.zk, self._instance_path(), str(node_id).encode())
        with self._lock:
            self._last = max(self._last, floor)
            self._lease = lease
        WRITER_ID.labels(self.instance).set(node_id)
        log.info("writer clock %s holds writer id %d, floored at %d", self.instance, node_id, floor)

    def _previous_id(self, retry) -> int | None:
        try:
            data, _ = retry(self.zk.get, self._instance_path())
        except NoNodeError:
            return None
        text = data.decode(errors="replace")
        if text.isdigit() and int(text) < MAX_NODES:
            return int(text)
        log.warning("writer clock %s: %s holds %r, not a writer id; ignored", self.instance, self._instance_path(), text)
        return None

    def _owns(self, path: str, retry) -> tuple[bool, int]:
        """(whether the writer node at ``path`` is this clock's, its version); NoNodeError if none.
        Ours = created by this session *and* carrying this clock's token (clocks may share a session)."""
        data, stat = retry(self.zk.get, path)
        try:
            token = json.loads(data).get("token")
        except (ValueError, AttributeError):
            token = None
        return stat.ephemeralOwner == self.zk.client_id[0] and token == self._token, stat.version

    def _claim(self, node_id: int, retry) -> bool:
        path = self._writer_path(node_id)
        data = json.dumps({"instance": self.instance, "token": self._token}).encode()
        try:
            retry(self.zk.create, path, data, ephemeral=True, makepath=True)
            return True
        except NodeExistsError:
            # Ours if a first attempt succeeded and its reply was lost.
            try:
                return self._owns(path, retry)[0]
            except NoNodeError:
                return self._claim(node_id, retry)

    def _release(self, node_id: int) -> None:
        path = self._writer_path(node_id)
        retry = bounded_retry(CALL_DEADLINE_S, ignore_expire=True)
        try:
            ours, version = self._owns(path, retry)
            if ours:
                retry(self.zk.delete, path, version=version)
        except (NoNodeError, BadVersionError):
            pass  # gone with an expired session, or taken over: not ours to delete

    def _read_high_water(self, node_id: int, retry) -> tuple[int, int]:
        """(R, version) of an id's high-water mark; (0, -1) when it was never written."""
        try:
            data, stat = retry(self.zk.get, self._high_water_path(node_id))
        except NoNodeError:
            return 0, -1
        try:
            return int(json.loads(data)["reserved_until"]), stat.version
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"writer clock: high-water mark {self._high_water_path(node_id)} holds {data[:80]!r}, "
                             "not a reservation; refusing to guess a floor") from None

    def _persist(self, lease: Lease, reserved: int, deadline: float) -> Lease:
        """Compare-and-set the id's high-water mark to ``reserved`` and measure the offset on
        the way (the write's mtime, bracketed). Raises BadVersionError/NodeExistsError when
        another holder wrote it since ``lease.version``."""
        path = self._high_water_path(lease.node_id)
        write_id = uuid.uuid4().hex
        data = json.dumps({"reserved_until": reserved, "instance": self.instance, "write_id": write_id}).encode()
        retry = bounded_retry(deadline, ignore_expire=True)
        before = read_clocks(self.skew_us)
        try:
            if lease.version < 0:
                _, stat = retry(self.zk.create, path, data, makepath=True, include_data=True)
            else:
                stat = retry(self.zk.set, path, data, version=lease.version)
        except (BadVersionError, NodeExistsError):
            stat = self._own_write(path, write_id, retry)
        self._measurement = self._tighter(measure(before, time.monotonic_ns() // 1000, stat.mtime))
        return Lease(lease.node_id, reserved, stat.version)

    def _tighter(self, new: Measurement) -> Measurement:
        """The new measurement, or the previous one while it is still tighter (its uncertainty
        plus the drift since is smaller) and younger than ``MEASUREMENT_MAX_AGE_S``.

        One round trip slowed by a loaded host (a GC pause, a busy core) then widens nothing:
        as NTP filters its samples, the tightest recent bracket wins. Keeping an older one is
        sound because ``_offset_now`` carries it forward by the monotonic clock (a step of the
        wall clock shows at once) and widens it by ``DRIFT_PPM``.
        """
        old = self._measurement
        if old is None:
            return new
        age = new.mono - old.mono
        if age > MEASUREMENT_MAX_AGE_S * 1_000_000:
            return new
        return old if old.uncertainty_us + age * DRIFT_PPM / 1_000_000 < new.uncertainty_us else new

    def _own_write(self, path: str, write_id: str, retry) -> ZnodeStat:
        """The stat of our write if a retried attempt finds that the first one succeeded; else re-raise."""
        try:
            data, stat = retry(self.zk.get, path)
            if json.loads(data).get("write_id") == write_id:
                return stat
        except (NoNodeError, ValueError, AttributeError):
            pass
        raise BadVersionError(f"high-water mark {path} was written by another holder")

    def _renew(self) -> None:
        lease = self._lease
        if lease is None:
            return
        target = max(wall_us(self.skew_us), self._last) + self.reservation_us
        renewed = self._persist(lease, target, CALL_DEADLINE_S)
        with self._lock:
            if self._lease is lease:
                self._lease = renewed
