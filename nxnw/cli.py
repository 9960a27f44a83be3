"""The ``nxnw`` command line: one verb per operator step, one readable line per error.

Every failure an operator can cause or meet (a bad flag, a service that will not start,
a bad plan file) ends with exit status 2 and a single line saying what and why; a
traceback means a bug in nxnw.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from nxnw import services

console = Console(stderr=True)


def _services_up(args: argparse.Namespace) -> int:
    with console.status("starting services (first run installs them; that takes a few minutes)…"):
        took = services.up(args.names or None)
    table = Table("service", "start", title="local services on 127.0.0.1")
    for name, seconds in took.items():
        table.add_row(name, "already up" if seconds == 0 else f"started in {seconds:.1f} s")
    Console().print(table)
    return 0


def _services_down(args: argparse.Namespace) -> int:
    services.down(args.names or None)
    return 0


def _services_status(args: argparse.Namespace) -> int:
    state = services.status()
    table = Table("service", "state")
    for name, ok in state.items():
        table.add_row(name, "[green]up[/]" if ok else "[red]down[/]")
    Console().print(table)
    return 0 if all(state.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nxnw",
        description="Live migration of a PaaS data tier (datastore, memcache, ZooKeeper) from "
        "deployment N1 to N2, with applications reading and writing throughout.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    svc = verbs.add_parser("services", help="install, start, stop and check the local services on loopback")
    svc_verbs = svc.add_subparsers(dest="action", metavar="ACTION")
    svc_verbs.required = True
    names_help = f"services to act on (default: all of {', '.join(services.SERVICES)})"
    for action, func, text in [
        ("up", _services_up, "install on first use and start; returns when each answers a real request"),
        ("down", _services_down, "stop the services started by `up`"),
        ("status", _services_status, "probe each service with a real request (exit 1 if any is down)"),
    ]:
        p = svc_verbs.add_parser(action, help=text)
        p.add_argument("names", nargs="*", help=names_help)
        p.set_defaults(func=func)
    return parser


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except KeyboardInterrupt:
        console.print("nxnw: interrupted")
        return 130
    except (services.ServicesDown, KeyError, ValueError, OSError) as exc:
        first, _, rest = str(exc).partition("\n")
        console.print(f"nxnw {args.verb}: {first}", markup=False, highlight=False)
        if rest:
            console.print(rest, markup=False, highlight=False)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
