"""HBase in standalone mode with a Thrift1 gateway, on loopback, for the tests and the demo.

This module installs, configures, starts, probes and stops one local HBase 2.6 (master,
region server and HBase's own ZooKeeper on ``HBASE_ZOOKEEPER``) and the Thrift1 gateway
that happybase speaks (binary protocol, buffered transport): with nxnw's extension on
``HBASE_THRIFT``, and as HBase's stock Thrift server would answer (no ``mutateRowsTsEach``) on
``HBASE_THRIFT_STOCK``, so the engine is tested both ways against one JVM. It also runs the
gateway alone beside a real cluster (``run_gateway``). It must never download anything
itself and never report HBase as up before a table can be created and read through Thrift.

Where the pieces come from:

* HBase's binary tarball is not on the package registry, so the servers run from a
  classpath that Maven resolves from ``hbase-server`` (``*-hadoop3`` build: Hadoop 3.4
  client jars, ZooKeeper 3.8, reload4j + slf4j for logging).
* ``hbase-thrift`` is not served by the registry this project may use (every version of
  it was refused), so the Thrift1 gateway is nxnw's own:
  ``nxnw/services/hbase_gateway/Thrift1Gateway.java`` implements the ``Hbase`` Thrift
  service on the HBase client API with HBase's own Thrift1 semantics, and the
  ``NxnwHbase`` service that extends it with ``mutateRowsTsEach`` (a timestamp per row; the
  engine's batch write). Its Java interfaces are generated from the ``Hbase.thrift`` IDL that
  happybase ships and from ``nxnw_hbase.thrift``, by Debian's ``thrift-compiler``, against
  ``libthrift`` from Maven; ``javac`` builds it at install, again whenever a source changed.

One JVM runs everything (``Thrift1Gateway --local-cluster``): the master, the region server
and the gateway. ``down`` sends SIGTERM; the gateway's shutdown hook then makes a cluster
shutdown (regions are closed and flushed, then both servers exit, then ZooKeeper), which
takes about two seconds. HBase's per-server shutdown hooks are turned off because, with both
servers in one JVM, they race and the region server can be left waiting on a ZooKeeper that
is already gone.

Failure handling: a gateway or cluster that exits, or a probe that does not pass before
``start_timeout``, is reported by ``Service.up`` with the tail of ``service.log``. A gateway
still running from an older build (without ``mutateRowsTsEach``, or without the stock port)
fails the probe, so ``up`` rebuilds and restarts it.

Beside a real cluster, ``run_gateway(quorum, port)`` builds the same gateway (same jars, same
source) and replaces the calling process with it, pointed at the cluster's ZooKeeper quorum:
no HBase of ours is started, and a SIGTERM stops the gateway alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import NoReturn
from xml.sax.saxutils import escape

from datastore.engines.hbase import (
    GATEWAY_IDL, HBASE_IDL, BatchMutationTs, ColumnDescriptor, GatewayConnection, Mutation, has_extension,
)
from nxnw.services.base import REPO_ROOT, Context, InstallError, Service, apt_install, maven_classpath, run_install
from nxnw.services.endpoints import (
    HBASE_MASTER, HBASE_REGIONSERVER, HBASE_THRIFT, HBASE_THRIFT_STOCK, HBASE_ZOOKEEPER, HOST,
)

#: Newest 2.6 release whose ``-hadoop3`` build the registry serves.
HBASE_VERSION = "2.6.4-hadoop3"
#: The Thrift runtime matching Debian 12's ``thrift`` compiler (0.17.0).
LIBTHRIFT_VERSION = "0.17.0"

GATEWAY_SOURCE = REPO_ROOT / "nxnw" / "services" / "hbase_gateway" / "Thrift1Gateway.java"
GATEWAY_CLASS = "nxnw.hbase.Thrift1Gateway"

#: What HBase 2.6 passes to a JDK 11+/17 JVM (``hbase.jdk11.flags`` in its build, applied by
#: ``bin/hbase``): its shaded Netty and its WAL writer reach into JDK internals.
JDK17_FLAGS = [
    "-Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true",
    "--add-modules", "jdk.unsupported",
    "--add-opens", "java.base/java.io=ALL-UNNAMED",
    "--add-opens", "java.base/java.nio=ALL-UNNAMED",
    "--add-opens", "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang=ALL-UNNAMED",
    "--add-opens", "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens", "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens", "java.base/java.util=ALL-UNNAMED",
    "--add-opens", "java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-exports", "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports", "java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-exports", "java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports", "java.base/sun.net.util=ALL-UNNAMED",
]
HEAP = ["-Xms256m", "-Xmx768m"]
#: The gateway alone (``run_gateway``): its memory is open scanners and batches in flight.
GATEWAY_HEAP = ["-Xms128m", "-Xmx1g"]
#: HBase's Thrift1 port, which ``run_gateway`` takes by default as HBase's own server does.
GATEWAY_DEFAULT_PORT = 9090
#: ``host[:port][,host[:port]…]``: what ``hbase.zookeeper.quorum`` takes.
QUORUM_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+(:[0-9]{1,5})?(,[A-Za-z0-9_.\-]+(:[0-9]{1,5})?)*")

#: A table of the probe's own; engines' tables carry a deployment prefix and never clash.
PROBE_TABLE = b"nxnw_service_probe"
PROBE_ROW = b"probe"
PROBE_TIMEOUT_MS = 15_000

LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO,console
log4j.appender.console=org.apache.log4j.ConsoleAppender
log4j.appender.console.target=System.err
log4j.appender.console.layout=org.apache.log4j.PatternLayout
log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{2}: %m%n
log4j.logger.org.apache.zookeeper=WARN
log4j.logger.org.apache.hadoop=WARN
log4j.logger.org.apache.hadoop.hbase=INFO
log4j.logger.org.apache.hadoop.hbase.procedure2=WARN
log4j.logger.org.apache.hadoop.hbase.regionserver.HStore=WARN
log4j.logger.org.apache.hadoop.hbase.ipc=WARN
log4j.logger.nxnw=INFO
"""


