"""One standalone ZooKeeper per deployment (N1, N2) on loopback, from Maven Central jars.

This module is responsible for resolving the ZooKeeper server jars once (shared by
``zookeeper-n1`` and ``zookeeper-n2``), writing each instance's ``zoo.cfg`` and logback
config, running ``QuorumPeerMain`` standalone, and proving it answers with a real znode
read through kazoo. It must never wipe an instance's data directory: N1's ZooKeeper
holds the migration state that a crashed orchestrator resumes from, so a restart keeps
every znode. It must never open the admin server (an HTTP port we do not reserve).

Session timeouts: ``minSessionTimeout`` is one tick (2 s) so that tests of session
expiry and fencing (invariant 3) run in seconds (ZooKeeper's default minimum is two
ticks, 4 s); the maximum is 60 s so no client can hold a dead session for long.
"""

from __future__ import annotations

import logging

from kazoo.client import KazooClient

from nxnw.services import endpoints
from nxnw.services.base import Context, Service, maven_classpath

ZOOKEEPER_VERSION = "3.9.5"
#: ZooKeeper's pom marks these optional or ``provided`` (its release tarball ships them in
#: lib/), so they are listed here at the versions ZooKeeper's parent pom names. Without
#: metrics-core the server dies at start (NoClassDefFoundError: com/codahale/metrics/...);
#: without logback (1.3, for slf4j 2) it logs nothing; snappy is for compressed snapshots.
ZOOKEEPER_ARTIFACTS = [
    f"org.apache.zookeeper:zookeeper:{ZOOKEEPER_VERSION}",
    "io.dropwizard.metrics:metrics-core:4.1.12.1",
    "org.xerial.snappy:snappy-java:1.1.10.5",
    "ch.qos.logback:logback-classic:1.3.15",
]

LOGBACK_XML = """<configuration>
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d{ISO8601} %-5level [%thread] %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="CONSOLE"/></root>
</configuration>
"""

#: kazoo logs every refused connection as a warning; while ``up`` polls a starting server
#: that is expected, and the probe's own exception already carries the reason.
_PROBE_LOG = logging.getLogger("nxnw.services.zookeeper.probe")
_PROBE_LOG.setLevel(logging.ERROR)


class ZooKeeperService(Service):
    """ZooKeeper for one deployment: ``zookeeper-n1`` on 21811, ``zookeeper-n2`` on 21812."""

    start_timeout = 60.0

    def __init__(self, ctx: Context, deployment: str) -> None:
        if deployment not in endpoints.ZOOKEEPER:
            raise ValueError(f"unknown deployment {deployment!r} for ZooKeeper; expected one of {sorted(endpoints.ZOOKEEPER)}")
        self.deployment = deployment
        self.name = f"zookeeper-{deployment}"
        self.port = endpoints.ZOOKEEPER[deployment]
        super().__init__(ctx)
        self.lib_dir = ctx.state_dir / f"zookeeper-{ZOOKEEPER_VERSION}-lib"
        self.conf_path = self.dir / "zoo.cfg"
        self.logback_path = self.dir / "logback.xml"
        self.data_dir = self.dir / "data"

    def install(self) -> None:
        maven_classpath(self.ctx, ZOOKEEPER_ARTIFACTS, self.lib_dir)

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logback_path.write_text(LOGBACK_XML)
        self.conf_path.write_text(
            "tickTime=2000\n"
            f"dataDir={self.data_dir}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={endpoints.HOST}\n"
            "maxClientCnxns=0\n"
            "minSessionTimeout=2000\n"
            "maxSessionTimeout=60000\n"
            "admin.enableServer=false\n"
            "4lw.commands.whitelist=*\n"
            "autopurge.snapRetainCount=3\n"
            "autopurge.purgeInterval=1\n"
        )

    def command(self) -> list[str]:
        return ["java", "-Xmx256m", "-XX:+UseSerialGC", "-Djava.net.preferIPv4Stack=true",
                f"-Dlogback.configurationFile={self.logback_path}",
                "-cp", f"{self.lib_dir}/*",
                "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(self.conf_path)]

    def probe(self) -> None:
        client = KazooClient(hosts=f"{endpoints.HOST}:{self.port}", timeout=2.0, logger=_PROBE_LOG)
        try:
            client.start(timeout=2.0)
            client.get_children("/")
        finally:
            client.stop()
            client.close()
