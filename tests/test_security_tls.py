"""TLS on the proxy's HTTP and memcache listeners, end to end, with certificates the test makes.

A real ProxyServer (real ZooKeeper, memcached, SQLite engines) serves with a certificate
signed by a CA made here: a client that trusts that CA gets answers on both ports; a
plain-TCP client and a client trusting another CA are refused. With a client CA, a client
without a certificate is refused in the handshake. Bad files are refused when the settings
are read, naming the file.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from nxnw.error_budget import N2ErrorBudget
from nxnw.fleet import ProxyProcess, ProxyTls, free_port
from nxnw.proxy_watch import ProxyWatch
from nxnw.services.endpoints import HOST, MEMCACHED, ZOOKEEPER
from proxy.server import ProxyServer
from proxy.tls import client_context
from tests.conftest import require
from tests.proxy_harness import proxy_config, zk_namespace

TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass
class Issued:
    cert: str
    key: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Issued(str(cert_path), str(key_path))


class TestCA:
    """A throwaway certificate authority that issues certificates for loopback."""

    __test__ = False

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.files = _write(directory, name, self.cert, self.key)

    def issue(self, stem: str, *, client: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .sign(self.key, hashes.SHA256()))
        return _write(self.directory, stem, cert, key)


@pytest.fixture
def pki(tmp_path: Path) -> tuple[TestCA, TestCA]:
    """The proxies' CA and an unrelated one (and the services a proxy needs)."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")
    return TestCA(tmp_path, "nxnw-test-ca"), TestCA(tmp_path, "other-ca")


async def _memcache_version(port: int, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 30)
    try:
        writer.write(b"version\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()


async def _tls_proxy(tmp_path: Path, zk_hosts: str, **tls: str) -> ProxyServer:
    config = proxy_config("tls-a", f"sqlite:///{tmp_path}/n1.db", f"sqlite:///{tmp_path}/n2.db", zk_hosts,
                          memcache_port=0, **tls)
    server = ProxyServer(config)
    await server.setup()
    try:
        await server.start()
    except BaseException:
        await server.cleanup()
        raise
    return server


async def test_a_client_with_the_ca_is_answered_over_tls_on_both_ports_and_others_are_refused(tmp_path, pki):
    ca, other = pki
    issued = ca.issue("proxy")
    async with zk_namespace() as (zk_hosts, _):
        server = await _tls_proxy(tmp_path, zk_hosts, tls_cert=issued.cert, tls_key=issued.key)
        try:
            assert server.listener is not None
            https = f"https://127.0.0.1:{server.http_port}/healthz"
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                async with http.get(https, ssl=client_context(ca.files.cert)) as resp:
                    assert resp.status == 200
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await http.get(https, ssl=client_context(other.files.cert))
                with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port: no HTTP answer
                    await http.get(f"http://127.0.0.1:{server.http_port}/healthz")
            assert (await _memcache_version(server.listener.port, client_context(ca.files.cert))).startswith(b"VERSION ")
            with pytest.raises(ssl.SSLCertVerificationError):
                await _memcache_version(server.listener.port, client_context(other.files.cert))
            assert not (await _memcache_version(server.listener.port, None)).startswith(b"VERSION")
        finally:
            await server.cleanup()


async def test_with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served(tmp_path, pki):
    ca, other = pki
    issued, client, stranger = ca.issue("proxy"), ca.issue("app", client=True), other.issue("intruder", client=True)
    async with zk_namespace() as (zk_hosts, _):
        server = await _tls_proxy(tmp_path, zk_hosts, tls_cert=issued.cert, tls_key=issued.key,
                                  tls_client_ca=ca.files.cert)
        try:
            https = f"https://127.0.0.1:{server.http_port}/healthz"
            with_cert = client_context(ca.files.cert)
            with_cert.load_cert_chain(client.cert, client.key)
            with_stranger = client_context(ca.files.cert)
            with_stranger.load_cert_chain(stranger.cert, stranger.key)
            async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
                async with http.get(https, ssl=with_cert) as resp:
                    assert resp.status == 200
                for refused in (client_context(ca.files.cert), with_stranger):
                    with pytest.raises(aiohttp.ClientError):
                        async with http.get(https, ssl=refused) as resp:
                            await resp.read()
        finally:
            await server.cleanup()


def test_tls_files_are_checked_when_the_settings_are_read(tmp_path, pki):
    ca, _ = pki
    one, two = ca.issue("one"), ca.issue("two")
    base = dict(instance="p", n1_url="sqlite:///a", n2_url="sqlite:///b", zk_hosts="127.0.0.1:1")
    cases = {
        "does not match": dict(tls_cert=one.cert, tls_key=two.key),
        "go together": dict(tls_cert=one.cert),
        "cannot read": dict(tls_cert=one.cert, tls_key=str(tmp_path / "missing.key")),
        "not a PEM": dict(tls_cert=ca.files.key, tls_key=one.key),
        "needs tls_cert": dict(tls_client_ca=ca.files.cert),
    }
    for reason, tls in cases.items():
        with pytest.raises(ValidationError, match=reason):
            proxy_config(base["instance"], base["n1_url"], base["n2_url"], base["zk_hosts"], **tls)


def test_proxy_serve_refuses_bad_tls_or_token_settings_in_one_line_before_connecting(tmp_path, pki):
    ca, _ = pki
    one, two = ca.issue("one"), ca.issue("two")
    plan = tmp_path / "plan.toml"
    plan.write_text('name = "p"\napps = ["a"]\n'
                    '[n1]\nengine = "sqlite:///a"\nzookeeper = "127.0.0.1:1"\nmemcached = "127.0.0.1:2"\n'
                    '[n2]\nengine = "sqlite:///b"\nzookeeper = "127.0.0.1:3"\nmemcached = "127.0.0.1:4"\n')
    env = {k: v for k, v in os.environ.items() if k != "NXNW_TEST_UNSET"}
    for flags, reason in (
            (["--tls-cert", one.cert], "tls_cert and tls_key go together"),
            (["--tls-cert", one.cert, "--tls-key", two.key], "the key does not match the certificate"),
            (["--admin-token-env", "NXNW_TEST_UNSET"], "admin_token: environment variable NXNW_TEST_UNSET is not set")):
        result = subprocess.run([sys.executable, "-m", "nxnw.cli", "proxy", "serve", str(plan), "--instance", "a",
                                 "--port", "0", *flags], capture_output=True, text=True, timeout=120, env=env)
        assert result.returncode == 2, (flags, result.stdout, result.stderr)
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], (flags, lines)


