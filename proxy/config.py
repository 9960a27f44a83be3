"""A proxy instance's settings, validated before anything is opened."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from datastore.clock import MAX_NODES
from datastore.registry import ENGINES


class ProxyConfig(BaseModel):
    """One instance; several instances on one host differ in ``instance``, ``node_id`` and ports."""

    model_config = {"extra": "forbid"}

    instance: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    node_id: int = Field(ge=0, lt=MAX_NODES, description="the clock's writer id, unique per instance")
    n1_engine: str
    n2_engine: str
    n1_zookeeper: str = Field(description="host:port list of N1's ZooKeeper (mode, journal, locks)")
    n2_zookeeper: str = Field(description="host:port list of N2's ZooKeeper (locks in cow mode)")
    n1_memcached: str
    n2_memcached: str
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    memcache_port: int | None = Field(default=None, ge=0, le=65535)
    shadow_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    admin_token: str = ""
    lock_timeout: float = Field(default=10.0, gt=0)
    session_timeout: float = Field(default=6.0, ge=2.0, le=60.0,
                                   description="N1 ZooKeeper session timeout (s); the instance's lease is half of it")

    @field_validator("n1_engine", "n2_engine")
    @classmethod
    def known_engine(cls, url: str) -> str:
        scheme = url.split(":", 1)[0]
        if scheme not in ENGINES:
            raise ValueError(f"engine {scheme!r} is not one of: {', '.join(sorted(ENGINES))}")
        return url
