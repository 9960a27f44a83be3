"""Start, probe and stop one local service on loopback, idempotently.

This module owns the life of a service process: install on first use, write its config,
start it detached in its own session, wait until it answers a *real* request, and stop
it. It must never report a service as up on the strength of an open port alone, and it
must never download anything itself: installs go through the ordinary clients
(``apt-get``, ``mvn dependency:copy-dependencies``, ``pip``).

Failure handling: a service that does not answer within its deadline is reported with
its name, port and the tail of its log (``ServiceStartError``), and the process that was
started for it is killed so that a retry starts clean.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("nxnw.services")


class ServiceStartError(RuntimeError):
    """A service did not answer a real request before its deadline."""

    def __init__(self, name: str, port: int, reason: str, log_tail: str) -> None:
        super().__init__(f"{name} on 127.0.0.1:{port} is not up: {reason}\n--- tail of its log ---\n{log_tail}")
        self.name = name
        self.port = port


class InstallError(RuntimeError):
    """An install step (apt-get, mvn) failed; the message carries its output tail."""


def default_state_dir() -> Path:
    """``$NXNW_STATE_DIR``; else ``.cache/services`` in a source checkout; else the XDG state
    directory. Never inside an installed package's directory (site-packages)."""
    if "NXNW_STATE_DIR" in os.environ:
        return Path(os.environ["NXNW_STATE_DIR"])
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / ".cache" / "services"
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "nxnw" / "services"


