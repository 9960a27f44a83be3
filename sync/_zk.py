"""Helpers shared by the sync/ recipes: bounded retries, znode path and name checks.

Error handling
==============

No session of its own. ``bounded_retry`` is how every recipe survives a SUSPENDED
connection (retry until the deadline) and decides about LOST (``ignore_expire``: surface
the expiry to recipes whose watches or ephemeral nodes died with it, retry on the new
session for stateless reads and writes).

Responsible for the one way sync/ builds a retry — a ``KazooRetry`` with a deadline,
never an unbounded loop; ``bounded_call`` also bounds each attempt, for a call that must
return within its deadline even while ZooKeeper is out of reach — and for rejecting bad paths and names before they reach
ZooKeeper (invariant 6: bad input gets a clear ``ValueError`` naming the value).
Must never hold state or talk to ZooKeeper itself.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import (ConnectionLoss, NodeExistsError, NoNodeError, OperationTimeoutError,
                               SessionExpiredError)
from kazoo.interfaces import IAsyncResult
from kazoo.retry import KazooRetry, RetryFailedError

#: What a bounded retry gives up with, or what means "the session/connection is gone":
#: the caller's ZooKeeper-side state (watches, ephemeral nodes) may be gone with it.
CONNECTIVITY_ERRORS = (ConnectionLoss, OperationTimeoutError, SessionExpiredError, RetryFailedError)

# ZooKeeper's PathUtils.validatePath refuses these code points in a path.
_FORBIDDEN = re.compile("[\u0000-\u001f\u007f-\u009f\ud800-\uf8ff\ufff0-\uffff]")


def bounded_retry(deadline: float, *, ignore_expire: bool = False,
                  interrupt: Callable[[], bool] | None = None) -> KazooRetry:
    """A KazooRetry that retries connection loss until ``deadline`` seconds have passed.

    ``ignore_expire=False`` (the default) lets a session expiry surface: the caller's
    watches and ephemeral nodes are gone, and only the caller knows what that means.
    Pass True for stateless reads and writes that may simply run on the new session.
    """
    if not (isinstance(deadline, (int, float)) and math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"retry deadline must be a positive number of seconds, got {deadline!r}")
    return KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_jitter=0.4, max_delay=1.0,
                      deadline=float(deadline), ignore_expire=ignore_expire, interrupt=interrupt)


def bounded_call(client: KazooClient, deadline: float, method: str, *args: Any) -> Any:
    """``client.<method>(*args)`` under ``bounded_retry(deadline)``, each attempt bounded by
    what is left of the deadline: kazoo queues a call made while it reconnects until it is
    connected, however long ZooKeeper stays out of reach, and a retry's deadline bounds only
    the gaps between attempts. An attempt that runs out counts as an OperationTimeoutError
    (retried while time is left; the call still goes if kazoo reconnects)."""
    end = time.monotonic() + deadline
    start = getattr(client, f"{method}_async")
    return bounded_retry(deadline)(lambda: answer(client, start(*args), end, method))


def answer(client: KazooClient, result: IAsyncResult, end: float, what: str) -> Any:
    """What the asynchronous call ``result`` answers, waited for until monotonic time ``end``
    at most (the same reason as ``bounded_call``); OperationTimeoutError past it."""
    try:
        return result.get(timeout=max(end - time.monotonic(), 0.01))
    except client.handler.timeout_exception:
        raise OperationTimeoutError(f"no answer to {what} from ZooKeeper in time") from None


def check_timeout(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_name(value: object, what: str) -> str:
    """``value`` if it can be one znode name (one path component), else ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    reason = None
    if not value:
        reason = "it is empty"
    elif value in (".", ".."):
        reason = "'.' and '..' are not allowed"
    elif "/" in value:
        reason = "it contains '/'"
    elif _FORBIDDEN.search(value):
        reason = "it contains a control or reserved character"
    if reason:
        raise ValueError(f"{what} {value!r} is not a valid znode name: {reason}")
    return value


def check_path(value: object, what: str) -> str:
    """``value`` if it is an absolute, normalised znode path, else ValueError."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{what} must be an absolute znode path starting with '/', got {value!r}")
    if value == "/":
        return value
    if value.endswith("/"):
        raise ValueError(f"{what} {value!r} must not end with '/'")
    for part in value[1:].split("/"):
        try:
            check_name(part, f"component of {what}")
        except ValueError as exc:
            raise ValueError(f"{what} {value!r} is not a valid znode path: {exc}") from None
    return value


def join(parent: str, child: str) -> str:
    return parent + child if parent == "/" else f"{parent}/{child}"


def parent_of(path: str) -> str:
    head = path.rsplit("/", 1)[0]
    return head or "/"


def is_under(path: str, root: str) -> bool:
    """True if ``path`` is ``root`` or below it."""
    return root == "/" or path == root or path.startswith(root + "/")


def encode_name(value: str, what: str) -> str:
    """A reversible znode name for an arbitrary non-empty string (range ids carry '/', ':')."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    name = quote(value, safe="")
    if name in (".", ".."):  # quote() leaves dots alone; these two are not znode names
        name = name.replace(".", "%2E")
    return name


def decode_name(name: str) -> str:
    return unquote(name)


def put(client: KazooClient, path: str, data: bytes) -> None:
    """Set ``path`` to ``data``, creating it (and its parents) if it does not exist.

    Unconditional: for znodes one writer owns. A create that races another (or our own
    earlier attempt whose reply was lost) falls back to a set.
    """
    try:
        client.set(path, data)
    except NoNodeError:
        try:
            client.create(path, data, makepath=True)
        except NodeExistsError:
            client.set(path, data)
