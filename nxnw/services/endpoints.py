"""The loopback addresses of every local service, in one place.

Tests, the demo and ``bench/`` read endpoints from here rather than repeating port
numbers. Ports sit away from each product's default so that a system-wide install of the
same product (a Debian memcached on 11211, say) never answers in our place.
"""

from __future__ import annotations

HOST = "127.0.0.1"

MEMCACHED = {"n1": 21211, "n2": 21212}
ZOOKEEPER = {"n1": 21811, "n2": 21812}

CASSANDRA_CQL = 19042
CASSANDRA_STORAGE = 17000
CASSANDRA_JMX = 17199
#: One Cassandra node holds both deployments, each in its own keyspace.
CASSANDRA_KEYSPACES = {"n1": "nxnw_n1", "n2": "nxnw_n2"}

HBASE_ZOOKEEPER = 21813
HBASE_MASTER = 16100
HBASE_REGIONSERVER = 16120
HBASE_THRIFT = 19090
#: The same gateway answering as HBase's stock Thrift server (no ``mutateRowsTsEach``).
HBASE_THRIFT_STOCK = 19091
#: One HBase holds both deployments, each under its own table prefix; ``hbase-stock``
#: (the stock port) has prefixes of its own, so its tables never mix with ``hbase``'s.
HBASE_TABLE_PREFIXES = {"n1": "nxnw_n1_", "n2": "nxnw_n2_"}
HBASE_STOCK_TABLE_PREFIXES = {"n1": "nxnw_stock_n1_", "n2": "nxnw_stock_n2_"}

BIND_DNS = 15353
BIND_ZONE = "nxnw.test."
BIND_TSIG_NAME = "nxnw-key."
BIND_TSIG_ALGORITHM = "hmac-sha256"
#: Test-only key; a production plan names its own in the config file.
BIND_TSIG_SECRET = "bnhudy10ZXN0LXRzaWcta2V5LW5vdC1mb3ItcHJvZHVjdGlvbg=="

MOTO = 15000


def engine_url(engine: str, deployment: str, sqlite_dir: str) -> str:
    """The URL of deployment ``n1``/``n2`` on one of the local engines."""
    if engine == "sqlite":
        return f"sqlite:///{sqlite_dir}/{deployment}.db"
    if engine == "cassandra":
        return f"cassandra://{HOST}:{CASSANDRA_CQL}/{CASSANDRA_KEYSPACES[deployment]}"
    if engine == "hbase":
        return f"hbase://{HOST}:{HBASE_THRIFT}/{HBASE_TABLE_PREFIXES[deployment]}"
    if engine == "hbase-stock":
        return f"hbase://{HOST}:{HBASE_THRIFT_STOCK}/{HBASE_STOCK_TABLE_PREFIXES[deployment]}"
    raise ValueError(f"engine {engine!r} is not one of: sqlite, cassandra, hbase, hbase-stock")