@dataclass(frozen=True)
class Context:
    """Where services keep their state.

    ``state_dir`` (git-ignored, per checkout) holds configs, data, logs and pid files;
    ``maven_repo`` is Maven's local repository, shared across checkouts so that a fresh
    clone on the same machine downloads nothing twice.
    """

    state_dir: Path = field(default_factory=lambda: default_state_dir())
    maven_repo: Path = field(default_factory=lambda: Path(os.environ.get("NXNW_MAVEN_REPO", Path.home() / ".m2" / "repository")))

    def service_dir(self, name: str) -> Path:
        path = self.state_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def run_install(argv: list[str], what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run one install command; on failure raise with the reason and the output's tail."""
    proc = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise InstallError(f"installing {what} failed: `{' '.join(argv)}` exited {proc.returncode}\n{tail}")
    return proc.stdout


_apt_updated = False


def apt_install(packages: list[str], binaries: list[str], why: str = "") -> None:
    """Install Debian packages unless every binary they provide is already on PATH.

    Says in one line what it installs and why; without root it installs nothing and raises
    ``InstallError`` naming the command the operator has to run.
    """
    global _apt_updated
    if all(shutil.which(b) or Path(b).exists() for b in binaries):
        return
    what = " ".join(packages) + (f" ({why})" if why else "")
    if os.geteuid() != 0:
        raise InstallError(f"nxnw needs the Debian package(s) {what}. Run: sudo apt-get update && "
                           f"sudo apt-get install -y --no-install-recommends {' '.join(packages)}")
    log.warning("installing with apt-get: %s", what)
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        run_install(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"], "apt package lists", env=env)
        _apt_updated = True
    run_install(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends", *packages],
                ", ".join(packages), env=env)


def require_java_tools() -> None:
    """A JDK and Maven: the jar-based services are fetched with ``mvn`` and run on Java 17."""
    apt_install(["openjdk-17-jdk-headless"], ["javac"], "Java 17 runs ZooKeeper, Cassandra and HBase")
    apt_install(["maven"], ["mvn"], "fetches the ZooKeeper, Cassandra and HBase jars")


def maven_classpath(ctx: Context, artifacts: list[str], dest: Path, excludes: str = "") -> Path:
    """Resolve ``artifacts`` and all their runtime dependencies into ``dest`` (one jar each).

    A throwaway pom lists the artifacts; ``dependency:copy-dependencies`` does the
    resolving, so no URL is ever built by hand. A marker file makes the step idempotent.
    """
    marker = dest / ".complete"
    wanted = "\n".join(artifacts) + "|" + excludes
    if marker.exists() and marker.read_text() == wanted:
        return dest
    require_java_tools()
    dest.mkdir(parents=True, exist_ok=True)
    deps = []
    for art in artifacts:
        group, name, version = art.split(":")[:3]
        deps.append(f"<dependency><groupId>{group}</groupId><artifactId>{name}</artifactId><version>{version}</version></dependency>")
    pom = dest.parent / f"{dest.name}-pom.xml"
    pom.write_text(
        "<project xmlns='http://maven.apache.org/POM/4.0.0'><modelVersion>4.0.0</modelVersion>"
        "<groupId>nxnw.local</groupId><artifactId>classpath</artifactId><version>1</version>"
        f"<dependencies>{''.join(deps)}</dependencies></project>"
    )
    argv = ["mvn", "-q", "-B", f"-Dmaven.repo.local={ctx.maven_repo}", "-f", str(pom),
            "dependency:copy-dependencies", f"-DoutputDirectory={dest}", "-DincludeScope=runtime"]
    if excludes:
        argv.append(f"-DexcludeArtifactIds={excludes}")
    run_install(argv, ", ".join(artifacts))
    marker.write_text(wanted)
    return dest


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Service(ABC):
    """One local service: subclasses say how to install, configure, start and probe it."""

    name: str
    port: int
    start_timeout: float = 60.0
    #: Client-library loggers that report every refused connection while ``up`` polls a
    #: starting server; silenced during probes, whose own exception carries the reason.
    probe_loggers: tuple[str, ...] = ()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.dir = ctx.service_dir(self.name)
        self.log_path = self.dir / "service.log"
        self.pid_path = self.dir / "service.pid"

    @abstractmethod
    def install(self) -> None:
        """Install binaries or jars on first use; a no-op when they are already there."""

    @abstractmethod
    def command(self) -> list[str]:
        """The argv that runs the service in the foreground (it is detached by ``up``)."""

    @abstractmethod
    def probe(self) -> None:
        """Make one real request (a CQL query, a Thrift call, …); raise if it fails."""

    def prepare(self) -> None:
        """Write config files and data directories before a start."""

    def env(self) -> dict[str, str]:
        return {}

    def after_start(self) -> None:
        """Create what the tests and the demo expect (keyspaces, zones) once the probe passes."""

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            # Reap it if it is our own exited child: a zombie still answers kill(pid, 0).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return None
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def _quiet_probe(self) -> None:
        loggers = [logging.getLogger(name) for name in self.probe_loggers]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        try:
            self.probe()
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)

    def healthy(self) -> bool:
        try:
            self._quiet_probe()
        except Exception:
            return False
        return True

    def up(self) -> float:
        """Start unless already answering; return the seconds it took (0 when it was up)."""
        if self.healthy():
            return 0.0
        self.install()
        return self.start()

    def start(self) -> float:
        """Start an installed service that does not answer; return the seconds until it did."""
        started = time.monotonic()
        self.down()
        self.prepare()
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.command(), cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env={**os.environ, **self.env()}, start_new_session=True,
            )
        self.pid_path.write_text(str(proc.pid))
        deadline = started + self.start_timeout
        reason = "no answer"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                reason = f"process exited with status {proc.returncode}"
                break
            try:
                self._quiet_probe()
            except Exception as exc:  # the probe's failure is the reason we report
                reason = f"{type(exc).__name__}: {exc}"
                time.sleep(0.5)
                continue
            self.after_start()
            return time.monotonic() - started
        self.down()
        raise ServiceStartError(self.name, self.port, reason, log_tail(self.log_path))

    def down(self) -> None:
        """Stop the process group started by ``up`` (TERM, then KILL after 15 s)."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.2)
        if self.pid() is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.pid_path.unlink(missing_ok=True)
