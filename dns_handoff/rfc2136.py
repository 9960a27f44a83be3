"""RFC 2136 dynamic updates, signed with TSIG, to a zone's primary (BIND and its peers).

This module is responsible for reading record sets from the primary, changing them with
one signed UPDATE message per change, and knowing when a change is everywhere: a change
id is the zone's SOA serial right after our update, and the change is in sync when every
authoritative server given answers an SOA query with a serial at least that large (RFC
1982 serial arithmetic, so a serial that wrapped past 2^32 still compares right).

Compare-and-swap: ``replace`` and ``delete`` carry value-dependent prerequisites
(RFC 2136 §2.4.2: "RRset exists, value dependent", or "RRset does not exist"), so the
primary applies the update only if the rrset is still exactly what we read, and answers
NXRRSET otherwise (:class:`RecordSetConflict`). Prerequisites do not compare TTLs: a
concurrent change of the TTL alone is not detected.

Weighted routing: refused (:class:`WeightsUnsupported`). An RFC 2136 zone has no weights.
A multi-value rrset where one address in four is N2's does not send 25 % of clients to
N2: stub resolvers sort or pick addresses by their own rules (RFC 6724 ordering, first
address, happy eyeballs) and caching resolvers rotate or fix the order, so the share N2
gets is neither controlled nor known, and an error-budget verdict taken at that share
would be judged against a number we made up. A zone on BIND switches at once, after the
TTL has been lowered.

It must never: send an unsigned update, change a name outside its zone, report a change
as in sync on the word of fewer than all the servers given, or swallow a refusal (every
error names the zone, the server and the reason — the rcode, or the TSIG error).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from dns_handoff.provider import (
    ChangeId,
    DnsError,
    DnsProvider,
    NotInSync,
    RecordSet,
    RecordSetConflict,
    WeightsUnsupported,
    absolute,
    describe,
)
from dns_handoff.resolve import parse_server

#: What each refusal rcode means for an update, in the words an operator needs.
_RCODE_REASONS = {
    dns.rcode.REFUSED: "the server refused the update (is the key allowed to update this zone?)",
    dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or rejected the TSIG signature",
    dns.rcode.NOTZONE: "a name in the update is outside the zone",
    dns.rcode.NXRRSET: "the record set is no longer what was read (a prerequisite failed)",
    dns.rcode.YXRRSET: "a record set exists that was expected to be absent (a prerequisite failed)",
    dns.rcode.SERVFAIL: "the server failed to apply the update (see its log)",
}

_TSIG_REASONS: dict[type[Exception], str] = {
    dns.tsig.PeerBadKey: "BADKEY: the server does not know the TSIG key name",
    dns.tsig.PeerBadSignature: "BADSIG: the TSIG secret does not match the server's",
    dns.tsig.PeerBadTime: "BADTIME: the clocks of this host and the server differ too much",
    dns.tsig.PeerBadTruncation: "BADTRUNC: the server rejected the truncated TSIG MAC",
}


def serial_at_least(serial: int, target: int) -> bool:
    """RFC 1982: is ``serial`` equal to or after ``target`` in 32-bit serial number arithmetic."""
    return (serial - target) % (1 << 32) < (1 << 31)


class Rfc2136Provider(DnsProvider):
    """One zone on a primary that takes TSIG-signed dynamic updates.

    ``authoritative`` lists every server (``host:port``) that answers for the zone —
    the primary and its secondaries — and defaults to the primary alone.
    """

    supports_weights = False

    def __init__(
        self,
        zone: str,
        primary: str,
        tsig_name: str,
        tsig_secret: str,
        tsig_algorithm: str = "hmac-sha256",
        authoritative: Sequence[str] | None = None,
        timeout: float = 5.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.zone = absolute(zone)
        self.primary = primary
        self._host, self._port = parse_server(primary)
        self.authoritative = list(authoritative) if authoritative else [primary]
        for server in self.authoritative:
            parse_server(server)  # a malformed server fails here, not at the first wait
        try:
            base64.b64decode(tsig_secret, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"zone {self.zone}: TSIG secret for key {tsig_name!r} is not base64: {exc}") from None
        self._keyname = dns.name.from_text(tsig_name)
        self._keyring = dns.tsigkeyring.from_text({tsig_name: tsig_secret})
        self._algorithm = dns.name.from_text(tsig_algorithm)
        self.timeout = timeout
        self.poll_interval = poll_interval

    # --- reading ---------------------------------------------------------------------

    def records(self, name: str, rtype: str) -> list[RecordSet]:
        """The rrset as the primary holds it (asked directly: its TTL is the stored one)."""
        name = self._in_zone(name)
        query = dns.message.make_query(name, rtype)
        query.flags &= ~dns.flags.RD
        reply = self._ask(query, self._host, self._port, f"query {name} {rtype}")
        rcode = reply.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return []
        if rcode != dns.rcode.NOERROR:
            raise DnsError(f"zone {self.zone}: {self.primary} answered {dns.rcode.to_text(rcode)} to {name} {rtype}")
        rdtype = dns.rdatatype.from_text(rtype)
        for rrset in reply.answer:
            if rrset.rdtype == rdtype and rrset.name == dns.name.from_text(name):
                return [RecordSet(name, rtype, rrset.ttl, tuple(rd.to_text() for rd in rrset))]
        return []

    def serial(self, server: str | None = None) -> int:
        """The zone's SOA serial as ``server`` (the primary by default) answers it."""
        host, port = parse_server(server) if server else (self._host, self._port)
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        query.flags &= ~dns.flags.RD
        reply = self._ask(query, host, port, f"SOA query for {self.zone}")
        if reply.rcode() != dns.rcode.NOERROR:
            raise DnsError(f"zone {self.zone}: {host}:{port} answered {dns.rcode.to_text(reply.rcode())} to its SOA query")
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        raise DnsError(f"zone {self.zone}: {host}:{port} is not authoritative for it (no SOA in the answer)")

    # --- changing --------------------------------------------------------------------

    def upsert(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        update = self._update()
        for rs in record_sets:
            self._plain(rs)
            update.replace(self._in_zone(rs.name), self._rdataset(rs))
        return self._send(update, f"upsert {describe(record_sets)}")

    def delete(self, record_sets: Sequence[RecordSet]) -> ChangeId:
        update = self._update()
        for rs in record_sets:
            self._plain(rs)
            update.present(self._in_zone(rs.name), self._prerequisite(rs))
            update.delete(self._in_zone(rs.name), rs.rtype)
        return self._send(update, f"delete {describe(record_sets)}")

    def replace(self, old: Sequence[RecordSet], new: Sequence[RecordSet]) -> ChangeId:
        update = self._update()
        old_by_key = {(rs.name, rs.rtype): rs for rs in map(self._plain, old)}
        new_by_key = {(rs.name, rs.rtype): rs for rs in map(self._plain, new)}
        for (name, rtype), rs in old_by_key.items():
            update.present(self._in_zone(name), self._prerequisite(rs))
        for name, rtype in new_by_key.keys() - old_by_key.keys():
            update.absent(self._in_zone(name), rtype)
        for (name, rtype) in old_by_key.keys() | new_by_key.keys():
            update.delete(self._in_zone(name), rtype)
            if (name, rtype) in new_by_key:
                update.add(self._in_zone(name), self._rdataset(new_by_key[(name, rtype)]))
        return self._send(update, f"replace {describe(old)} with {describe(new)}")

    def set_weights(self, name: str, rtype: str, weights: Mapping[str, int]) -> ChangeId:
        raise WeightsUnsupported(
            f"zone {self.zone}: RFC 2136 has no weighted routing, so {absolute(name)} {rtype} cannot be "
            f"given weights {dict(weights)}; switch it at once (mode='at_once') after lowering its TTL"
        )

    # --- in sync ---------------------------------------------------------------------

    def wait_in_sync(self, change: ChangeId, timeout: float) -> float:
        """Poll every authoritative server's SOA until each serial is ≥ the change's."""
        zone, target = self._parse_change(change)
        started = time.monotonic()
        deadline = started + timeout
        pending = list(self.authoritative)
        seen: dict[str, str] = {}
        while True:
            still = []
            for server in pending:
                try:
                    serial = self.serial(server)
                except DnsError as exc:
                    seen[server] = str(exc)
                    still.append(server)
                    continue
                seen[server] = f"serial {serial}"
                if not serial_at_least(serial, target):
                    still.append(server)
            pending = still
            if not pending:
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                lag = "; ".join(f"{s}: {seen.get(s, 'no answer')}" for s in pending)
                raise NotInSync(f"zone {zone}: change {change} (serial {target}) not on every server after {timeout:g}s: {lag}")
            time.sleep(min(self.poll_interval, max(0.0, deadline - time.monotonic())))

    # --- internals -------------------------------------------------------------------

    def _in_zone(self, name: str) -> str:
        name = absolute(name)
        if not dns.name.from_text(name).is_subdomain(dns.name.from_text(self.zone)):
            raise DnsError(f"zone {self.zone}: name {name} is outside the zone; refusing to touch it")
        return name

    def _plain(self, rs: RecordSet) -> RecordSet:
        if rs.weighted:
            raise WeightsUnsupported(
                f"zone {self.zone}: RFC 2136 has no weighted routing; record set {describe([rs])} "
                "carries a set id and weight"
            )
        return rs

    def _rdataset(self, rs: RecordSet, ttl: int | None = None) -> dns.rdataset.Rdataset:
        try:
            return dns.rdataset.from_text_list(dns.rdataclass.IN, rs.rtype, rs.ttl if ttl is None else ttl, list(rs.values))
        except dns.exception.DNSException as exc:
            raise ValueError(f"record set {describe([rs])}: a value is not valid {rs.rtype} rdata: {exc}") from None

    def _prerequisite(self, rs: RecordSet) -> dns.rdataset.Rdataset:
        """The rrset as a value-dependent prerequisite: TTL 0 (RFC 2136 §2.4.2), or the server answers FORMERR."""
        return self._rdataset(rs, ttl=0)

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(
            self.zone, keyring=self._keyring, keyname=self._keyname, keyalgorithm=self._algorithm
        )

    def _send(self, update: dns.update.UpdateMessage, what: str) -> ChangeId:
        """Send one signed update to the primary; return the serial it produced as the change id."""
        reply = self._ask(update, self._host, self._port, what)
        rcode = reply.rcode()
        if rcode in (dns.rcode.NXRRSET, dns.rcode.YXRRSET):
            raise RecordSetConflict(
                f"zone {self.zone}: {self.primary} refused to {what}: {dns.rcode.to_text(rcode)}, {_RCODE_REASONS[rcode]}"
            )
        if rcode != dns.rcode.NOERROR:
            reason = _RCODE_REASONS.get(rcode, "see the server's log")
            raise DnsError(f"zone {self.zone}: {self.primary} refused to {what}: {dns.rcode.to_text(rcode)}, {reason}")
        # The serial read right after our update is ours or a later one; waiting for it
        # therefore also waits for ours.
        return ChangeId(f"{self.zone}@{self.serial()}")

    def _ask(self, message: dns.message.Message, host: str, port: int, what: str) -> dns.message.Message:
        """TCP, so that an update is never half-sent or replayed, and answers are never truncated."""
        try:
            return dns.query.tcp(message, host, port=port, timeout=self.timeout)
        except dns.tsig.PeerError as exc:
            reason = _TSIG_REASONS.get(type(exc), f"TSIG error: {exc}")
            raise DnsError(
                f"zone {self.zone}: {host}:{port} rejected the request signed with key {self._keyname} "
                f"({what}): {reason}"
            ) from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsError(f"zone {self.zone}: {host}:{port} did not answer ({what}): {type(exc).__name__}: {exc}") from exc

    def _parse_change(self, change: ChangeId) -> tuple[str, int]:
        zone, sep, serial = change.rpartition("@")
        if not sep or absolute(zone) != self.zone or not serial.isdigit():
            raise ValueError(f"change id {change!r} is not one of zone {self.zone} (expected '{self.zone}@<serial>')")
        return zone, int(serial)
