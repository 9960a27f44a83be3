"""What the README's two commands do on a machine that lacks a JDK, Maven or python3-venv.

Run as an unprivileged user with a PATH that has no ``javac`` or ``mvn``: nothing may be
installed, and the one line printed must name each package, why it is needed, and the
command that installs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nxnw.services.base import REPO_ROOT

SCRIPT = REPO_ROOT / "nxnw" / "services" / "prerequisites.sh"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def bare_path() -> Iterator[Path]:
    """A PATH holding only a shell, ``id`` and Debian's python3: no JDK, no Maven.

    Made directly under /tmp: pytest's own temporary directories are closed to other users.
    """
    with tempfile.TemporaryDirectory(prefix="nxnw-bare-path-") as name:
        path = Path(name)
        path.chmod(0o755)
        for tool in ("sh", "id", "python3"):
            (path / tool).symlink_to(f"/usr/bin/{tool}")
        yield path


def test_without_root_names_the_missing_packages_and_the_command(bare_path: Path) -> None:
    proc = subprocess.run([*NOBODY, "env", "-i", f"PATH={bare_path}", "sh", str(SCRIPT)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "openjdk-17-jdk-headless (Java 17 runs ZooKeeper, Cassandra and HBase)" in lines[0]
    assert "maven (fetches" in lines[0]
    assert lines[0].endswith("sudo apt-get install -y --no-install-recommends openjdk-17-jdk-headless maven")
    assert proc.stdout == ""


def test_silent_when_everything_is_there() -> None:
    proc = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable})
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_service_install_without_root_says_what_to_run() -> None:
    """A service whose Debian package is missing, started by a user who cannot install it."""
    code = ("from nxnw.services.base import apt_install, InstallError\n"
            "try:\n"
            "    apt_install(['nxnw-missing-pkg'], ['/nonexistent/nxnw-binary'], 'a test of the message')\n"
            "except InstallError as exc:\n"
            "    print(exc)\n")
    proc = subprocess.run([*NOBODY, "/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=REPO_ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ("nxnw needs the Debian package(s) nxnw-missing-pkg (a test of the message). Run: "
                                   "sudo apt-get update && sudo apt-get install -y --no-install-recommends "
                                   "nxnw-missing-pkg")
