"""ZooKeeper digest authentication against the local ZooKeeper (N1's, port 21811), and TLS.

nxnw's clients (``sync.zk_client``) add the digest to their session and create every znode
with an ACL for that identity only; so a client without the digest, or with another
password, is refused (NoAuthError) on what nxnw created — here by the client directly and
by a real proxy instance (its mode, membership, journal and clock znodes).

TLS: a private ZooKeeper started by the test from the same jars as the shared ones, with
only a ``secureClientPort`` (Netty) and a PEM certificate signed by a CA the test makes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import OPEN_ACL_UNSAFE
from pydantic import SecretStr, ValidationError

from nxnw import services
from nxnw.fleet import free_port
from nxnw.services.endpoints import HOST, ZOOKEEPER
from nxnw.config import parse_plan
from nxnw.orchestrator import Orchestrator
from nxnw.zk import zk_session
from sync.aio import run_blocking
from sync.zk_client import ZooKeeperSecurity, zk_client
from tests.conftest import require
from tests.proxy_harness import proxy_config, running_proxy
from tests.test_orchestrator_gates import _plan_text, private_memcached  # noqa: F401 (fixture)
from tests.test_security_tls import Issued, TestCA

ENSEMBLE = f"{HOST}:{ZOOKEEPER['n1']}"


@pytest.fixture
def security() -> ZooKeeperSecurity:
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    return ZooKeeperSecurity(digest_user=f"nxnw-{uuid.uuid4().hex[:6]}", digest_password=SecretStr(uuid.uuid4().hex))


@contextmanager
def digest_chroot(security: ZooKeeperSecurity) -> Iterator[str]:
    """An open chroot for one test, removed at the end by a client holding the digest."""
    root = f"/nxnw-test-{uuid.uuid4().hex[:10]}"
    admin = zk_client(ENSEMBLE, security, timeout=10)
    admin.start(15)
    admin.create(root, acl=OPEN_ACL_UNSAFE)  # open: the test's plain clients list it
    try:
        yield f"{ENSEMBLE}{root}"
    finally:
        admin.delete(root, recursive=True)
        admin.stop()
        admin.close()


@contextmanager
def started(client: KazooClient) -> Iterator[KazooClient]:
    client.start(15)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def test_znodes_nxnw_creates_are_refused_to_a_client_without_the_digest_or_with_another_password(security):
    wrong = security.model_copy(update={"digest_password": SecretStr("not-the-password")})
    with digest_chroot(security) as hosts:
        with started(zk_client(hosts, security, timeout=10)) as nxnw:
            nxnw.create("/state/phase", b"cow", makepath=True)
            assert nxnw.get("/state/phase")[0] == b"cow"
            nxnw.set("/state/phase", b"proxy")
        for other in (KazooClient(hosts=hosts, timeout=10), zk_client(hosts, wrong, timeout=10)):
            with started(other) as intruder:
                for attempt in (lambda: intruder.get("/state/phase"), lambda: intruder.set("/state/phase", b"x"),
                                lambda: intruder.create("/state/other", b""), lambda: intruder.get_children("/state")):
                    with pytest.raises(NoAuthError):
                        attempt()
        with started(zk_client(hosts, security, timeout=10)) as again:  # a new session with the digest
            assert again.get("/state/phase")[0] == b"proxy"


async def test_the_commands_sessions_carry_the_digest(security):
    with digest_chroot(security) as hosts:
        async with zk_session(hosts, "N1's", security) as zk:
            zk.create("/made-by-a-command", b"x")
        with started(KazooClient(hosts=hosts, timeout=10)) as plain, pytest.raises(NoAuthError):
            plain.get("/made-by-a-command")


async def test_a_proxy_with_the_digest_serves_and_its_znodes_are_refused_to_other_clients(tmp_path, security):
    with digest_chroot(security) as hosts:
        config = proxy_config("zk-auth", f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db", hosts,
                              n1_zookeeper_security=security)
        async with running_proxy(config) as (server, http):
            async with http.get("/healthz", timeout=aiohttp.ClientTimeout(total=30)) as resp:
                assert resp.status == 200, await resp.text()
            with started(KazooClient(hosts=hosts, timeout=10)) as plain:
                made = plain.get_children("/")  # the chroot itself is the test's, open
                assert made, "the proxy created nothing under its chroot"
                for name in made:
                    with pytest.raises(NoAuthError):
                        plain.get_children(f"/{name}")


@pytest.fixture
def tls_zookeeper(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, TestCA, TestCA, Issued]]:
    """A private ZooKeeper answering only TLS: (its hosts string, its CA, an unrelated CA, a
    client certificate its CA signed). ``ssl.clientAuth`` is the parameter (default none)."""
    client_auth = getattr(request, "param", "none")
    require("zookeeper-n1")  # its jars
    lib_dir = services.service("zookeeper-n1").lib_dir
    ca, other = TestCA(tmp_path, "zk-ca"), TestCA(tmp_path, "other-ca")
    issued, client = ca.issue("zookeeper"), ca.issue("nxnw", client=True)
    bundle = tmp_path / "zookeeper-bundle.pem"  # ZooKeeper's PEM key store: key and certificate in one file
    bundle.write_text(Path(issued.key).read_text() + Path(issued.cert).read_text())
    port = free_port(HOST)
    (tmp_path / "zoo.cfg").write_text(
        f"tickTime=2000\ndataDir={tmp_path / 'data'}\nsecureClientPort={port}\nsecureClientPortAddress={HOST}\n"
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
        f"ssl.keyStore.location={bundle}\nssl.keyStore.type=PEM\n"
        f"ssl.trustStore.location={ca.files.cert}\nssl.trustStore.type=PEM\nssl.clientAuth={client_auth}\n"
        "admin.enableServer=false\n")
    log = (tmp_path / "zookeeper.log").open("wb")
    server = subprocess.Popen(["java", "-Xmx128m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
                               "-cp", f"{lib_dir}/*", "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                               str(tmp_path / "zoo.cfg")], stdout=log, stderr=subprocess.STDOUT)
    hosts = f"{HOST}:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # up once a TLS session opens (a JVM starts slowly on a busy machine)
            probe = zk_client(hosts, ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert, tls_cert=client.cert,
                                                       tls_key=client.key), timeout=5)
            try:
                probe.start(5)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the TLS ZooKeeper did not start: {(tmp_path / 'zookeeper.log').read_text()[-2000:]}")
            finally:
                probe.stop()
                probe.close()
        yield hosts, ca, other, client
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_over_tls_a_client_with_the_ca_is_served_and_a_wrong_ca_or_plain_client_is_not(tls_zookeeper):
    hosts, ca, other, _ = tls_zookeeper
    secured = ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert, digest_user="nxnw",
                                digest_password=SecretStr(uuid.uuid4().hex))
    with started(zk_client(hosts, secured, timeout=10)) as nxnw:
        nxnw.create("/over-tls", b"v")
        assert nxnw.get("/over-tls")[0] == b"v"
    with started(zk_client(hosts, ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert), timeout=10)) as no_digest:
        with pytest.raises(NoAuthError):  # TLS is not authentication: the digest ACL still holds
            no_digest.get("/over-tls")
    for refused in (zk_client(hosts, ZooKeeperSecurity(tls=True, tls_ca=other.files.cert), timeout=5),
                    KazooClient(hosts=hosts, timeout=5)):
        with pytest.raises(KazooTimeoutError):  # the handshake fails on every try until the deadline
            refused.start(5)
        refused.stop()
        refused.close()


async def test_a_migration_with_digest_credentials_leaves_nothing_readable_without_them(tmp_path, security,
                                                                                       private_memcached):
    """The plan's ``zookeeper_security`` reaches every session the orchestrator and the
    commands open: its state, records and the mirrored tree carry the digest ACL on both
    sides, and ``nxnw status`` (another process, the password from the environment) reads them."""
    assert security.digest_password is not None
    password = security.digest_password.get_secret_value()
    tag = uuid.uuid4().hex[:10]
    app, chroot = f"s_{tag}", f"/nxnw-sec-{tag}"
    sides = {side: f"{HOST}:{ZOOKEEPER[side]}" for side in ("n1", "n2")}
    admins = {side: zk_client(hosts, security, timeout=10) for side, hosts in sides.items()}
    for admin in admins.values():
        admin.start(15)
        admin.create(chroot, acl=OPEN_ACL_UNSAFE)
    try:
        writer = zk_client(f"{sides['n1']}{chroot}", security, timeout=10)
        with started(writer):
            writer.create(f"/apps/{app}/config", b"v1", makepath=True)
        text = (_plan_text(f"sec-{tag}", app, f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db", chroot,
                           private_memcached)
                + "".join(f'\n[{side}.zookeeper_security]\ndigest_user = "{security.digest_user}"\n'
                          'digest_password = { env = "NXNW_TEST_ZK_DIGEST" }\n' for side in sides))
        (tmp_path / "plan.toml").write_text(text)
        os.environ["NXNW_TEST_ZK_DIGEST"] = password
        try:
            plan = parse_plan(text, "plan.toml")
        finally:
            del os.environ["NXNW_TEST_ZK_DIGEST"]
        async with await Orchestrator.connect(plan) as orchestrator:
            await orchestrator.migrate(until="sync-zk")
            await run_blocking(orchestrator.mirrors[0].wait_synced, 30)
        for side, hosts in sides.items():
            with started(KazooClient(hosts=f"{hosts}{chroot}", timeout=10)) as plain:
                made = plain.get_children("/")
                assert made, f"nothing was created on {side}"
                for name in made:
                    with pytest.raises(NoAuthError):
                        plain.get_children(f"/{name}")
        with started(zk_client(f"{sides['n2']}{chroot}", security, timeout=10)) as n2:
            assert n2.get(f"/apps/{app}/config")[0] == b"v1"  # mirrored, readable with the digest
        result = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "nxnw.cli", "status",
                                                          str(tmp_path / "plan.toml"), "--json"],
                                         capture_output=True, text=True, timeout=300,
                                         env={**os.environ, "NXNW_TEST_ZK_DIGEST": password})
        assert result.returncode == 0, (result.stdout, result.stderr)
        assert json.loads(result.stdout)["phase"] == "sync-zk"
        assert password not in result.stdout + result.stderr
    finally:
        for admin in admins.values():
            admin.delete(chroot, recursive=True)
            admin.stop()
            admin.close()


@pytest.mark.parametrize("tls_zookeeper", ["need"], indirect=True)
def test_an_ensemble_that_needs_client_certificates_serves_the_client_that_presents_one(tls_zookeeper):
    hosts, ca, _, client = tls_zookeeper
    with_cert = ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert, tls_cert=client.cert, tls_key=client.key)
    with started(zk_client(hosts, with_cert, timeout=10)) as nxnw:
        assert "zookeeper" in nxnw.get_children("/")
    without = zk_client(hosts, ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert), timeout=5)
    with pytest.raises(KazooTimeoutError):
        without.start(5)
    without.stop()
    without.close()


def test_zookeeper_tls_files_are_checked_when_the_settings_are_read(tmp_path):
    ca = TestCA(tmp_path, "ca")
    one, two = ca.issue("one", client=True), ca.issue("two", client=True)
    for settings, reason in (
            (dict(tls_ca=str(tmp_path / "missing.pem")), "tls_ca: cannot read"),
            (dict(tls_ca=one.key), "tls_ca: .* not PEM"),
            (dict(tls_ca=ca.files.cert, tls_cert=one.cert, tls_key=two.key), "the key does not match the certificate"),
            (dict(tls_cert=one.cert), "tls_cert and tls_key go together"),
            (dict(tls=False, tls_ca=ca.files.cert), "need tls = true")):
        with pytest.raises(ValidationError, match=reason):
            ZooKeeperSecurity(**{"tls": True, **settings})
    assert ZooKeeperSecurity(tls=True, tls_ca=ca.files.cert, tls_cert=one.cert, tls_key=one.key).tls
