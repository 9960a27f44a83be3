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


def test_copy_and_verify_with_a_scheduler_that_does_not_answer_stop_before_anything_is_written(tmp_path) -> None:
    target = tmp_path / "n2.db"
    proc = nxnw("snapshot", "copy", "--from", f"sqlite:///{tmp_path / 'n1.db'}", "--to", f"sqlite:///{target}",
                "--app", "a", "--scheduler", "tcp://127.0.0.1:9")
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nxnw snapshot: Dask scheduler at tcp://127.0.0.1:9 did not answer")
    assert not target.exists()
    bad = nxnw("snapshot", "copy", "--from", "sqlite:///x", "--to", "sqlite:///y", "--app", "a", "--scheduler", "bogus")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == ("nxnw snapshot copy: error: argument --scheduler: 'bogus' is not a "
                                                   "Dask scheduler address (tcp://host:port or tls://host:port)")
