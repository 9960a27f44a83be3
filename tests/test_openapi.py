"""``proxy/openapi.yaml`` is the contract clients code against: it must validate, describe
every route the server registers (and no other), and its examples and the proxy's real
answers must match the schemas it gives."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from aiohttp import web
from openapi_spec_validator import validate

from nxnw.services.endpoints import engine_url
from proxy.api import add_routes
from tests.conftest import require
from tests.proxy_harness import TEST_PLAN, key_path, proxy_config, register_plan, running_proxy, zk_namespace

SPEC_PATH = Path(__file__).resolve().parents[1] / "proxy" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
METHODS = ("get", "put", "post", "delete", "patch", "head")


def _inline(node: Any) -> Any:
    """The node with every local ``$ref`` replaced by what it points to (the spec has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = SPEC
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _inline(copy.deepcopy(target))
        return {k: _inline(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v) for v in node]
    return node


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): _inline(item[method])
            for path, item in SPEC["paths"].items() for method in METHODS if method in item}


def _response_schema(method: str, path: str, status: int, media: str = "application/json") -> dict[str, Any]:
    response = _operations()[(method, path)]["responses"][str(status)]
    return response["content"][media]["schema"]


def test_the_spec_validates() -> None:
    validate(SPEC)


def test_every_registered_route_is_in_the_spec_and_nothing_else() -> None:
    app = web.Application()
    add_routes(app)
    served = {(route.method, route.resource.canonical) for route in app.router.routes()
              if route.method != "HEAD" and route.resource is not None}
    assert served == set(_operations())


def test_every_operation_documents_its_errors_and_admin_ones_their_token() -> None:
    for (method, path), op in _operations().items():
        codes = set(op["responses"])
        assert "200" in codes, (method, path)
        if path.startswith("/admin/"):
            assert op.get("security") == [{"admin": []}], (method, path)
            assert "401" in codes, (method, path)
        if "{" in path:
            assert "400" in codes, f"{method} {path} takes input but documents no 400"


def _examples() -> list[tuple[str, dict[str, Any], Any]]:
    found = []
    for (method, path), op in _operations().items():
        body = op.get("requestBody", {}).get("content", {})
        for media, content in body.items():
            if "example" in content:
                found.append((f"{method} {path} request {media}", content["schema"], content["example"]))
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                if "example" in content:
                    found.append((f"{method} {path} {status} {media}", content["schema"], content["example"]))
    return found


def test_there_are_examples_and_each_matches_its_schema() -> None:
    examples = _examples()
    assert len(examples) >= 15
    for where, schema, example in examples:
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(example)]
        assert errors == [], where


async def test_the_proxy_answers_as_the_spec_says(sqlite_dir: str, app_name: str) -> None:
    """Real answers of a real proxy (sqlite N1 and N2, real ZooKeeper and memcached), each
    checked against the schema the spec gives for its route and status."""
    require("zookeeper-n1", "zookeeper-n2", "memcached-n1", "memcached-n2")

    def check(method: str, path: str, status: int, body: Any) -> None:
        errors = [e.message for e in jsonschema.Draft202012Validator(
            _response_schema(method, path, status)).iter_errors(body)]
        assert errors == [], (method, path, status, body)

    entity = "/v1/apps/{app}/kinds/{kind}/entities/{key}"
    cache = "/v1/cache/{key}"
    async with zk_namespace() as (zk_hosts, zk):
        register_plan(zk, [app_name])
        config = proxy_config("openapi", engine_url("sqlite", "n1", sqlite_dir),
                              engine_url("sqlite", "n2", sqlite_dir), zk_hosts)
        async with running_proxy(config) as (_, http):
            admin = {"Authorization": "Bearer test-token"}
            path = key_path(app_name, "Guest", b"k")
            async with http.put(path, data=b"v") as r:
                check("PUT", entity, r.status, await r.json())
            async with http.get(key_path(app_name, "Guest", b"absent")) as r:
                check("GET", entity, r.status, await r.json())
            async with http.get("/v1/apps/Bad!/kinds/K/entities/aw") as r:
                check("GET", entity, r.status, await r.json())
            writes = [{"kind": "Guest", "key": base64.b64encode(b"b").decode(), "value": "YQ=="}]
            async with http.post(f"/v1/apps/{app_name}/batch", json={"writes": writes}) as r:
                check("POST", "/v1/apps/{app}/batch", r.status, await r.json())
            tx = {"group": "g", "reads": [{"kind": "Guest", "key": base64.b64encode(b"b").decode(), "ts": 1}]}
            async with http.post(f"/v1/apps/{app_name}/transactions", json=tx) as r:
                check("POST", "/v1/apps/{app}/transactions", r.status, await r.json())
            async with http.get(f"/v1/apps/{app_name}/scan") as r:
                lines = [json.loads(line) for line in (await r.text()).splitlines() if line]
                assert lines
                for line in lines:
                    errors = list(jsonschema.Draft202012Validator(
                        _response_schema("GET", "/v1/apps/{app}/scan", 200, "application/x-ndjson")).iter_errors(line))
                    assert errors == []
            key = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
            async with http.put(f"/v1/cache/{key}?ttl=60", data=b"7") as r:
                check("PUT", cache, r.status, await r.json())
            async with http.post(f"/v1/cache/{key}/incr?by=2") as r:
                check("POST", cache + "/incr", r.status, await r.json())
            async with http.post(f"/v1/cache/{key}/touch?ttl=30") as r:
                check("POST", cache + "/touch", r.status, await r.json())
            async with http.delete(f"/v1/cache/{key}") as r:
                check("DELETE", cache, r.status, await r.json())
            async with http.get("/healthz") as r:
                check("GET", "/healthz", r.status, await r.json())
            async with http.get("/admin/state") as r:
                check("GET", "/admin/state", r.status, await r.json())
            async with http.get("/admin/state", headers=admin) as r:
                check("GET", "/admin/state", r.status, await r.json())
            async with http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "nonsense"}, headers=admin) as r:
                check("POST", "/admin/mode", r.status, await r.json())
            async with http.post("/admin/mode", json={"plan": TEST_PLAN, "mode": "passthrough"}, headers=admin) as r:
                assert r.status == 200
                check("POST", "/admin/mode", r.status, await r.json())
            async with http.delete(path) as r:
                check("DELETE", entity, r.status, await r.json())
            async with http.get("/metrics") as r:
                assert r.status == 200 and "nxnw_http_requests_total" in await r.text()
