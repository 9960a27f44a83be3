"""The command line as an operator meets it: the version, and one readable line for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nxnw import __version__
from nxnw.services.endpoints import ZOOKEEPER
from tests.conftest import require, run_nxnw


def nxnw(*argv: str) -> subprocess.CompletedProcess[str]:
    return run_nxnw(*argv, timeout=120)


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


def _plan_with_zookeepers(tmp_path: Path, n1: str, n2: str) -> Path:
    plan = tmp_path / "plan.toml"
    plan.write_text(f'name = "cli-{tmp_path.name}"\napps = ["a"]\nsync_paths = ["/apps/a"]\n\n'
                    f'[n1]\nengine = "sqlite:///{tmp_path / "n1.db"}"\nzookeeper = "{n1}"\nmemcached = "127.0.0.1:9"\n\n'
                    f'[n2]\nengine = "sqlite:///{tmp_path / "n2.db"}"\nzookeeper = "{n2}"\nmemcached = "127.0.0.1:9"\n')
    return plan


def test_an_unreachable_zookeeper_is_one_line_with_no_library_warning_above_it(tmp_path) -> None:
    plan = _plan_with_zookeepers(tmp_path, "127.0.0.1:1", "127.0.0.1:2")
    status = nxnw("status", str(plan))
    assert status.returncode == 2
    assert (status.stdout + status.stderr).strip().splitlines() == [
        "nxnw status: N1's ZooKeeper at 127.0.0.1:1 did not answer within 8 s (KazooTimeoutError)"]
    migrate = nxnw("migrate", str(plan))
    assert migrate.returncode == 2
    assert (migrate.stdout + migrate.stderr).strip().splitlines() == [
        "nxnw migrate: 2 problem(s) before anything was changed:",
        "n1.zookeeper: N1's ZooKeeper at 127.0.0.1:1 did not answer within 8 s (KazooTimeoutError)",
        "n2.zookeeper: N2's ZooKeeper at 127.0.0.1:2 did not answer within 8 s (KazooTimeoutError)"]


def test_nxnw_log_asks_for_the_library_warnings_again(tmp_path) -> None:
    plan = _plan_with_zookeepers(tmp_path, "127.0.0.1:1", "127.0.0.1:2")
    proc = subprocess.run([sys.executable, "-m", "nxnw.cli", "status", str(plan)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NXNW_LOG": "warning"})
    assert proc.returncode == 2
    assert "kazoo.client WARNING" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("nxnw status: N1's ZooKeeper at 127.0.0.1:1 did not answer")


def test_an_unreachable_cassandra_is_one_line_with_no_driver_traceback_above_it(tmp_path) -> None:
    plan = _plan_with_zookeepers(tmp_path, f"127.0.0.1:{ZOOKEEPER['n1']}", f"127.0.0.1:{ZOOKEEPER['n2']}")
    plan.write_text(plan.read_text().replace(f'engine = "sqlite:///{tmp_path / "n1.db"}"',
                                             'engine = "cassandra://127.0.0.1:1/unreachable"'))
    require("zookeeper-n1", "zookeeper-n2")
    proc = nxnw("migrate", str(plan))
    assert proc.returncode == 2
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert lines[0] == "nxnw migrate: 1 problem(s) before anything was changed:", lines
    assert len(lines) == 2 and lines[1].startswith("n1.engine: cannot open cassandra://127.0.0.1:1/unreachable: "), lines


def test_counts_of_zero_or_below_are_refused_before_anything_starts(tmp_path) -> None:
    """``snapshot copy --workers 0`` waited forever for a worker, and ``demo --tamper-n2 -1``
    ran a whole migration to report it FAILED: each is one error line and exit 2 now."""
    target = tmp_path / "n2.db"
    copy = ["snapshot", "copy", "--from", f"sqlite:///{tmp_path / 'n1.db'}", "--to", f"sqlite:///{target}", "--app", "a"]
    cases = [((*copy, "--workers", "0"), "nxnw snapshot copy: error: argument --workers: must be at least 1, got 0"),
             ((*copy, "--ranges", "-3"), "nxnw snapshot copy: error: argument --ranges: must be at least 1, got -3"),
             (("snapshot", "load", "--to", f"sqlite:///{target}", "--in", "x", "--workers", "2.5"),
              "nxnw snapshot load: error: argument --workers: '2.5' is not a whole number"),
             (("demo", "--tamper-n2", "-1"), "nxnw demo: error: argument --tamper-n2: must be at least 0, got -1"),
             (("demo", "--clients", "0"), "nxnw demo: error: argument --clients: must be at least 1, got 0")]
    for argv, line in cases:
        proc = nxnw(*argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert proc.stderr.strip().splitlines()[-1] == line
    assert not target.exists()


def test_a_copy_from_an_engine_onto_itself_is_refused(tmp_path) -> None:
    """It ran, read every row and wrote it back onto itself (an operator's typo, reported
    as a successful copy)."""
    engine = f"sqlite:///{tmp_path / 'n1.db'}"
    same = nxnw("snapshot", "copy", "--from", engine, "--to", engine, "--app", "a")
    assert same.returncode == 2
    assert (same.stdout + same.stderr).strip().splitlines() == [
        f"nxnw snapshot: --from and --to name the same engine '{engine}': a copy needs two"]
    assert not (tmp_path / "n1.db").exists()


def test_an_unknown_service_is_named_in_one_line_without_quotes_around_it() -> None:
    proc = nxnw("services", "up", "bogus")
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).strip().splitlines() == [
        "nxnw services: unknown service 'bogus'; known: memcached-n1, memcached-n2, zookeeper-n1, zookeeper-n2, "
        "cassandra, hbase, bind, moto"]
