"""The command line as an operator meets it: the version, and one readable line for bad input."""

from __future__ import annotations

import subprocess
import sys

from nxnw import __version__


def nxnw(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nxnw.cli", *argv], capture_output=True, text=True, timeout=120)


def test_version_names_the_package_version() -> None:
    proc = nxnw("--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"nxnw {__version__}")


def test_a_bad_quorum_for_the_hbase_gateway_is_one_line_and_exit_2_before_anything_is_installed() -> None:
    proc = nxnw("hbase-gateway", "--zookeeper", "bad quorum!")
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines == ["nxnw hbase-gateway: ZooKeeper quorum 'bad quorum!' must be host[:port][,host[:port]...] "
                     "(no chroot, no spaces)"]
