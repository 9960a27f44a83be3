"""DNS hand-off: move an app's DNS name from N1 to N2, and back if N2 does not hold up.

Providers (:class:`Route53Provider` through boto3, :class:`Rfc2136Provider` through
dnspython for BIND) sit behind one interface, :class:`DnsProvider`; :mod:`cutover` drives
the steps (save, lower-ttl, switch, wait-in-sync, verify, rollback) on any of them and
keeps a :class:`Handoff` timeline.

This package must never import anything of nxnw's own (endpoints, keys and credentials are
passed in), and never change a DNS record before it has saved what was there.
"""

from dns_handoff.cutover import (
    DEFAULT_STEPS,
    N1_SET_ID,
    N2_SET_ID,
    BudgetVerdict,
    ErrorBudgetCheck,
    ErrorBudgetExceeded,
    Handoff,
    RollbackConflict,
    Step,
    VerifyFailed,
    lower_ttl,
    rollback,
    switch,
    verify,
    wait_in_sync,
)
from dns_handoff.provider import (
    ChangeId,
    DnsError,
    DnsProvider,
    NotInSync,
    RecordSet,
    RecordSetConflict,
    WeightsUnsupported,
)
from dns_handoff.resolve import ResolveError, answer
from dns_handoff.rfc2136 import Rfc2136Provider
from dns_handoff.route53 import NO_CHANGE, Route53Provider

__all__ = [
    "DEFAULT_STEPS", "N1_SET_ID", "N2_SET_ID", "NO_CHANGE",
    "BudgetVerdict", "ChangeId", "DnsError", "DnsProvider", "ErrorBudgetCheck", "ErrorBudgetExceeded",
    "Handoff", "NotInSync", "RecordSet", "RecordSetConflict", "ResolveError", "RollbackConflict",
    "Rfc2136Provider", "Route53Provider", "Step", "VerifyFailed", "WeightsUnsupported",
    "answer", "lower_ttl", "rollback", "switch", "verify", "wait_in_sync",
]
