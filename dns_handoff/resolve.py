"""Asking a real DNS server what it answers: the hand-off's only source of truth about DNS.

This module is responsible for turning ``"host:port"`` into an address and for one plain
query (UDP, retried over TCP when the answer is truncated) whose answer values are
returned in presentation form. ``cutover.verify`` uses it to check what clients are
actually told, and the RFC 2136 provider uses :func:`parse_server` for its servers.

It must never use the host's own resolver configuration (``/etc/resolv.conf``): the
server asked is always the one passed in, so a check can never pass because some other
resolver happened to answer.
"""

from __future__ import annotations

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype


class ResolveError(RuntimeError):
    """The server did not answer, or answered with an error; the message names it and the query."""


def parse_server(server: str) -> tuple[str, int]:
    """``"127.0.0.1:15353"`` -> ``("127.0.0.1", 15353)``; port 53 when none is given."""
    host, sep, port = server.rpartition(":")
    if not sep or not host or host.count(":") and not host.startswith("["):
        return server.strip("[]"), 53  # no port, or a bare IPv6 address
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"DNS server {server!r}: port {port!r} is not a number") from None


def answer(server: str, name: str, rtype: str, timeout: float = 2.0, recursion: bool = True) -> list[str]:
    """The values ``server`` answers for ``name``/``rtype`` (sorted; empty for NXDOMAIN/no data).

    CNAMEs in the answer are followed as far as the server answered them: only records of
    ``rtype`` are returned.
    """
    host, port = parse_server(server)
    query = dns.message.make_query(name, rtype)
    if not recursion:
        query.flags &= ~dns.flags.RD
    try:
        reply, _ = dns.query.udp_with_fallback(query, host, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        raise ResolveError(f"{server} did not answer {name} {rtype}: {type(exc).__name__}: {exc}") from exc
    rcode = reply.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return []
    if rcode != dns.rcode.NOERROR:
        raise ResolveError(f"{server} answered {dns.rcode.to_text(rcode)} to {name} {rtype}")
    rdtype = dns.rdatatype.from_text(rtype)
    return sorted(rd.to_text() for rrset in reply.answer if rrset.rdtype == rdtype for rd in rrset)
