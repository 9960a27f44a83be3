"""TLS contexts for the proxy's listeners and for the clients that call the proxies.

``server_context`` is what the HTTP site and the memcache listener serve with: the proxy's
certificate and key (PEM files), and, with a client CA, mutual TLS (a client without a
certificate signed by that CA is refused in the handshake). ``client_context`` is what
nxnw's own callers (status page, fleet, control paths) use to reach an ``https://`` proxy:
the server's certificate is verified against the CA the plan names, hostname included.

Every problem with the files — unreadable, not PEM, a key that does not belong to the
certificate — is a ``TlsSettingsError`` (a ``ValueError``) naming the file and the reason,
raised when the settings are read, so a proxy never starts half-configured. It never
formats a key's content.
"""

from __future__ import annotations

import ssl


class TlsSettingsError(ValueError):
    """A certificate, key or CA file cannot be used; the message names it and why."""


def _readable(path: str, what: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TlsSettingsError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``cert``/``key``; with ``client_ca``, clients must
    present a certificate that CA signed."""
    _readable(cert, "certificate")
    _readable(key, "key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else \
            f"not a PEM certificate and key ({exc.reason or exc})"
        raise TlsSettingsError(f"certificate {cert} with key {key}: {reason}") from None
    if client_ca is not None:
        _load_ca(context, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(ca: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server (hostname too) against ``ca``, or the
    system's CAs without one."""
    context = ssl.create_default_context()
    if ca is not None:
        _load_ca(context, ca)
    return context


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    _readable(ca, "CA file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsSettingsError(f"CA file {ca}: not PEM certificates ({exc.reason or exc})") from None
