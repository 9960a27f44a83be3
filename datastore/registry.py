"""Map an engine URL to its engine class, importing the engine only when it is used.

URLs: ``sqlite:///path/to/n1.db``, ``cassandra://host:port/keyspace``,
``hbase://host:port/table_prefix``. An unknown scheme is refused here, before any
connection is made.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from datastore.engine import Engine

ENGINES = {
    "sqlite": "datastore.engines.sqlite:SqliteEngine",
    "cassandra": "datastore.engines.cassandra:CassandraEngine",
    "hbase": "datastore.engines.hbase:HBaseEngine",
}


class UnknownEngine(ValueError):
    """The URL names an engine nxnw does not have."""


def engine_class(url: str) -> type[Engine]:
    scheme = urlsplit(url).scheme
    if scheme not in ENGINES:
        raise UnknownEngine(f"engine {scheme!r} in {url!r} is not one of: {', '.join(sorted(ENGINES))}")
    module, _, name = ENGINES[scheme].partition(":")
    return getattr(importlib.import_module(module), name)


def open_engine(url: str) -> Engine:
    """Build (not yet connect) the engine for ``url``; ``await engine.open()`` connects."""
    return engine_class(url)(url)
