"""One single-node Apache Cassandra 5.0 on loopback, holding both deployments' keyspaces.

This module is responsible for resolving Cassandra's server jars once, writing its
``cassandra.yaml``, JVM options and logback config, running ``CassandraDaemon`` in the
foreground, proving it answers a real CQL query through the Python driver, and creating
the ``nxnw_n1`` / ``nxnw_n2`` keyspaces. It must never wipe the data directory on a
restart (a restart keeps every table, like a real node does), and it must never listen
on anything but 127.0.0.1.

Where the server comes from: the Cassandra project does not publish its binary tarball
(``apache-cassandra-5.0.x-bin.tar.gz``) to Maven Central; the ``apache-cassandra``
artifact there stops at 4.0-alpha2. It does publish the server itself as
``org.apache.cassandra:cassandra-all`` with its runtime dependencies, which is everything
``bin/cassandra`` puts on the classpath. So we resolve that through Maven and do what
``bin/cassandra`` + ``cassandra-env.sh`` + ``jvm17-server.options`` would do: the same
``--add-exports``/``--add-opens`` for JDK 17, the jamm agent, local-only JMX, and
``org.apache.cassandra.service.CassandraDaemon`` as the main class.

Fast start (a cold node answers CQL in seconds, not in the default half minute):
``-Dcassandra.skip_wait_for_gossip_to_settle=0`` (there is no one to gossip with),
``-Dcassandra.ring_delay_ms=0`` and ``-Dcassandra.load_ring_state=false`` (no ring to
learn), ``-Dcassandra.unsafesystem=true`` (system-table schema changes are not fsynced:
a test node loses nothing it cares about), a small G1 heap, and a seed list naming only
itself so the node never bootstraps. ``-Dcassandra.shutdown_announce_in_ms=0`` makes
``down`` take ~3 s instead of ~5 s (nobody listens for the shutdown gossip). Measured on 2
cores: first ``up`` ~9 s with the jars already in Maven's local repository (~12 s when
Maven downloads them), ``up`` after ``down`` ~5-7 s.

TLS: the native port also accepts TLS clients (``client_encryption_options`` with
``optional: true``: plain and TLS clients share port 19042, so nothing else changes). The
node's certificate is signed by a local CA made once with ``openssl`` in ``conf/tls``
and kept across restarts; a client verifies the node with ``tls_ca`` (``CassandraService.tls_ca``),
e.g. ``cassandra://127.0.0.1:19042/nxnw_n1?tls=true&tls_ca=.../conf/tls/ca.pem``. A node
started before this setting existed has no TLS until it is restarted. Without ``openssl`` on
the machine the node starts without TLS (a warning says why): no test but the TLS one needs it.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

from nxnw.services import endpoints
from nxnw.services.base import Context, InstallError, Service, maven_classpath, run_install

log = logging.getLogger("nxnw.services.cassandra")

CASSANDRA_VERSION = "5.0.9"
CASSANDRA_ARTIFACTS = [f"org.apache.cassandra:cassandra-all:{CASSANDRA_VERSION}"]
#: The JDKs Cassandra 5.0 runs on; the module flags below are the ones it needs there.
SUPPORTED_JAVA = (11, 17)

HEAP = ["-Xms512m", "-Xmx1g"]

#: What ``jvm17-server.options`` opens up for Cassandra's use of JDK internals (off-heap
#: buffers, the jamm object sizer, the JMX server, the in-JVM compiler for UDFs).
JDK_MODULE_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    *[f"--add-exports={m}=ALL-UNNAMED" for m in (
        "java.base/jdk.internal.misc",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi",
        "java.rmi/sun.rmi.registry",
        "java.rmi/sun.rmi.server",
        "java.sql/java.sql",
        "java.base/java.lang.ref",
        "jdk.unsupported/sun.misc",
        "jdk.compiler/com.sun.tools.javac.file",
        "jdk.attach/sun.tools.attach",
    )],
    *[f"--add-opens={m}=ALL-UNNAMED" for m in (
        "java.base/java.lang.module",
        "java.base/jdk.internal.loader",
        "java.base/jdk.internal.ref",
        "java.base/jdk.internal.reflect",
        "java.base/jdk.internal.math",
        "java.base/jdk.internal.module",
        "java.base/jdk.internal.util.jar",
        "jdk.management/com.sun.management.internal",
        "java.base/sun.nio.ch",
        "java.base/java.io",
        "java.base/java.lang.reflect",
        "jdk.compiler/com.sun.tools.javac",
        "java.base/java.lang",
        "java.base/java.util",
    )],
]

GC_FLAGS = [
    "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
    "-XX:G1RSetUpdatingPauseTimePercent=5", "-XX:MaxGCPauseMillis=300",
    "-XX:+HeapDumpOnOutOfMemoryError", "-XX:+CrashOnOutOfMemoryError",
    "-XX:+PerfDisableSharedMem", "-Xss256k",
]

FAST_START_FLAGS = [
    "-Dcassandra.skip_wait_for_gossip_to_settle=0",
    "-Dcassandra.ring_delay_ms=0",
    "-Dcassandra.load_ring_state=false",
    "-Dcassandra.unsafesystem=true",
    "-Dcassandra.superuser_setup_delay_ms=0",
    "-Dcassandra.shutdown_announce_in_ms=0",
]

NETTY_FLAGS = [
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
]

LOGBACK_XML = """<configuration scan="false">
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{ISO8601} %-5level [%thread] %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""


