"""Secrets named by environment variable or file: resolved on load, never shown.

The TSIG key, the ZooKeeper digest password, the admin token and the Cassandra password
are read from where the plan (or the proxy's settings, or the engine URL) says; a variable
that is not set or a file that cannot be read is one error line naming the field and the
reason; the value appears in no repr, dump, error message or ``migrate --dry-run`` output.
The dry run is real: its preflight signs a DNS update probe with the TSIG key read from the
environment, against the local BIND.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from datastore import EngineUnavailable
from datastore.engines.cassandra import CassandraEngine
from dns_handoff import RecordSet, Rfc2136Provider
from nxnw.config import PlanError, parse_plan
from nxnw.services.endpoints import BIND_TSIG_SECRET, BIND_ZONE
from proxy.config import ProxyConfig
from tests.conftest import require, run_nxnw
from tests.proxy_harness import proxy_config, running_proxy, zk_namespace
from tests.test_orchestrator_gates import Setting, private_memcached, setting  # noqa: F401 (fixtures)

SECRET = "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1zaG93"  # base64, as a TSIG key is


def _plan(**rfc2136: str) -> str:
    table = "".join(f"{k} = {v}\n" for k, v in {"server": '"127.0.0.1:53"', "zone": '"example.org"',
                                                "key_name": '"k"', **rfc2136}.items())
    return ('name = "p"\napps = ["a"]\n[n1]\nengine = "sqlite:///a"\nzookeeper = "127.0.0.1:1"\nmemcached = "127.0.0.1:2"\n'
            '[n2]\nengine = "sqlite:///b"\nzookeeper = "127.0.0.1:3"\nmemcached = "127.0.0.1:4"\n'
            '[dns]\nprovider = "rfc2136"\nname = "www.example.org"\nn1_values = ["1.1.1.1"]\nn2_values = ["2.2.2.2"]\n'
            f'[dns.rfc2136]\n{table}')


def _shown(plan: object) -> str:
    """Everything a log line, an error report or a JSON dump could print of a plan."""
    return f"{plan!r} {plan} {plan.model_dump()} {plan.model_dump_json()}"  # type: ignore[attr-defined]


def test_the_tsig_key_is_read_from_an_environment_variable_and_never_shown(monkeypatch):
    monkeypatch.setenv("NXNW_TEST_TSIG", SECRET)
    plan = parse_plan(_plan(key_secret='{env = "NXNW_TEST_TSIG"}'))
    assert plan.dns is not None and plan.dns.rfc2136 is not None
    assert plan.dns.rfc2136.key_secret.get_secret_value() == SECRET
    assert SECRET not in _shown(plan)


def test_the_tsig_key_is_read_from_a_file_without_its_trailing_newline(tmp_path):
    (tmp_path / "tsig").write_text(SECRET + "\n")
    plan = parse_plan(_plan(key_secret=f'{{file = "{tmp_path / "tsig"}"}}'))
    assert plan.dns is not None and plan.dns.rfc2136 is not None
    assert plan.dns.rfc2136.key_secret.get_secret_value() == SECRET
    assert SECRET not in _shown(plan)


@pytest.mark.parametrize("source, reason", [
    ('{env = "NXNW_TEST_UNSET"}', "environment variable NXNW_TEST_UNSET is not set"),
    ('{file = "/nonexistent/tsig"}', "cannot read secret file /nonexistent/tsig: No such file or directory"),
    ('{env = "A", file = "/b"}', 'a secret is a string, {env = "NAME"} or {file = "/path"}; got keys [\'env\', \'file\']'),
])
def test_a_secret_that_cannot_be_read_is_one_line_naming_the_field_and_the_reason(monkeypatch, source, reason):
    monkeypatch.delenv("NXNW_TEST_UNSET", raising=False)
    with pytest.raises(PlanError) as caught:
        parse_plan(_plan(key_secret=source))
    assert caught.value.problems == [f"dns.rfc2136.key_secret: {reason}"]


def test_the_zookeeper_digest_password_is_a_secret_too(monkeypatch):
    text = _plan(key_secret=f'"{SECRET}"').replace(
        'memcached = "127.0.0.1:2"\n',
        'memcached = "127.0.0.1:2"\n[n1.zookeeper_security]\ndigest_user = "nxnw"\n'
        'digest_password = {env = "NXNW_TEST_ZK_PASSWORD"}\n')
    monkeypatch.delenv("NXNW_TEST_ZK_PASSWORD", raising=False)
    with pytest.raises(PlanError) as caught:
        parse_plan(text)
    assert caught.value.problems == ["n1.zookeeper_security.digest_password: environment variable "
                                     "NXNW_TEST_ZK_PASSWORD is not set"]
    monkeypatch.setenv("NXNW_TEST_ZK_PASSWORD", "zk-" + SECRET)
    plan = parse_plan(text)
    assert plan.n1.zookeeper_security is not None
    assert plan.n1.zookeeper_security.kazoo_arguments()["auth_data"] == [("digest", f"nxnw:zk-{SECRET}")]
    assert "zk-" + SECRET not in _shown(plan) and SECRET not in _shown(plan)


def test_the_cassandra_password_is_named_in_the_url_never_carried_by_it(monkeypatch, tmp_path):
    monkeypatch.setenv("NXNW_TEST_CASSANDRA", SECRET)
    engine = CassandraEngine("cassandra://127.0.0.1:19042/ks?username=nxnw&password_env=NXNW_TEST_CASSANDRA")
    assert engine._auth is not None and (engine._auth.username, engine._auth.password) == ("nxnw", SECRET)
    (tmp_path / "pw").write_text(SECRET + "\n")
    engine = CassandraEngine(f"cassandra://127.0.0.1:19042/ks?username=nxnw&password_file={tmp_path}/pw")
    assert engine._auth is not None and engine._auth.password == SECRET
    assert SECRET not in f"{engine.url} {engine.address}"

    monkeypatch.delenv("NXNW_TEST_CASSANDRA")
    with pytest.raises(EngineUnavailable, match="environment variable NXNW_TEST_CASSANDRA is not set"):
        CassandraEngine("cassandra://127.0.0.1:19042/ks?username=nxnw&password_env=NXNW_TEST_CASSANDRA")
    with pytest.raises(EngineUnavailable, match="a password does not go in the URL") as caught:
        CassandraEngine(f"cassandra://127.0.0.1:19042/ks?username=nxnw&password={SECRET}")
    assert SECRET not in str(caught.value)
    with pytest.raises(EngineUnavailable, match="tls_ca need tls=true"):
        CassandraEngine("cassandra://127.0.0.1:19042/ks?tls_ca=/x.pem")


async def test_the_admin_token_from_a_file_opens_admin_and_any_other_token_is_refused(tmp_path):
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    (tmp_path / "token").write_text(SECRET + "\n")
    async with zk_namespace() as (zk_hosts, _):
        settings = proxy_config("tok", f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db", zk_hosts).model_dump()
        config = ProxyConfig.model_validate({**settings, "admin_token": {"file": str(tmp_path / "token")}})
        assert SECRET not in repr(config) and SECRET not in config.model_dump_json()
        async with running_proxy(config) as (_, http):
            timeout = aiohttp.ClientTimeout(total=30)
            for header, status in ((f"Bearer {SECRET}", 200), (f"Bearer {SECRET[:-1]}", 401), ("Bearer ", 401),
                                   (f"Bearer {SECRET}x", 401), ("Bearer \u00e9t\u00e9", 401)):
                async with http.get("/admin/state", headers={"Authorization": header}, timeout=timeout) as resp:
                    assert resp.status == status, header
                    if status == 401:
                        assert (await resp.json())["error"] == "unauthorized"


async def test_dry_run_signs_with_the_tsig_key_from_the_environment_and_never_prints_it(setting: Setting,
                                                                                      bind_dns: Rfc2136Provider):
    s = setting
    name = f"sec-{uuid.uuid4().hex[:10]}.{BIND_ZONE}"
    bind_dns.wait_in_sync(bind_dns.upsert([RecordSet(name, "A", 1, ("127.0.0.11",))]), timeout=10)
    s.make_plan(dns_name=name)
    path: Path = s.plan_path
    text = path.read_text()
    assert f'key_secret = "{BIND_TSIG_SECRET}"' in text
    path.write_text(text.replace(f'key_secret = "{BIND_TSIG_SECRET}"', 'key_secret = {env = "NXNW_TEST_TSIG"}'))

    result = await asyncio.to_thread(run_nxnw, "migrate", str(path), "--dry-run", env={"NXNW_TEST_TSIG": BIND_TSIG_SECRET})
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "the DNS zone's update rights" in result.stdout  # the probe was signed with the key from the environment
    assert BIND_TSIG_SECRET not in result.stdout + result.stderr

    env = {k: v for k, v in os.environ.items() if k != "NXNW_TEST_TSIG"}
    result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nxnw.cli", "migrate", str(path), "--dry-run"],
                                     capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2
    assert "dns.rfc2136.key_secret: environment variable NXNW_TEST_TSIG is not set" in result.stdout + result.stderr
    assert BIND_TSIG_SECRET not in result.stdout + result.stderr
