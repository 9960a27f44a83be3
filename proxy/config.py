"""A proxy instance's settings, validated before anything is opened.

Secrets (the admin token, the ZooKeeper digest password) are ``datastore.secret.Secret``
fields: named by environment variable or file, masked in every repr and dump. TLS files
are checked here (readable, the key matching the certificate), so a bad setting is an
error before the proxy opens anything.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from datastore.registry import ENGINES
from datastore.secret import Secret
from proxy.cache.pool import parse_servers
from proxy.tls import server_context
from sync.writer_clock import DEFAULT_MAX_OFFSET_MS
from sync.zk_client import ZooKeeperSecurity


class ProxyConfig(BaseModel):
    """One instance; several instances on one host differ in ``instance`` and ports.

    The clock's writer id is allocated through N1's ZooKeeper (``sync.writer_clock``), so no
    instance is given one by hand.
    """

    model_config = {"extra": "forbid"}

    instance: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    n1_engine: str
    n2_engine: str
    n1_zookeeper: str = Field(description="host:port list of N1's ZooKeeper (mode, journal, locks)")
    n1_zookeeper_security: ZooKeeperSecurity | None = Field(default=None, description="digest auth / TLS to N1's "
                                                            "ZooKeeper, as the plan's [n1.zookeeper_security]")
    n1_memcached: str = Field(description="N1's memcached: host:port[:weight][,host:port[:weight]…], keys by ketama")
    n2_memcached: str = Field(description="N2's memcached, as n1_memcached (its own pool, any size)")
    memcache_fail_limit: int = Field(default=3, ge=1, le=1000,
                                     description="consecutive failures after which a memcached server is marked down")
    memcache_retry_after: float = Field(default=2.0, gt=0, le=600,
                                        description="seconds a memcached server stays marked down before a retry")
    enable_flush_cmd: bool = Field(default=False, description="serve flush_all on the memcache port (mcrouter's "
                                                              "--enable-flush-cmd); refused otherwise")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    memcache_port: int | None = Field(default=None, ge=0, le=65535)
    shadow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    admin_token: Secret = Field(default=SecretStr(""), description="bearer token of /admin/*; empty refuses them all")
    tls_cert: str | None = Field(default=None, description="PEM certificate: HTTP and memcache listeners speak TLS")
    tls_key: str | None = Field(default=None, description="PEM key of tls_cert")
    tls_client_ca: str | None = Field(default=None, description="PEM CA: clients must present a certificate it "
                                                               "signed (mutual TLS)")
    lock_timeout: float = Field(default=10.0, gt=0)
    max_clock_offset_ms: float = Field(default=DEFAULT_MAX_OFFSET_MS, gt=0,
                                       description="writes are refused while this host's clock may be further "
                                                   "than this from ZooKeeper's")
    journal_bound: int = Field(default=10_000, ge=1,
                               description="entries (one per key) each repair journal holds before new keys are "
                                           "recorded as range marks, resolved by a range verify + repair")
    session_timeout: float = Field(default=6.0, ge=2.0, le=60.0,
                                   description="N1 ZooKeeper session timeout (s); the instance's lease is half of it")

    @field_validator("n1_engine", "n2_engine")
    @classmethod
    def known_engine(cls, url: str) -> str:
        scheme = url.split(":", 1)[0]
        if scheme not in ENGINES:
            raise ValueError(f"engine {scheme!r} is not one of: {', '.join(sorted(ENGINES))}")
        return url

    @field_validator("n1_memcached", "n2_memcached")
    @classmethod
    def memcached_pool(cls, spec: str) -> str:
        parse_servers(spec)
        return spec

    @model_validator(mode="after")
    def tls_files(self) -> "ProxyConfig":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key")
        if self.tls_cert is not None and self.tls_key is not None:
            server_context(self.tls_cert, self.tls_key, self.tls_client_ca)  # raises naming the file and why
        return self
