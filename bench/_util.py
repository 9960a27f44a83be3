"""Small helpers shared by the benchmarks: percentiles, medians, free ports, JSON figures.

Nothing here measures anything or starts a service; it must never assert a time.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def pct(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def cpu_ns(pid: int) -> int:
    """CPU time process ``pid`` has run so far, all its live threads, in ns (Linux
    ``schedstat``): per request, a figure the machine's load hardly moves, unlike latency."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total


def machine() -> str:
    """One line naming the machine the figures come from."""
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def write_json(path: str | None, figures: dict[str, Any]) -> None:
    """Write a benchmark's figures for ``python -m bench``'s final table (when asked to)."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=1, sort_keys=True))


def fmt(value: float | None, spec: str = ",.0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)
