"""The Cassandra engine over TLS, against the shared node's optional client encryption.

The node (``nxnw/services/cassandra.py``) accepts plain and TLS clients on one port, with a
certificate signed by a local CA it makes at start. A node started before that setting
existed has no TLS until it is restarted: the test then skips, saying so. Password
authentication cannot be switched on on the shared node (every other test would need
credentials); its wiring is checked in ``test_security_secrets.py``.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from pathlib import Path

import pytest

from datastore import Entity, EngineUnavailable, EntityRef, open_engine
from nxnw import services
from nxnw.services.endpoints import CASSANDRA_CQL, HOST, engine_url
from tests.conftest import require
from tests.test_security_tls import TestCA


def _speaks_tls(ca: Path) -> bool:
    """Whether the node completes a TLS handshake on its CQL port with its CA."""
    if not ca.exists():
        return False
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((HOST, CASSANDRA_CQL), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=HOST):
                return True
    except (OSError, ssl.SSLError):
        return False


async def test_the_engine_reaches_cassandra_over_tls_with_the_nodes_ca_and_not_with_another(tmp_path):
    require("cassandra")
    ca = services.service("cassandra").tls_ca
    if not _speaks_tls(ca):
        pytest.skip("the shared Cassandra node has no client TLS yet: it was started before nxnw/services/cassandra.py "
                    "configured it; restart it (`nxnw services down cassandra && nxnw services up cassandra`)")
    app = f"t_{uuid.uuid4().hex[:12]}"
    engine = open_engine(f"{engine_url('cassandra', 'n1', str(tmp_path))}?tls=true&tls_ca={ca}")
    await engine.open()
    try:
        await engine.apply([Entity(app, "Item", b"k", b"over tls", 1_000)])
        assert (await engine.get(EntityRef(app, "Item", b"k"))).value == b"over tls"
    finally:
        await engine.drop_app(app)
        await engine.close()
    stranger = TestCA(tmp_path, "stranger")
    refused = open_engine(f"{engine_url('cassandra', 'n1', str(tmp_path))}?tls=true&tls_ca={stranger.files.cert}")
    with pytest.raises(EngineUnavailable, match="cannot connect"):
        await refused.open()
