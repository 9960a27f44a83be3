"""The HTTP data API: what applications call instead of N1's datastore and memcache.

Keys travel in the path as unpadded base64url, so any byte string is a key; values travel
as raw bodies (application/octet-stream) or base64 inside JSON for batches and
transactions. Every error is JSON ``{"error": ..., "reason": ...}`` with a 4xx for bad
input (never passed to an engine; a batch or transaction naming one key twice is bad
input) and two kinds of 503 a client can tell apart by ``error``:

* ``"refused"``: nothing of the request reached an engine or memcached — the instance is
  fenced (no ZooKeeper session or lease, or a mode it has not adopted), its clock refused
  to stamp the write, or a lock could not be taken. Retrying elsewhere is safe.
* ``"unknown outcome"``: the write may have reached one side or both (it is journalled so
  the sides converge) but it is not acknowledged; read the key to learn what happened.

The API is described in ``proxy/openapi.yaml``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from kazoo.client import KazooClient
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from datastore import EntityRef, InvalidEntity
from datastore.model import MAX_VALUE_BYTES
from proxy.cache import CacheFencedError, CacheInputError, CacheRouter
from proxy.cache.errors import CacheError, CacheOutcomeUnknown, SwitchError
from proxy.control import SwitchBlocked, TransitionRefused, switch_mode
from proxy.core import ClockRefused, Conflict, Fenced, ProxyCore
from proxy.routes import OutcomeUnknown
from sync.aio import run_blocking, zk_wait_executor
from sync.mode import MODES
from sync.lock import GroupLockError

log = logging.getLogger("nxnw.proxy.api")

REQUESTS = Counter("nxnw_http_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram("nxnw_http_request_seconds", "HTTP request latency by mode", ["route", "mode"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

MAX_JSON_BODY = 8 * 1024 * 1024
BODY_TIMEOUT_SECONDS = 10.0

CORE: web.AppKey[ProxyCore] = web.AppKey("core", ProxyCore)
CACHE: web.AppKey[CacheRouter] = web.AppKey("cache", CacheRouter)
ZOOKEEPER: web.AppKey[KazooClient] = web.AppKey("zookeeper", KazooClient)


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
#: a plan's name (``nxnw.config.Plan.name``)
PLAN_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def decode_key(text: str) -> bytes:
    """Strict unpadded base64url: a stray character is an error, not silently dropped."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidEntity(f"key {text[:80]!r} is not unpadded base64url (A-Z a-z 0-9 - _)")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def _b64(field: str, text: Any) -> bytes:
    if not isinstance(text, str):
        raise InvalidEntity(f"{field} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEntity(f"{field} is not valid base64: {exc}") from exc


def _json_error(status: int, error: str, reason: str) -> web.Response:
    return web.json_response({"error": error, "reason": reason}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn every failure into a JSON error with its reason; bad input never crashes."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    core = request.app[CORE]
    started = time.perf_counter()
    try:
        response = await handler(request)
    except (InvalidEntity, CacheInputError) as exc:
        response = _json_error(400, "invalid input", str(exc))
    except (CacheFencedError, SwitchError) as exc:
        response = _json_error(503, "refused", str(exc))
    except CacheOutcomeUnknown as exc:
        response = _json_error(503, "unknown outcome", str(exc))
    except CacheError as exc:
        response = _json_error(502, "cache failure", str(exc))
    except Conflict as exc:
        response = _json_error(409, "conflict", str(exc))
    except (Fenced, ClockRefused, GroupLockError) as exc:
        response = _json_error(503, "refused", str(exc))
    except OutcomeUnknown as exc:
        response = _json_error(503, "unknown outcome", str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        response = _json_error(413, "body too large", exc.text or "the body exceeds the limit")
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        response = _json_error(exc.status, exc.reason.lower(), exc.text or exc.reason)
    except TimeoutError:
        response = _json_error(408, "request timeout", f"the body did not arrive within {BODY_TIMEOUT_SECONDS:.0f} s")
    except Exception as exc:  # an engine failure: the client gets 502, the process keeps serving
        log.exception("request %s %s failed", request.method, request.path)
        response = _json_error(502, "backend failure", f"{type(exc).__name__}: {exc}")
    _observe(route, response.status, _mode_label(core, request), time.perf_counter() - started)
    return response


def _mode_label(core: ProxyCore, request: web.Request) -> str:
    """The mode the request's app is served in (each app follows its plan's), "fenced" while
    the instance may not serve it; the unclaimed apps' mode for a route that names no app."""
    app = request.match_info.get("app")
    return (core.mode if app is None else core.app_mode(app)) or "fenced"


#: (route, status, mode) -> the request counter's and the latency histogram's children: a
#: ``labels`` lookup costs more than the update, and the label sets are few (routes,
#: statuses, modes), so each is looked up once.
_CHILDREN: dict[tuple[str, int, str], tuple[Any, Any]] = {}


def _observe(route: str, status: int, mode: str, seconds: float) -> None:
    children = _CHILDREN.get((route, status, mode))
    if children is None:
        children = _CHILDREN[route, status, mode] = (REQUESTS.labels(route, str(status)), LATENCY.labels(route, mode))
    children[0].inc()
    children[1].observe(seconds)


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length,
                                            text=f"the body of {request.content_length} bytes exceeds the limit of {limit} bytes")
    if request.content.is_eof():  # the whole body has arrived (a small one comes with the headers)
        body = await request.read()
    else:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            body = await request.read()
    if len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body),
                                            text=f"the body exceeds the limit of {limit} bytes")
    return body


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await read_body(request, MAX_JSON_BODY)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidEntity(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidEntity("body must be a JSON object")
    return doc


def _ref(request: web.Request) -> EntityRef:
    info = request.match_info
    return EntityRef(info["app"], info["kind"], decode_key(info["key"]))


async def get_entity(request: web.Request) -> web.Response:
    entity = await request.app[CORE].get(_ref(request))
    if entity is None:
        return _json_error(404, "not found", "no live entity at that key")
    return web.Response(body=entity.value, content_type="application/octet-stream",
                        headers={"X-Nxnw-Timestamp": str(entity.ts)})


async def put_entity(request: web.Request) -> web.Response:
    ref = _ref(request)
    value = await read_body(request, MAX_VALUE_BYTES)
    ts = await request.app[CORE].put(ref, value)
    return _ts_response(ts)


async def delete_entity(request: web.Request) -> web.Response:
    ts = await request.app[CORE].delete(_ref(request))
    return _ts_response(ts)


def _ts_response(ts: int) -> web.Response:
    """``{"ts": ts}``, the answer to every PUT and DELETE, without a JSON encoder."""
    return web.Response(body=b'{"ts": %d}' % ts, content_type="application/json", charset="utf-8")


def _writes(app: str, items: Any) -> list[tuple[EntityRef, bytes | None]]:
    if not isinstance(items, list):
        raise InvalidEntity("writes must be a list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidEntity(f"writes[{i}] must be an object")
        ref = EntityRef(app, item.get("kind"), _b64(f"writes[{i}].key", item.get("key")))
        value = None if item.get("value") is None else _b64(f"writes[{i}].value", item["value"])
        out.append((ref, value))
    return out


async def batch(request: web.Request) -> web.Response:
    doc = await read_json(request)
    app = request.match_info["app"]
    writes = _writes(app, doc.get("writes"))
    ts = await request.app[CORE].write_many(writes, app)
    return web.json_response({"ts": ts, "count": len(writes)})


async def transaction(request: web.Request) -> web.Response:
    app = request.match_info["app"]
    doc = await read_json(request)
    group = doc.get("group")
    if not isinstance(group, str) or not group or len(group) > 200 or "/" in group:
        raise InvalidEntity("group must be a non-empty string of at most 200 characters without '/'")
    reads = doc.get("reads", [])
    if not isinstance(reads, list):
        raise InvalidEntity("reads must be a list")
    expected = []
    for i, item in enumerate(reads):
        if not isinstance(item, dict) or not (item.get("ts") is None or isinstance(item.get("ts"), int)):
            raise InvalidEntity(f"reads[{i}] must be an object with kind, key and ts (an integer or null)")
        expected.append((EntityRef(app, item.get("kind"), _b64(f"reads[{i}].key", item.get("key"))), item.get("ts")))
    writes = _writes(app, doc.get("writes", []))
    ts = await request.app[CORE].transaction(app, group, expected, writes)
    return web.json_response({"ts": ts})


async def scan(request: web.Request) -> web.StreamResponse:
    app = request.match_info["app"]
    kind = request.query.get("kind")
    try:
        limit = int(request.query.get("limit", "0")) or None
    except ValueError as exc:
        raise InvalidEntity(f"limit {request.query.get('limit')!r} is not an integer") from exc
    core = request.app[CORE]
    entities = core.scan(app, kind)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    sent = 0
    async for page in entities:
        lines = []
        for e in page:
            lines.append(json.dumps({"kind": e.kind, "key": base64.b64encode(e.key).decode(),
                                     "value": base64.b64encode(e.value or b"").decode(), "ts": e.ts}))
            sent += 1
            if limit and sent >= limit:
                break
        await response.write(("\n".join(lines) + "\n").encode() if lines else b"")
        if limit and sent >= limit:
            break
    await response.write_eof()
    return response


def _cache_key(request: web.Request) -> bytes:
    return decode_key(request.match_info["key"])


def _int_query(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError as exc:
        raise InvalidEntity(f"{name} {request.query.get(name)!r} is not an integer") from exc


async def cache_get(request: web.Request) -> web.Response:
    key = _cache_key(request)
    item = await request.app[CACHE].route_for(key).get(key)
    if item is None:
        return _json_error(404, "not found", "cache miss")
    return web.Response(body=item.value, content_type="application/octet-stream",
                        headers={"X-Nxnw-Flags": str(item.flags)})


async def cache_set(request: web.Request) -> web.Response:
    key = _cache_key(request)
    value = await read_body(request, MAX_VALUE_BYTES)
    stored = await request.app[CACHE].route_for(key).set(key, value, _int_query(request, "flags", 0), _int_query(request, "ttl", 0))
    return web.json_response({"stored": stored})


async def cache_delete(request: web.Request) -> web.Response:
    key = _cache_key(request)
    return web.json_response({"deleted": await request.app[CACHE].route_for(key).delete(key)})


async def cache_incr(request: web.Request) -> web.Response:
    key = _cache_key(request)
    value = await request.app[CACHE].route_for(key).incr(key, _int_query(request, "by", 1))
    if value is None:
        return _json_error(404, "not found", "cannot increment a missing key")
    return web.json_response({"value": value})


async def cache_touch(request: web.Request) -> web.Response:
    key = _cache_key(request)
    touched = await request.app[CACHE].route_for(key).touch(key, _int_query(request, "ttl", 0))
    return web.json_response({"touched": touched})


async def healthz(request: web.Request) -> web.Response:
    core = request.app[CORE]
    plans = core.plan_modes()
    failures = [m.failure for m in core.modes.machines.values() if m.failure is not None]
    writable = core.mode is not None and None not in plans.values() and not failures
    body: dict[str, Any] = {"mode": core.mode, "plans": plans, "writable": writable, "instance": core.instance}
    if failures:
        body["reason"] = "; ".join(failures)
    return web.json_response(body, status=200 if writable else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _admin(request: web.Request) -> None:
    token = request.app[CORE].admin_token
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if not token or not hmac.compare_digest(given, f"Bearer {token}".encode()):  # constant time: no timing oracle
        raise web.HTTPUnauthorized(text=json.dumps({"error": "unauthorized", "reason": "admin endpoints need the admin bearer token"}),
                                   content_type="application/json")


async def admin_state(request: web.Request) -> web.Response:
    """The instance's state, and its ZooKeeper session (id and password, hex) so that a fault
    campaign can expire it the way the server would (a second client on the same session)."""
    _admin(request)
    state = await request.app[CORE].describe()
    client_id = request.app[ZOOKEEPER].client_id
    state["zookeeper_session"] = None if not client_id else {"id": f"{client_id[0]:x}", "password": client_id[1].hex()}
    return web.json_response(state)


async def admin_mode(request: web.Request) -> web.Response:
    """Move one plan's apps to a mode on every instance through ``switch_mode`` (the one
    transition table, the same checks the orchestrator makes); a refused or blocked switch
    is 409 with the reason."""
    _admin(request)
    doc = await read_json(request)
    plan, mode = doc.get("plan"), doc.get("mode")
    if not isinstance(plan, str) or not PLAN_NAME.fullmatch(plan):
        raise InvalidEntity(f"plan {plan!r} must be a plan's name (a-z 0-9 _ -, at most 64 characters)")
    if mode not in MODES:
        raise InvalidEntity(f"mode {mode!r} is not one of: {', '.join(MODES)}")
    drain_timeout = doc.get("drain_timeout", 30)
    if isinstance(drain_timeout, bool) or not isinstance(drain_timeout, (int, float)) or not 0 < drain_timeout <= 3600:
        raise InvalidEntity(f"drain_timeout {drain_timeout!r} must be a number of seconds in (0, 3600]")
    try:
        state = await run_blocking(switch_mode, request.app[ZOOKEEPER], plan, mode, drain_timeout=float(drain_timeout),
                                   executor=zk_wait_executor())
    except TransitionRefused as exc:
        return _json_error(409, "transition refused", str(exc))
    except SwitchBlocked as exc:
        return _json_error(409, "switch blocked", str(exc))
    return web.json_response({"plan": plan, "mode": state.mode, "epoch": state.epoch})


def add_routes(app: web.Application) -> None:
    entity = "/v1/apps/{app}/kinds/{kind}/entities/{key}"
    app.router.add_get(entity, get_entity)
    app.router.add_put(entity, put_entity)
    app.router.add_delete(entity, delete_entity)
    app.router.add_post("/v1/apps/{app}/batch", batch)
    app.router.add_post("/v1/apps/{app}/transactions", transaction)
    app.router.add_get("/v1/apps/{app}/scan", scan)
    app.router.add_get("/v1/cache/{key}", cache_get)
    app.router.add_put("/v1/cache/{key}", cache_set)
    app.router.add_delete("/v1/cache/{key}", cache_delete)
    app.router.add_post("/v1/cache/{key}/incr", cache_incr)
    app.router.add_post("/v1/cache/{key}/touch", cache_touch)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/state", admin_state)
    app.router.add_post("/admin/mode", admin_mode)


def build_app(core: ProxyCore, cache: CacheRouter, zk: KazooClient) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=MAX_JSON_BODY)
    app[CORE] = core
    app[CACHE] = cache
    app[ZOOKEEPER] = zk
    add_routes(app)
    return app
