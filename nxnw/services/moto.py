"""moto's server mode on loopback, standing in for the Route 53 API.

This module is responsible for running ``moto.server`` from the project's own
interpreter on :data:`endpoints.MOTO` and proving that a real boto3 Route 53 call is
answered. The same boto3 code in ``dns_handoff`` talks to real AWS when given a real
endpoint; only the endpoint URL and credentials differ.

It must never install moto itself (moto is a test dependency: ``pip install -e .[test]``)
and never reach AWS: the probe names the loopback endpoint and dummy credentials
explicitly, so a developer's own AWS profile is never read or used. moto keeps its state
in memory: every start begins with no hosted zones.
"""

from __future__ import annotations

import importlib.util
import sys

import boto3
from botocore.config import Config

from nxnw.services import endpoints
from nxnw.services.base import InstallError, Service

ENDPOINT_URL = f"http://{endpoints.HOST}:{endpoints.MOTO}"
#: moto accepts any credentials; these are named so that no real ones are ever looked up.
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"


class MotoService(Service):
    """moto server for the Route 53 API on 127.0.0.1:15000."""

    name = "moto"
    port = endpoints.MOTO
    start_timeout = 30.0

    def install(self) -> None:
        if importlib.util.find_spec("moto.server") is None or importlib.util.find_spec("flask") is None:
            raise InstallError(
                f"moto's server mode is not installed for {sys.executable}: "
                "run `pip install -e .[test]` (it brings moto[server])"
            )

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", endpoints.HOST, "-p", str(self.port)]

    def probe(self) -> None:
        client = boto3.client(
            "route53", endpoint_url=ENDPOINT_URL, region_name=REGION, **DUMMY_CREDENTIALS,
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
        )
        client.list_hosted_zones()
