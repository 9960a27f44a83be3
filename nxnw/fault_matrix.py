"""``make faults``: the fault campaign's matrix, faults × phases × engine pairs, one demo per cell.

Each cell is one short ``nxnw demo`` (a small seed, a short DNS TTL) with one fault in one
phase; its whole output goes to ``<out>/<pair>/<fault>@<phase>.log`` and the terminal gets
one line per cell, then the table: acknowledged ops, lost, resurrected, stale, phantom,
other anomalies, the final verify and the result. A cell passes only when the history
checker found nothing, the final verify found N1 and N2 identical, the migration reached
``complete`` and the fault was injected. A fault that cannot apply to a pair (N2's engine
down when N1 and N2 share one server) is shown as ``n/a`` with the reason, not run.

The exit status is 0 only when every cell that ran passed. This module never weakens a
cell to make it pass: what a cell finds is printed, with the path of its log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from nxnw.demo import DemoOptions, run_demo
from nxnw.faults import FAULT_PHASES, FAULTS
from nxnw.services.base import REPO_ROOT

PAIRS = ("sqlite:sqlite", "cassandra:hbase")


@dataclass
class Cell:
    pair: str
    fault: str
    phase: str
    figures: dict[str, Any] | None = None
    ok: bool = False
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0
    log: Path | None = None

    def count(self, *names: str) -> int:
        figures = self.figures or {}
        return sum(int(figures.get(name) or 0) for name in names)

    @property
    def acknowledged(self) -> int:
        return self.count("acknowledged writes", "acknowledged deletes", "reads", "cache ops")

    @property
    def lost(self) -> int:
        return self.count("lost writes")

    @property
    def resurrected(self) -> int:
        return self.count("resurrected deletes")

    @property
    def stale(self) -> int:
        return self.count("stale reads", "stale cache reads")

    @property
    def phantom(self) -> int:
        return self.count("phantom reads", "phantom cache reads")

    @property
    def other(self) -> int:
        return self.count("wrong value reads", "unknown writes")

    @property
    def result(self) -> str:
        return "n/a" if self.skipped else "ERROR" if self.error else "ok" if self.ok else "FAILED"

    @property
    def why(self) -> str:
        """What made the cell fail (or not run), in full."""
        if self.skipped:
            return self.skipped
        if self.error:
            return self.error
        figures = self.figures or {}
        why = [f"{self.lost} lost, {self.resurrected} resurrected, {self.stale} stale, {self.phantom} phantom, "
               f"{self.other} other anomalies" if self.lost + self.resurrected + self.stale + self.phantom + self.other
               else "",
               f"final verify: {figures['final verify']}" if figures.get("final verify") != "identical" else "",
               f"stuck: {figures['migration stuck']}" if figures.get("migration stuck", "no") != "no" else "",
               f"final phase {figures.get('final phase')}" if figures.get("final phase") != "complete" else "",
               f"{figures['faults not injected']}" if figures.get("faults not injected", "none") != "none" else ""]
        return "; ".join(w for w in why if w)


async def run_cell(cell: Cell, out: Path, entities: int, keys: int) -> None:
    source, target = cell.pair.split(":")
    reason = FAULTS[cell.fault].applies(source, target)
    if reason is not None:
        cell.skipped = reason
        return
    cell.log = out / cell.pair.replace(":", "-to-") / f"{cell.fault}@{cell.phase}.log"
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    options = DemoOptions(source=source, target=target, seed_entities=entities, keys=keys, ttl=1,
                          faults=[(cell.fault, cell.phase)])
    started = time.monotonic()
    with open(cell.log, "w") as log, contextlib.redirect_stdout(log):
        try:
            cell.figures, cell.ok = await run_demo(options)
            for name, value in cell.figures.items():
                print(f"{name}: {value}")
        except Exception as exc:  # a cell that crashes is a finding too; the next cell still runs
            cell.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"cell failed: {cell.error}")
    cell.seconds = time.monotonic() - started


def table(cells: list[Cell]) -> Table:
    out = Table("pair", "fault", "phase", "acked ops", "lost", "resurrected", "stale", "phantom", "other", "s",
                "result", title="fault matrix")
    for c in cells:
        ran = c.figures is not None
        numbers = [str(v) if ran else "-" for v in (c.acknowledged, c.lost, c.resurrected, c.stale, c.phantom, c.other)]
        out.add_row(c.pair, c.fault, c.phase, *numbers, f"{c.seconds:.0f}", c.result)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nxnw.fault_matrix",
                                     description="Run the fault campaign: every fault in every phase, per engine pair.")
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), metavar="N1:N2",
                        help=f"engine pairs (default: {' '.join(PAIRS)})")
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=list(FAULTS), metavar="FAULT",
                        help=f"faults (default all: {' '.join(FAULTS)})")
    parser.add_argument("--phases", nargs="+", default=list(FAULT_PHASES), choices=list(FAULT_PHASES), metavar="PHASE",
                        help=f"phases (default all: {' '.join(FAULT_PHASES)})")
    parser.add_argument("--entities", type=int, default=300, help="entities seeded on N1 per cell (default 300)")
    parser.add_argument("--keys", type=int, default=100, help="keys the workload uses per cell (default 100)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the cells' logs")
    args = parser.parse_args(argv)
    engines = ("sqlite", "cassandra", "hbase")
    for pair in args.pairs:
        source, _, target = pair.partition(":")
        if source not in engines or target not in engines:
            parser.error(f"pair {pair!r} must be N1:N2 with each one of {', '.join(engines)}")
    return args


async def run_matrix(args: argparse.Namespace, console: Console) -> list[Cell]:
    out = args.out or REPO_ROOT / ".cache" / "faults" / time.strftime("%Y%m%d-%H%M%S")
    cells = [Cell(pair, fault, phase) for pair in args.pairs for fault in args.faults for phase in args.phases]
    console.print(f"{len(cells)} cells; logs in {out}", markup=False)
    started = time.monotonic()
    for n, cell in enumerate(cells, 1):
        await run_cell(cell, out, args.entities, args.keys)
        detail = f": {cell.why}" if cell.result != "ok" else ""
        console.print(f"[{n}/{len(cells)}] {cell.pair} {cell.fault} in {cell.phase}: {cell.result}{detail} "
                      f"({cell.seconds:.0f} s){f'; log {cell.log}' if cell.log and not cell.ok else ''}",
                      markup=False, highlight=False)
    console.print(f"matrix took {(time.monotonic() - started) / 60:.1f} min", markup=False)
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(soft_wrap=True)
    console.width = max(console.width, 130)  # the table is read in CI logs too, not only on a terminal
    cells = asyncio.run(run_matrix(args, console))
    console.print(table(cells))
    failed = [c for c in cells if not c.skipped and not c.ok]
    for c in cells:
        if c.result != "ok":
            console.print(f"{c.pair} {c.fault} in {c.phase}: {c.result}: {c.why}"
                          f"{f' (log {c.log})' if c.log else ''}", markup=False, highlight=False)
    console.print(f"{len(failed)} of {sum(1 for c in cells if not c.skipped)} cells failed" if failed
                  else "every cell passed", markup=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
