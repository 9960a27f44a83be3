"""The one place that builds nxnw's ZooKeeper clients, from a deployment's security settings.

A plan's ``[n1.zookeeper_security]`` (and the proxy's ``n1_zookeeper_security``) says how
nxnw talks to an ensemble: ``ZooKeeperSecurity``. ``zk_client`` turns it into a
``KazooClient``; the proxy, the commands (``nxnw.zk``) and the tree mirror all call it, so
every session of nxnw authenticates the same way and creates znodes with the same ACL.

Digest authentication: the client adds ``digest user:password`` to its session, and every
znode *it creates* carries an ACL granting all permissions to that identity only (kazoo's
``default_acl``). Without the ACL the digest would protect nothing: ZooKeeper's default ACL
is open to the world. So a session without the digest, or with another password, gets
``NoAuthError`` on nxnw's znodes.

Not guaranteed: znodes created before digest authentication was turned on keep their
open ACL (nxnw never rewrites ACLs of nodes it did not create under this setting). The tree
mirror copies each znode's ACL from N1 to N2 as it is, so a digest ACL made on N1 names
N1's identity on N2 too: give both deployments the same digest identity, or grant it on
N2. Session loss is kazoo's: on reconnect the client sends its digest again by itself.

TLS (``tls = true``): the client verifies the server's certificate against ``tls_ca`` (the
system's CAs without it), hostname included (the host as the connection string names it:
an IP address needs an IP subject alternative name), and presents ``tls_cert``/``tls_key`` when the ensemble asks for
client certificates. The ensemble must listen with TLS (``secureClientPort``, Netty).

This module never logs or formats the password; ``ZooKeeperSecurity``'s repr masks it.
"""

from __future__ import annotations

import ssl
from typing import Any

from kazoo.client import KazooClient
from kazoo.security import make_digest_acl
from pydantic import BaseModel, Field, model_validator

from datastore.secret import Secret


def _check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """Load the files as kazoo will, so that a bad one is a settings error naming it, not a
    connection that times out on every handshake."""
    context = ssl.create_default_context()
    field, path = "tls_ca", ca
    try:
        if ca is not None:
            context.load_verify_locations(cafile=ca)
        if cert is not None and key is not None:
            field, path = "tls_cert", f"{cert} with tls_key {key}"
            context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # before OSError: it is one
        reason = "the key does not match the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else \
            f"not PEM ({exc.reason or exc})"
        raise ValueError(f"{field}: {path}: {reason}") from None
    except OSError as exc:
        raise ValueError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


class ZooKeeperSecurity(BaseModel):
    """How nxnw authenticates to one ZooKeeper ensemble; every field optional."""

    model_config = {"extra": "forbid", "frozen": True}

    digest_user: str | None = Field(default=None, pattern=r"^[^:\s]{1,128}$",
                                    description="digest identity nxnw's sessions add; its znodes are readable by it alone")
    digest_password: Secret | None = Field(default=None, description="the digest password: {env = NAME} or {file = PATH}")
    tls: bool = Field(default=False, description="connect with TLS (the ensemble's secureClientPort)")
    tls_ca: str | None = Field(default=None, description="PEM file of the CA that signed the servers' certificates")
    tls_cert: str | None = Field(default=None, description="PEM client certificate, when the ensemble asks for one")
    tls_key: str | None = Field(default=None, description="PEM key of tls_cert")

    @model_validator(mode="after")
    def consistent(self) -> "ZooKeeperSecurity":
        if (self.digest_user is None) != (self.digest_password is None):
            raise ValueError("digest_user and digest_password go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if not self.tls and (self.tls_ca or self.tls_cert):
            raise ValueError("tls_ca, tls_cert and tls_key need tls = true")
        _check_tls_files(self.tls_ca, self.tls_cert, self.tls_key)
        return self

    def kazoo_arguments(self) -> dict[str, Any]:
        """KazooClient's keyword arguments for these settings (the password inside: pass them
        straight to the client, never log them)."""
        arguments: dict[str, Any] = {}
        if self.digest_user is not None and self.digest_password is not None:
            password = self.digest_password.get_secret_value()
            arguments["auth_data"] = [("digest", f"{self.digest_user}:{password}")]
            arguments["default_acl"] = [make_digest_acl(self.digest_user, password, all=True)]
        if self.tls:
            arguments.update(use_ssl=True, verify_certs=True, check_hostname=True, ca=self.tls_ca,
                             certfile=self.tls_cert, keyfile=self.tls_key)
        return arguments


def refused_chroot(hosts: str, what: str) -> str:
    """The one line for a session that connected and then got NoAuthError on kazoo's first
    read of its chroot: the digest identity is missing, wrong, or not granted there."""
    return (f"{what} ZooKeeper at {hosts} refused nxnw's session on its chroot (NoAuthError): nxnw must "
            "authenticate as a digest identity the chroot's ACL grants (zookeeper_security)")


def zk_client(hosts: str, security: ZooKeeperSecurity | None = None, *, timeout: float,
              **extra: Any) -> KazooClient:
    """A new, not yet started client of ``hosts`` with ``security``'s authentication and ACL.

    ``extra`` is passed to KazooClient as it is (a logger, an explicit ``auth_data`` of a
    caller that brings its own identity).
    """
    arguments = security.kazoo_arguments() if security is not None else {}
    arguments.update({k: v for k, v in extra.items() if v is not None})
    return KazooClient(hosts=hosts, timeout=timeout, **arguments)

