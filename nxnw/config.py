"""The migration plan: one TOML file, validated before anything is touched.

``load_plan`` turns every problem in the file into one line naming the field and the
reason (pydantic does the checking); ``PlanError`` carries all of them at once, so an
operator fixes a plan in one pass. Reachability (ZooKeeper, engines, the DNS zone) is
checked separately by the orchestrator's preflight, also before any change.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from datastore.model import APP_PATTERN
from datastore.registry import ENGINES
from datastore.secret import Secret
from proxy.cache.pool import parse_servers
from sync import layout
from sync.state import default_key_prefixes
from sync.zk_client import ZooKeeperSecurity

_HOST = r"[A-Za-z0-9_.\-\[\]:]+:\d{1,5}"
HOSTPORT = re.compile(rf"{_HOST}")
#: ZooKeeper connection strings may end in a chroot, as kazoo and ZooKeeper clients accept
ZK_HOSTS = re.compile(rf"{_HOST}(,{_HOST})*(/[A-Za-z0-9_.\-]+)*")


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value
    return check


#: A Dask scheduler address, as ``dask scheduler`` prints it
SCHEDULER = re.compile(rf"(tcp|tls)://{_HOST}")


class BadSchedulerAddress(ValueError, argparse.ArgumentTypeError):
    """Not a Dask scheduler address; argparse shows the message as it is."""


def scheduler_address(value: str) -> str:
    """``value`` if it is a Dask scheduler address (``tcp://host:port``), else BadSchedulerAddress."""
    if not SCHEDULER.fullmatch(value):
        raise BadSchedulerAddress(f"{value!r} is not a Dask scheduler address (tcp://host:port or tls://host:port)")
    return value


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``. A count of workers or ranges
    of 0 is not "none": a copy with no worker waits forever for one."""
    def whole_number(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {number}")
        return number
    return whole_number


HostPort = Annotated[str, AfterValidator(_matching(HOSTPORT, "host:port"))]
ZooKeeperHosts = Annotated[str, AfterValidator(_matching(ZK_HOSTS, "host:port[,host:port…][/chroot]"))]


def memcached_pool(value: str) -> str:
    """``value`` if it names a memcached pool (``h1:p[:weight],h2:p[:weight],…``), else
    ValueError naming the server that is not one; the proxy parses it the same way."""
    parse_servers(value)
    return value


#: a side's memcached: one server or a pool whose keys the proxy spreads by ketama
MemcachedPool = Annotated[str, AfterValidator(memcached_pool)]


class PlanError(ValueError):
    """The plan file is invalid; ``problems`` has one line per problem."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s)\n" + "\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = {"extra": "forbid"}


class Deployment(_Strict):
    """N1 or N2: where its datastore, memcached and ZooKeeper answer."""

    engine: str = Field(description="engine URL: sqlite:///file, cassandra://host:port/keyspace, hbase://host:port/prefix")
    zookeeper: ZooKeeperHosts
    memcached: MemcachedPool = Field(description="memcached server(s): host:port[:weight][,host:port[:weight]…]")
    proxies: list[str] = Field(default_factory=list, description="the proxy instances' HTTP endpoints: their metrics feed the status "
                                 "page; N2's 5xx rate is the DNS hand-off's error budget")
    proxy_ca: str | None = Field(default=None, description="PEM file of the CA that signed the proxies' certificates, "
                                 "for https:// proxies (default: the system's CAs)")
    zookeeper_security: ZooKeeperSecurity | None = Field(default=None, description="digest authentication (and the "
                                                         "ACL of the znodes nxnw creates) and TLS for this ZooKeeper")

    @field_validator("engine")
    @classmethod
    def known_engine(cls, url: str) -> str:
        scheme = url.split(":", 1)[0]
        if "://" not in url or scheme not in ENGINES:
            raise ValueError(f"engine {url!r} must be a URL whose scheme is one of: {', '.join(sorted(ENGINES))}")
        return url

    @field_validator("proxy_ca")
    @classmethod
    def readable_ca(cls, path: str | None) -> str | None:
        if path is not None:
            try:
                Path(path).read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return path


class Rfc2136(_Strict):
    server: HostPort
    zone: str
    key_name: str
    key_secret: Secret = Field(description="base64 TSIG secret: {env = NAME}, {file = PATH} or inline")
    key_algorithm: str = "hmac-sha256"
    authoritative: list[HostPort] = Field(default_factory=list)


class Route53(_Strict):
    hosted_zone_id: str
    endpoint_url: str | None = None
    region: str = "us-east-1"


class Dns(_Strict):
    provider: Literal["rfc2136", "route53"]
    name: str
    n1_values: list[str] = Field(min_length=1)
    n2_values: list[str] = Field(min_length=1)
    ttl: int = Field(default=5, ge=1, le=86400, description="TTL during the hand-off")
    resolver: HostPort | None = Field(default=None, description="where verify queries; default the primary")
    mode: Literal["at_once", "weighted"] = "at_once"
    steps: list[int] = Field(default_factory=lambda: [10, 50, 100])
    rfc2136: Rfc2136 | None = None
    route53: Route53 | None = None

    @model_validator(mode="after")
    def provider_settings(self) -> "Dns":
        if getattr(self, self.provider) is None:
            raise ValueError(f"provider {self.provider!r} needs a [dns.{self.provider}] table")
        return self


class Thresholds(_Strict):
    shadow_rate: float = Field(default=0.05, ge=0, le=1)
    journal_drain_seconds: float = Field(default=120, gt=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1, description="N2's 5xx budget at each DNS step")
    verify_repair: bool = True
    load_workers: int = Field(default=8, ge=1, le=256)
    export_workers: int = Field(default=4, ge=1, le=256)
    ranges_per_app: int = Field(default=32, ge=1, le=100_000)
    journal_bound: int = Field(default=10_000, ge=1, description="keys each repair journal holds one by one; past "
                               "it, the proxies record dirty ranges that a range repair resolves")


class Scale(_Strict):
    """Where the snapshot's and verify's ranges run: in process, or as Dask tasks."""

    scheduler: Annotated[str, AfterValidator(scheduler_address)] | None = Field(
        default=None, description="a Dask scheduler (tcp://host:port) whose workers copy and verify the ranges; "
                                  "without one they run in the orchestrator's process")


class Plan(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    apps: list[str] = Field(min_length=1)
    n1: Deployment
    n2: Deployment
    dns: Dns | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    scale: Scale = Field(default_factory=Scale)
    key_prefixes: dict[str, str] = Field(default_factory=dict, description="each app's memcache key prefix (default "
                                         "\"<app>:\"): a key follows the mode of the app whose prefix it starts "
                                         "with, the longest prefix winning; a key no plan's prefix matches stays "
                                         "passthrough")
    sync_paths: list[str] = Field(default_factory=lambda: [layout.LOCKS],
                                  description="ZooKeeper subtrees mirrored from N1 to N2")
    status_port: int | None = Field(default=None, ge=0, le=65535, description="serve the status page here")
    allow_nonempty_n2: bool = Field(default=False, description="let prepare accept apps whose N2 table holds rows "
                                    "(e.g. an earlier, rolled-back attempt's); verify still never copies to N1 a "
                                    "row N1 never held")

    @field_validator("sync_paths")
    @classmethod
    def absolute_paths(cls, paths: list[str]) -> list[str]:
        bad = [p for p in paths if not p.startswith("/") or p.endswith("/") or "//" in p]
        if bad:
            raise ValueError(f"sync paths {bad} must be absolute znode paths like /apps")
        return paths

    @model_validator(mode="after")
    def prefixes_of_its_apps(self) -> Plan:
        strangers = sorted(set(self.key_prefixes) - set(self.apps))
        if strangers:
            raise ValueError(f"key_prefixes names apps {strangers} that are not in apps")
        prefixes = default_key_prefixes(self.apps, self.key_prefixes)
        if len(set(prefixes.values())) != len(prefixes):
            raise ValueError(f"two apps share a memcache key prefix: {prefixes}")
        return self

    @field_validator("apps")
    @classmethod
    def app_names(cls, apps: list[str]) -> list[str]:
        bad = [a for a in apps if not APP_PATTERN.fullmatch(a)]
        if bad:
            raise ValueError(f"app names {bad} must match {APP_PATTERN.pattern}")
        if len(set(apps)) != len(apps):
            raise ValueError("an app is listed twice")
        return apps

    @model_validator(mode="after")
    def distinct_deployments(self) -> "Plan":
        if self.n1.engine == self.n2.engine:
            raise ValueError(f"n1 and n2 name the same engine {self.n1.engine!r}; N2 must be a different deployment")
        if self.n1.zookeeper == self.n2.zookeeper:
            raise ValueError("n1 and n2 name the same ZooKeeper; N2 must have its own")
        return self


_M = TypeVar("_M", bound=BaseModel)


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_plan(text: str, source: str = "plan") -> Plan:
    return _parse(Plan, text, source)


def _parse(model: type[_M], text: str, source: str) -> _M:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(source, [f"not valid TOML: {exc}"]) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                message = "missing (required)"
            elif err["type"] == "extra_forbidden":
                message = "unknown setting"
            problems.append(f"{_where(err['loc'])}: {message}")
        raise PlanError(source, problems) from None


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise PlanError(str(path), [f"cannot read: {exc.strerror}"]) from None


def load_plan(path: str | Path) -> Plan:
    return parse_plan(_read(path), str(path))


def load_zookeeper_security(path: str | Path) -> ZooKeeperSecurity:
    """A TOML file with the keys of a plan's ``[n1.zookeeper_security]`` table, for the
    commands that reach a ZooKeeper without a plan (``nxnw snapshot --zookeeper``): the
    password stays ``{env = …}`` or ``{file = …}`` there, never an argument that ``ps``
    shows. PlanError naming the file and each bad key, as for a plan."""
    return _parse(ZooKeeperSecurity, _read(path), str(path))
