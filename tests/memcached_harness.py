"""A memcached of one test's own, for tests that flush, kill or slow a server: doing that to
the shared ones would disturb every other test."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

from nxnw.fleet import free_port
from nxnw.services.endpoints import HOST


@contextmanager
def memcached_process(port: int | None = None) -> Iterator[tuple[str, int]]:
    """A memcached on ``port`` (or a free loopback port), answering before it is yielded;
    killed at the end."""
    port = port or free_port(HOST)
    as_user = ["-u", "nobody"] if os.geteuid() == 0 else []  # memcached refuses to run as root
    proc = subprocess.Popen(["memcached", *as_user, "-l", HOST, "-p", str(port), "-U", "0", "-m", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"memcached on {port} exited with {proc.returncode}"
                assert time.monotonic() < deadline, f"memcached on {port} did not start within 30 s"
                time.sleep(0.05)
        yield HOST, port
    finally:
        proc.kill()
        proc.wait(10)
