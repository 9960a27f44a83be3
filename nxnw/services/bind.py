"""BIND 9 on loopback, serving the test zone that DNS hand-off switches from N1 to N2.

This module is responsible for running our own ``named`` (from the Debian package) with a
config, zone and journal under its service directory: one primary zone
(:data:`endpoints.BIND_ZONE`) that accepts RFC 2136 updates signed with the test TSIG key
and nothing else, on :data:`endpoints.BIND_DNS`, IPv4 loopback only, no recursion, no
rndc. Every start begins from the same zone: ``app.nxnw.test.`` points at N1
(127.0.0.11) with a 60 s TTL, and the journal of earlier updates is removed.

It must never use or change ``/etc/bind``'s config (named still reads the package's
built-in trust anchors from there; validation is off, so they are unused), never touch a
system ``named`` the Debian package may have started on port 53, and never accept an
unsigned update.
"""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from nxnw.services import endpoints
from nxnw.services.base import Context, Service, apt_install

NAMED = "/usr/sbin/named"
#: The address ``app.<zone>`` has at every start: N1's. A test switches it to N2's.
APP_N1_ADDRESS = "127.0.0.11"
APP_TTL = 60


class BindService(Service):
    """named for the hand-off zone on 127.0.0.1:15353 (UDP and TCP)."""

    name = "bind"
    port = endpoints.BIND_DNS
    start_timeout = 30.0

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.conf_path = self.dir / "named.conf"
        self.zone_path = self.dir / f"{endpoints.BIND_ZONE.rstrip('.')}.zone"
        self.key_name = endpoints.BIND_TSIG_NAME.rstrip(".")

    def install(self) -> None:
        apt_install(["bind9", "bind9-utils", "bind9-dnsutils"], [NAMED], "the DNS server of the RFC 2136 hand-off")

    def prepare(self) -> None:
        zone = endpoints.BIND_ZONE
        self.conf_path.write_text(
            f"""options {{
    directory "{self.dir}";
    pid-file "{self.dir}/named.pid";
    session-keyfile "{self.dir}/session.key";
    managed-keys-directory "{self.dir}";
    listen-on port {self.port} {{ {endpoints.HOST}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
}};

controls {{ }};

key "{self.key_name}" {{
    algorithm {endpoints.BIND_TSIG_ALGORITHM};
    secret "{endpoints.BIND_TSIG_SECRET}";
}};

zone "{zone.rstrip('.')}" {{
    type primary;
    file "{self.zone_path}";
    allow-update {{ key "{self.key_name}"; }};
    allow-transfer {{ key "{self.key_name}"; {endpoints.HOST}; }};
}};
"""
        )
        self.zone_path.write_text(
            f"""$ORIGIN {zone}
$TTL 60
@    IN SOA ns.{zone} hostmaster.{zone} ( 1 60 30 3600 5 )
@    IN NS  ns.{zone}
ns   IN A   {endpoints.HOST}
app.{zone} {APP_TTL} IN A {APP_N1_ADDRESS}
"""
        )
        # The journal holds the updates of the previous run; a fresh zone file with an old
        # journal beside it would have named replay (or refuse) updates the tests never made.
        for leftover in (self.zone_path.with_name(self.zone_path.name + ".jnl"), self.dir / "named.pid"):
            leftover.unlink(missing_ok=True)

    def command(self) -> list[str]:
        # -g: foreground, log to stderr (our log file); -4: no IPv6 sockets at all. Without
        # -u, named started as root stays root and can write its directory and journal.
        return [NAMED, "-g", "-4", "-c", str(self.conf_path)]

    def probe(self) -> None:
        query = dns.message.make_query(endpoints.BIND_ZONE, dns.rdatatype.SOA)
        reply = dns.query.udp(query, endpoints.HOST, port=self.port, timeout=1.0)
        if reply.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"SOA query for {endpoints.BIND_ZONE} answered {dns.rcode.to_text(reply.rcode())}")
        if not any(rrset.rdtype == dns.rdatatype.SOA for rrset in reply.answer):
            raise RuntimeError(f"SOA query for {endpoints.BIND_ZONE} returned no SOA: {reply.answer}")