class HBaseService(Service):
    name = "hbase"
    port = HBASE_THRIFT
    start_timeout = 240.0

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.lib_dir = self.dir / "lib"
        self.gateway_dir = self.dir / "gateway"
        self.conf_dir = self.dir / "conf"
        self.data_dir = self.dir / "data"

    # ---- install ----

    def install(self) -> None:
        self.install_jars()
        self.build_gateway(self.gateway_dir)

    def install_jars(self) -> None:
        """The Thrift compiler, and HBase's and libthrift's jars in ``lib_dir`` (once)."""
        apt_install(["thrift-compiler"], ["thrift"], "compiles the HBase Thrift gateway")
        maven_classpath(self.ctx, [
            f"org.apache.hbase:hbase-server:{HBASE_VERSION}",
            f"org.apache.hbase:hbase-zookeeper:{HBASE_VERSION}",
            f"org.apache.thrift:libthrift:{LIBTHRIFT_VERSION}",
        ], self.lib_dir)

    def build_gateway(self, gateway_dir: Path) -> None:
        """Generate the Thrift interfaces from happybase's IDL and ours, and compile the gateway
        into ``gateway_dir``.

        Rebuilt only when the Java source, an IDL or the classpath changed. A rebuild empties
        ``gateway_dir`` first: a gateway running from it must be restarted (``up`` does, as
        its probe fails), and a gateway run alone builds into a directory of its own.
        """
        fingerprint = hashlib.sha256(
            b"".join(p.read_bytes() for p in (GATEWAY_SOURCE, GATEWAY_IDL, HBASE_IDL, self.lib_dir / ".complete"))
        ).hexdigest()
        marker = gateway_dir / ".built"
        if marker.exists() and marker.read_text() == fingerprint:
            return
        javac = shutil.which("javac")
        if javac is None:
            raise InstallError("building the HBase Thrift1 gateway needs javac (a JDK 17), and none is on PATH")
        shutil.rmtree(gateway_dir, ignore_errors=True)
        gen = gateway_dir / "gen"
        classes = gateway_dir / "classes"
        gen.mkdir(parents=True)
        classes.mkdir()
        thrift = ["thrift", "--gen", "java:generated_annotations=suppress", "-out", str(gen)]
        run_install([*thrift, str(HBASE_IDL)], "the Thrift1 interface generated from happybase's Hbase.thrift")
        run_install([*thrift, "-I", str(HBASE_IDL.parent), str(GATEWAY_IDL)],
                    f"the NxnwHbase interface generated from {GATEWAY_IDL.name}")
        sources = sorted(str(p) for p in gen.rglob("*.java")) + [str(GATEWAY_SOURCE)]
        run_install([javac, "--release", "17", "-nowarn", "-encoding", "UTF-8", "-d", str(classes),
                     "-cp", f"{self.lib_dir}/*", *sources], "the HBase Thrift1 gateway")
        marker.write_text(fingerprint)

    # ---- configure and run ----

    def site(self) -> dict[str, str]:
        """hbase-site.xml: standalone, every port ours and on loopback, state under ``self.dir``."""
        return {
            "hbase.cluster.distributed": "false",
            "hbase.rootdir": (self.data_dir / "hbase").as_uri(),
            "hbase.tmp.dir": str(self.data_dir / "tmp"),
            "hbase.zookeeper.quorum": HOST,
            "hbase.zookeeper.property.clientPort": str(HBASE_ZOOKEEPER),
            "hbase.zookeeper.property.dataDir": str(self.data_dir / "zookeeper"),
            "hbase.master.hostname": HOST,
            "hbase.regionserver.hostname": HOST,
            "hbase.master.port": str(HBASE_MASTER),
            "hbase.regionserver.port": str(HBASE_REGIONSERVER),
            "hbase.master.info.port": "-1",
            "hbase.regionserver.info.port": "-1",
            # The local filesystem has no hflush/hsync; HBase refuses it unless told otherwise.
            "hbase.unsafe.stream.capability.enforce": "false",
            # One region server in the same JVM: stop waiting for more as soon as it reports.
            "hbase.master.wait.on.regionservers.mintostart": "1",
            "hbase.master.wait.on.regionservers.maxtostart": "1",
            "hbase.master.wait.on.regionservers.timeout": "1000",
            # The master places regions only on a server that has sent a report (default 3 s).
            "hbase.regionserver.msginterval": "500",
        }

    def prepare(self) -> None:
        for path in (self.conf_dir, self.data_dir):
            path.mkdir(parents=True, exist_ok=True)
        props = "".join(
            f"  <property><name>{escape(k)}</name><value>{escape(v)}</value></property>\n" for k, v in self.site().items()
        )
        (self.conf_dir / "hbase-site.xml").write_text(f'<?xml version="1.0"?>\n<configuration>\n{props}</configuration>\n')
        (self.conf_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)

    def java_command(self, heap: list[str], conf_dir: Path, gateway_dir: Path, gateway_args: list[str]) -> list[str]:
        """``java … Thrift1Gateway ARGS`` on the gateway built in ``gateway_dir``, with
        ``conf_dir``'s hbase-site.xml and log4j.properties first on the classpath."""
        java = shutil.which("java")
        if java is None:
            raise InstallError("the HBase Thrift1 gateway runs on Java 17, and no java is on PATH")
        classpath = os.pathsep.join([str(conf_dir), str(gateway_dir / "classes"), f"{self.lib_dir}/*"])
        return [java, *heap, *JDK17_FLAGS, "-XX:+ExitOnOutOfMemoryError", "-cp", classpath, GATEWAY_CLASS, *gateway_args]

    def command(self) -> list[str]:
        return self.java_command(HEAP, self.conf_dir, self.gateway_dir, [
            "--local-cluster", "--stock-port", str(HBASE_THRIFT_STOCK), HOST, str(HBASE_THRIFT)])

    def probe(self) -> None:
        """Through Thrift, as the engine connects: check that the gateway has
        ``mutateRowsTsEach`` (one built before it was added does not), list tables, create the
        probe table once, write a row with ``mutateRowsTsEach`` and read it back; then that the
        stock port answers ``mutateRowsTsEach`` as an unknown method and reads the row back.

        Listing fails until the master has initialised; the write and the read fail until the
        region server serves the probe table's region.
        """
        conn = GatewayConnection(HOST, HBASE_THRIFT, PROBE_TIMEOUT_MS)
        try:
            client = conn.client
            if not has_extension(client):
                raise RuntimeError(f"the gateway on {HBASE_THRIFT} has no mutateRowsTsEach (an older build)")
            if PROBE_TABLE not in client.getTableNames():
                family = ColumnDescriptor(name=b"p:", maxVersions=1, compression="NONE", inMemory=False,
                                          bloomFilterType="NONE", blockCacheEnabled=True, timeToLive=-1)
                client.createTable(PROBE_TABLE, [family])
            written = Mutation(isDelete=False, column=b"p:c", value=b"up")
            client.mutateRowsTsEach(PROBE_TABLE, [BatchMutationTs(row=PROBE_ROW, mutations=[written], timestamp=1)])
            rows = client.getRow(PROBE_TABLE, PROBE_ROW, {})
            if not rows or b"p:c" not in (rows[0].columns or {}):
                raise RuntimeError(f"the probe row written to {PROBE_TABLE!r} does not read back: {rows!r}")
        finally:
            conn.close()
        stock = GatewayConnection(HOST, HBASE_THRIFT_STOCK, PROBE_TIMEOUT_MS)
        try:
            if has_extension(stock.client):
                raise RuntimeError(f"the gateway's stock port {HBASE_THRIFT_STOCK} has mutateRowsTsEach")
            rows = stock.client.getRow(PROBE_TABLE, PROBE_ROW, {})
            if not rows or b"p:c" not in (rows[0].columns or {}):
                raise RuntimeError(f"the probe row does not read back through the stock port: {rows!r}")
        finally:
            stock.close()

    # ---- process bookkeeping ----

    def pid(self) -> int | None:
        """The JVM's pid, or ``None`` when it has exited (a zombie counts as exited) or the
        pid now belongs to some other program (so ``down`` never signals a stranger)."""
        pid = super().pid()
        if pid is None:
            return None
        try:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped == pid:
                return None
        except ChildProcessError:
            pass  # not our child: started by another process, nothing to reap
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return None
        state = stat.rsplit(")", 1)[1].split()[0]
        if state == "Z" or GATEWAY_CLASS.encode() not in cmdline:
            return None
        return pid


