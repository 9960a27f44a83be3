"""N2's error budget during a DNS switch: the share of 5xx answers N2's endpoints give.

The DNS hand-off holds each step until this check says the budget holds, and rolls the
records back when it does not. It reads the proxies' own Prometheus counters
(``nxnw_http_requests_total``) from each N2 endpoint's ``/metrics`` and judges the
requests made since the previous check, so a burst of errors before the switch does not
count against it. An endpoint that does not answer fails the budget: an unmeasured N2 is
not a healthy one.
"""

from __future__ import annotations

import ssl
import time
import urllib.request
from collections.abc import Sequence

from dns_handoff.cutover import BudgetVerdict
from nxnw.proxy_watch import parse_metrics
from proxy.tls import client_context


def _counts(endpoint: str, timeout: float, context: ssl.SSLContext | None) -> tuple[float, float]:
    """(all requests, 5xx requests) served by one proxy so far."""
    with urllib.request.urlopen(f"{endpoint.rstrip('/')}/metrics", timeout=timeout, context=context) as resp:
        sample = parse_metrics(resp.read().decode(), time.time())
    return sample.requests, sample.errors


class N2ErrorBudget:
    """A callable for ``Handoff.switch(error_budget_check=…)``."""

    def __init__(self, endpoints: Sequence[str], max_error_rate: float, timeout: float = 2.0,
                 ca: str | None = None) -> None:
        """``ca``: PEM CA of https:// endpoints (the plan's ``n2.proxy_ca``; default the system's)."""
        self.endpoints = list(endpoints)
        self._tls = client_context(ca) if ca else None
        self.max_error_rate = max_error_rate
        self.timeout = timeout
        self._last: dict[str, tuple[float, float]] = {}

    def baseline(self) -> None:
        """Start counting from now."""
        for endpoint in self.endpoints:
            self._last[endpoint] = _counts(endpoint, self.timeout, self._tls)

    def __call__(self) -> BudgetVerdict:
        if not self.endpoints:
            return BudgetVerdict(True, "no N2 endpoints listed in the plan; budget not measured")
        total = errors = 0.0
        for endpoint in self.endpoints:
            try:
                now = _counts(endpoint, self.timeout, self._tls)
            except OSError as exc:
                return BudgetVerdict(False, f"N2 endpoint {endpoint} did not answer: {exc}")
            before = self._last.get(endpoint, (0.0, 0.0))
            self._last[endpoint] = now
            total += now[0] - before[0]
            errors += now[1] - before[1]
        rate = errors / total if total else 0.0
        if rate > self.max_error_rate:
            return BudgetVerdict(False, f"N2 answered {errors:.0f} of {total:.0f} requests with 5xx "
                                        f"({rate:.1%} > budget {self.max_error_rate:.1%})")
        return BudgetVerdict(True, f"{errors:.0f} of {total:.0f} requests failed on N2 ({rate:.1%})")