async def test_the_status_pages_watch_and_the_error_budget_reach_https_proxies_with_the_plans_ca(tmp_path, pki):
    ca, other = pki
    issued = ca.issue("proxy")
    async with zk_namespace() as (zk_hosts, _):
        server = await _tls_proxy(tmp_path, zk_hosts, tls_cert=issued.cert, tls_key=issued.key)
        try:
            url = f"https://127.0.0.1:{server.http_port}"
            watches = [ProxyWatch([], [url], n2_ca=ca.files.cert, interval=0.2),
                       ProxyWatch([], [url], n2_ca=other.files.cert, interval=0.2)]
            for watch in watches:
                await watch.start()
            try:
                deadline = time.monotonic() + 60
                while not (watches[0].instances[0].up and watches[1].instances[0].error):
                    assert time.monotonic() < deadline, [(w.instances[0].up, w.instances[0].error) for w in watches]
                    await asyncio.sleep(0.1)
            finally:
                for watch in watches:
                    await watch.stop()
            assert "certificate verify failed" in watches[1].instances[0].error
            budget = N2ErrorBudget([url], 0.01, ca=ca.files.cert)
            await asyncio.to_thread(budget.baseline)
            assert (await asyncio.to_thread(budget)).ok
            assert not (await asyncio.to_thread(N2ErrorBudget([url], 0.01, ca=other.files.cert))).ok
        finally:
            await server.cleanup()


async def test_a_real_nxnw_proxy_serve_process_over_tls_answers_the_fleets_calls_with_the_ca(tmp_path, pki):
    ca, _ = pki
    issued = ca.issue("proxy")
    async with zk_namespace() as (zk_hosts, _):
        chroot = zk_hosts[zk_hosts.index("/"):]
        plan = tmp_path / "plan.toml"
        plan.write_text(f'name = "tls"\napps = ["a"]\n'
                        f'[n1]\nengine = "sqlite:///{tmp_path}/n1.db"\nzookeeper = "{zk_hosts}"\n'
                        f'memcached = "{HOST}:{MEMCACHED["n1"]}"\n'
                        f'[n2]\nengine = "sqlite:///{tmp_path}/n2.db"\nzookeeper = "{HOST}:{ZOOKEEPER["n2"]}{chroot}"\n'
                        f'memcached = "{HOST}:{MEMCACHED["n2"]}"\n')
        proxy = ProxyProcess("tls-p", HOST, free_port(HOST), free_port(HOST), plan, tmp_path / "proxy.log",
                             admin_token="t0ken", tls=ProxyTls(issued.cert, issued.key, ca.files.cert))
        proxy.start()
        try:
            await proxy.wait_ready(120)
            assert proxy.url.startswith("https://")
            assert (await proxy.admin_state())["instance"] == "tls-p"
            assert (await _memcache_version(proxy.memcache_port, client_context(ca.files.cert))).startswith(b"VERSION ")
        finally:
            await proxy.stop()
