"""What the operator watches of the proxy fleet: each instance's load, errors and latency.

``ProxyWatch`` scrapes every proxy endpoint of a plan (N1's and N2's) once per interval
from the proxies' own Prometheus ``/metrics`` and keeps a bounded time series for the
status page: per instance, requests/s, 5xx/s and the p99 latency of the requests made in
the interval; for the fleet, the repair journals' depth and the share of requests that N2's
endpoints served (during the DNS hand-off, the share of traffic DNS has moved).

Rates come from the difference of two scrapes of the same process's counters, so a
restarted proxy (counters back to zero) starts a new series instead of showing a negative
rate. The p99 is interpolated inside the histogram bucket that holds it, as Prometheus'
``histogram_quantile`` does.

Must never: change a proxy (it only reads ``/metrics``), let one endpoint that does not
answer stop the others being scraped (it is shown as down), or grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from proxy.tls import client_context

#: Samples kept per series: ten minutes at the default one-second interval.
HISTORY = 600


@dataclass(frozen=True)
class ProxySample:
    """One scrape of one proxy: cumulative counters, as the process reports them."""

    at: float
    requests: float
    errors: float
    #: cumulative latency histogram: (upper bound in seconds, count), sorted, +Inf last
    buckets: tuple[tuple[float, float], ...]
    #: repair journal depth by target ("n1", "n2") as this instance last measured it
    journal: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str, at: float) -> ProxySample:
    """The counters the status page and the DNS error budget need, from ``/metrics`` text."""
    requests = errors = 0.0
    buckets: dict[float, float] = {}
    journal: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nxnw_http_requests_total":
                requests += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    errors += sample.value
            elif sample.name == "nxnw_http_request_seconds_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == "nxnw_repair_journal_depth":
                target = sample.labels.get("target", "?")
                journal[target] = max(journal.get(target, 0.0), sample.value)
    return ProxySample(at, requests, errors, tuple(sorted(buckets.items())), journal)


def quantile(q: float, before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile (seconds) of the observations made between two cumulative histograms."""
    earlier = dict(before)
    deltas = [(bound, count - earlier.get(bound, 0.0)) for bound, count in after]
    if not deltas or deltas[-1][1] <= 0:
        return None
    rank = q * deltas[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in deltas:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return None


@dataclass(frozen=True)
class Point:
    """What one instance did between two scrapes."""

    at: float
    requests_per_s: float
    errors_per_s: float
    p99_ms: float | None
    requests: float


def interval(before: ProxySample, after: ProxySample) -> Point | None:
    """The rates between two scrapes, or None when the counters went back (a restart)."""
    seconds = after.at - before.at
    if seconds <= 0 or after.requests < before.requests:
        return None
    p99 = quantile(0.99, before.buckets, after.buckets)
    return Point(after.at, (after.requests - before.requests) / seconds, (after.errors - before.errors) / seconds,
                 None if p99 is None else p99 * 1000, after.requests - before.requests)


@dataclass
class Instance:
    """One proxy endpoint and its series."""

    url: str
    side: str
    #: verifies an https:// proxy against the CA the plan names for its side (None: system CAs)
    ssl_context: ssl.SSLContext | None = None
    up: bool = False
    error: str = ""
    last: ProxySample | None = None
    series: deque[Point] = field(default_factory=lambda: deque(maxlen=HISTORY))


class ProxyWatch:
    """Scrapes a fleet of proxies in the background; ``snapshot()`` is what the page draws."""

    def __init__(self, n1: Iterable[str], n2: Iterable[str], *, interval: float = 1.0, timeout: float = 2.0,
                 n1_ca: str | None = None, n2_ca: str | None = None) -> None:
        """``n1_ca``/``n2_ca``: PEM CA of each side's https:// proxies (the plan's ``proxy_ca``)."""
        n1_tls = client_context(n1_ca) if n1_ca else None
        n2_tls = client_context(n2_ca) if n2_ca else None
        self.instances = ([Instance(url.rstrip("/"), "n1", n1_tls) for url in n1]
                          + [Instance(url.rstrip("/"), "n2", n2_tls) for url in n2])
        self.interval = interval
        self.timeout = timeout
        self.journal: deque[tuple[float, float, float]] = deque(maxlen=HISTORY)
        self.n2_share: deque[tuple[float, float]] = deque(maxlen=HISTORY)
        self._task: asyncio.Task | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._task is None and self.instances:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._task = asyncio.create_task(self._run(), name="proxy-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _run(self) -> None:
        while True:
            await self.scrape()
            await asyncio.sleep(self.interval)

    async def _scrape_one(self, instance: Instance) -> Point | None:
        assert self._http is not None
        try:
            async with self._http.get(f"{instance.url}/metrics", ssl=instance.ssl_context or True) as resp:
                resp.raise_for_status()
                sample = parse_metrics(await resp.text(), time.time())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            instance.up, instance.error = False, f"{type(exc).__name__}: {exc}"[:200]
            return None
        instance.up, instance.error = True, ""
        point = None if instance.last is None else interval(instance.last, sample)
        instance.last = sample
        if point is not None:
            instance.series.append(point)
        return point

    async def scrape(self) -> None:
        """One round over every endpoint, in parallel."""
        points = await asyncio.gather(*(self._scrape_one(i) for i in self.instances))
        now = time.time()
        depths = [i.last.journal for i in self.instances if i.up and i.last is not None]
        self.journal.append((now, max((d.get("n1", 0.0) for d in depths), default=0.0),
                             max((d.get("n2", 0.0) for d in depths), default=0.0)))
        served = {"n1": 0.0, "n2": 0.0}
        for instance, point in zip(self.instances, points):
            if point is not None:
                served[instance.side] += point.requests
        total = served["n1"] + served["n2"]
        if total:
            self.n2_share.append((now, served["n2"] / total))

    def snapshot(self) -> dict[str, object]:
        """Plain data for ``state.json``: series as lists of [t, value…]."""
        return {
            "instances": [{"url": i.url, "side": i.side, "up": i.up, "error": i.error,
                           "series": [[p.at, round(p.requests_per_s, 2), round(p.errors_per_s, 3),
                                       None if p.p99_ms is None else round(p.p99_ms, 3)] for p in i.series]}
                          for i in self.instances],
            "journal": [[t, n1, n2] for t, n1, n2 in self.journal],
            "n2_share": [[t, round(share, 4)] for t, share in self.n2_share],
        }