def check_quorum(quorum: str) -> str:
    """``quorum`` if it is a ZooKeeper quorum HBase takes (``host[:port][,host[:port]…]``, every
    port 1-65535); else ``ValueError`` with the reason."""
    if not QUORUM_PATTERN.fullmatch(quorum):
        raise ValueError(f"ZooKeeper quorum {quorum!r} must be host[:port][,host[:port]...] (no chroot, no spaces)")
    for server in quorum.split(","):
        _, _, port = server.partition(":")
        if port and not 0 < int(port) < 65536:
            raise ValueError(f"ZooKeeper quorum {quorum!r}: port {port} is not 1-65535")
    return quorum


def gateway_command(quorum: str, port: int = GATEWAY_DEFAULT_PORT, *, bind: str = "0.0.0.0",
                    extension: bool = True, ctx: Context | None = None) -> list[str]:
    """Install and build the gateway if needed, write its configuration (the cluster's quorum)
    under the state directory's ``hbase-gateway/``, and return the argv that runs it alone
    against that cluster. Bad arguments raise ``ValueError`` before anything is installed.

    The jars are the local HBase's (``hbase/lib``); the build is the gateway's own
    (``hbase-gateway/gateway``), so building it never touches the classes a running local
    HBase was started from."""
    check_quorum(quorum)
    if not 0 < port < 65536:
        raise ValueError(f"gateway port {port} is not 1-65535")
    ctx = ctx or Context()
    service = HBaseService(ctx)
    service.install_jars()
    gateway_dir = ctx.service_dir("hbase-gateway") / "gateway"
    service.build_gateway(gateway_dir)
    conf_dir = ctx.service_dir("hbase-gateway") / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "hbase-site.xml").write_text(
        '<?xml version="1.0"?>\n<configuration>\n'
        f"  <property><name>hbase.zookeeper.quorum</name><value>{escape(quorum)}</value></property>\n"
        "</configuration>\n")
    (conf_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
    return service.java_command(GATEWAY_HEAP, conf_dir, gateway_dir,
                                [*([] if extension else ["--no-extension"]), bind, str(port)])


def run_gateway(quorum: str, port: int = GATEWAY_DEFAULT_PORT, *, bind: str = "0.0.0.0",
                extension: bool = True, ctx: Context | None = None) -> NoReturn:
    """Run nxnw's Thrift1 gateway in place of this process (``exec``), in front of the HBase
    cluster whose ZooKeeper quorum is ``quorum``: Thrift1 on ``bind:port``, with
    ``mutateRowsTsEach`` unless ``extension`` is false (then it answers as HBase's own Thrift
    server). It logs to stderr and stops on SIGTERM or Ctrl-C; it never returns."""
    argv = gateway_command(quorum, port, bind=bind, extension=extension, ctx=ctx)
    os.execv(argv[0], argv)