def java_major_version(java: str) -> int:
    """The feature release of ``java`` (17 for ``17.0.15``), read from ``java -version``."""
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr)
    if proc.returncode != 0 or not match:
        raise InstallError(f"cannot tell the version of {java!r}: {proc.stderr.strip()[:300]}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 else major


class CassandraService(Service):
    """Cassandra 5.0 on 127.0.0.1: CQL on 19042, storage on 17000, JMX (local only) on 17199."""

    probe_loggers = ("cassandra",)

    name = "cassandra"
    port = endpoints.CASSANDRA_CQL
    #: Generous: a loaded CI machine can be several times slower than the ~10 s measured.
    start_timeout = 240.0

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.lib_dir = self.dir / f"lib-{CASSANDRA_VERSION}"
        self.conf_dir = self.dir / "conf"
        self.data_dir = self.dir / "data"
        self.log_dir = self.dir / "logs"
        self.triggers_dir = self.dir / "triggers"
        self.tls_dir = self.conf_dir / "tls"
        #: the local CA that signed the node's certificate: what a TLS client verifies against
        self.tls_ca = self.tls_dir / "ca.pem"
        #: the node's private key and certificate in one PEM file (Cassandra's PEM key store)
        self.tls_keystore = self.tls_dir / "node-bundle.pem"

    # --- install -----------------------------------------------------------------------

    def install(self) -> None:
        maven_classpath(self.ctx, CASSANDRA_ARTIFACTS, self.lib_dir)

    def java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise InstallError("no `java` on PATH; Cassandra 5.0 needs JDK 11 or 17")
        major = java_major_version(java)
        if major not in SUPPORTED_JAVA:
            raise InstallError(f"`{java}` is JDK {major}; Cassandra {CASSANDRA_VERSION} runs on JDK {SUPPORTED_JAVA}")
        return java

    def jamm_jar(self) -> Path:
        jars = sorted(self.lib_dir.glob("jamm-*.jar"))
        if not jars:
            raise InstallError(f"no jamm jar in {self.lib_dir}; the Cassandra classpath is incomplete")
        return jars[-1]

    # --- configure ---------------------------------------------------------------------

    def yaml(self) -> str:
        d = self.data_dir
        return f"""\
cluster_name: nxnw
num_tokens: 16
allocate_tokens_for_local_replication_factor: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch

data_file_directories: ["{d / 'data'}"]
commitlog_directory: "{d / 'commitlog'}"
saved_caches_directory: "{d / 'saved_caches'}"
hints_directory: "{d / 'hints'}"
cdc_raw_directory: "{d / 'cdc_raw'}"

seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{endpoints.HOST}:{endpoints.CASSANDRA_STORAGE}"
listen_address: {endpoints.HOST}
rpc_address: {endpoints.HOST}
storage_port: {endpoints.CASSANDRA_STORAGE}
native_transport_port: {endpoints.CASSANDRA_CQL}
start_native_transport: true

authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
role_manager: CassandraRoleManager

commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 32MiB
hinted_handoff_enabled: false
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
dynamic_snitch: false
concurrent_compactors: 1
compaction_throughput: 64MiB/s
user_defined_functions_enabled: false
materialized_views_enabled: false
sasi_indexes_enabled: false
{self.client_encryption()}# The engine's bulk writes are unlogged batches of up to 32 KiB / 100 keys (see
# datastore/engines/cassandra.py): warn only above that; fail at the stock 50 KiB.
batch_size_warn_threshold: 64KiB
unlogged_batch_across_partitions_warn_threshold: 200
"""

    def prepare(self) -> None:
        for sub in ("data", "commitlog", "saved_caches", "hints", "cdc_raw"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.triggers_dir.mkdir(parents=True, exist_ok=True)
        self._ensure_tls_files()
        (self.conf_dir / "cassandra.yaml").write_text(self.yaml())
        (self.conf_dir / "logback.xml").write_text(LOGBACK_XML)

    def client_encryption(self) -> str:
        """``client_encryption_options`` when the node's TLS files exist, else nothing."""
        if not self.tls_keystore.exists():
            return ""
        return ("client_encryption_options:\n  enabled: true\n  optional: true\n  require_client_auth: false\n"
                "  ssl_context_factory:\n    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory\n"
                f'  keystore: "{self.tls_keystore}"\n')

    def _ensure_tls_files(self) -> None:
        """The local CA and the node's key and certificate (for 127.0.0.1 and localhost), made
        once: a restart keeps them, so a client's copy of the CA stays valid."""
        if self.tls_ca.exists() and self.tls_keystore.exists():
            return
        if shutil.which("openssl") is None:
            log.warning("no openssl on PATH: Cassandra starts without client TLS")
            return
        self.tls_dir.mkdir(parents=True, exist_ok=True)
        d = self.tls_dir
        run_install(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"),
                     "-out", str(d / "ca.pem"), "-days", "3650", "-subj", "/CN=nxnw local Cassandra CA"],
                    "Cassandra's local TLS CA")
        run_install(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "node.key"),
                     "-out", str(d / "node.csr"), "-subj", f"/CN={endpoints.HOST}"], "Cassandra's TLS key")
        (d / "node.ext").write_text(f"subjectAltName=IP:{endpoints.HOST},DNS:localhost\n")
        run_install(["openssl", "x509", "-req", "-in", str(d / "node.csr"), "-CA", str(d / "ca.pem"),
                     "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / "node.pem"), "-days", "3650",
                     "-extfile", str(d / "node.ext")], "Cassandra's TLS certificate")
        self.tls_keystore.write_text((d / "node.key").read_text() + (d / "node.pem").read_text())

    def env(self) -> dict[str, str]:
        return {"CASSANDRA_CONF": str(self.conf_dir), "CASSANDRA_HOME": str(self.dir)}

    def command(self) -> list[str]:
        conf = self.conf_dir
        return [
            self.java(), *HEAP, *GC_FLAGS, *JDK_MODULE_FLAGS, *NETTY_FLAGS, *FAST_START_FLAGS,
            f"-javaagent:{self.jamm_jar()}",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dcassandra.jmx.local.port={endpoints.CASSANDRA_JMX}",
            "-Dcom.sun.management.jmxremote.authenticate=false",
            f"-Dcassandra.config={(conf / 'cassandra.yaml').as_uri()}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.logdir={self.log_dir}",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.triggers_dir={self.triggers_dir}",
            "-Dcassandra-foreground=yes",
            "-cp", f"{self.lib_dir}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    # --- probe and schema --------------------------------------------------------------

    def _session(self):
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([endpoints.HOST]),
                                   request_timeout=10.0)
        cluster = Cluster(
            contact_points=[endpoints.HOST], port=self.port, protocol_version=5,
            connect_timeout=2.0, control_connection_timeout=2.0,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            schema_metadata_enabled=False, token_metadata_enabled=False,
        )
        try:
            return cluster, cluster.connect()
        except Exception:
            cluster.shutdown()
            raise

    def probe(self) -> None:
        cluster, session = self._session()
        try:
            row = session.execute("SELECT release_version FROM system.local", timeout=5.0).one()
            if row is None or not row.release_version:
                raise RuntimeError(f"system.local returned no release_version: {row!r}")
        finally:
            cluster.shutdown()

    def after_start(self) -> None:
        cluster, session = self._session()
        try:
            for keyspace in endpoints.CASSANDRA_KEYSPACES.values():
                session.execute(
                    f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}",
                    timeout=30.0,
                )
        finally:
            cluster.shutdown()
