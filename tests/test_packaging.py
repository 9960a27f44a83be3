"""The wheel an operator installs: it must carry the files the code opens at run time, and
an installed nxnw must keep its local state out of site-packages."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from nxnw.services.base import REPO_ROOT

#: Files read at run time: the gateway compiled at HBase's start, the spec the API serves
#: from, the wrk script of the benchmark, the Thrift IDL of the gateway's extension.
RUNTIME_FILES = [
    "nxnw/services/hbase_gateway/Thrift1Gateway.java",
    "nxnw/services/prerequisites.sh",
    "proxy/__init__.py",
    "proxy/openapi.yaml",
    "bench/wrk_entities.lua",
    "datastore/engines/nxnw_hbase.thrift",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(REPO_ROOT)], check=True, timeout=300)
    (found,) = out.glob("nxnw-*.whl")
    return found


def test_the_wheel_carries_every_file_read_at_run_time(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [f for f in RUNTIME_FILES if f not in names] == []


def test_an_installed_nxnw_keeps_its_state_under_xdg_not_site_packages(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("NXNW_STATE_DIR", "XDG_STATE_HOME")}
    probe = "from nxnw.services.base import default_state_dir; print(default_state_dir())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={**env, "PYTHONPATH": str(target), "HOME": str(tmp_path / "home")}).stdout.strip()
    assert out == str(tmp_path / "home" / ".local" / "state" / "nxnw" / "services")
    explicit = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path,
                              env={**env, "PYTHONPATH": str(target), "NXNW_STATE_DIR": str(tmp_path / "s")}).stdout
    assert explicit.strip() == str(tmp_path / "s")
