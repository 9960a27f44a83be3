"""Helpers shared by the sync/ recipes: bounded retries, znode path and name checks.

Error handling
==============

No session of its own. ``bounded_retry`` is how every recipe survives a SUSPENDED
connection (retry until the deadline) and decides about LOST (``ignore_expire``: surface
the expiry to recipes whose watches or ephemeral nodes died with it, retry on the new
session for stateless reads and writes).

Responsible for the one way sync/ builds a retry — a ``KazooRetry`` with a deadline,
never an unbounded loop, whose attempts at a client call are bounded by the deadline too,
so that the call returns within it even while ZooKeeper is out of reach — and for rejecting
bad paths and names before they reach ZooKeeper (invariant 6: bad input gets a clear
``ValueError`` naming the value).
Must never hold state or talk to ZooKeeper itself.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote

from kazoo.client import KazooClient, TransactionRequest
from kazoo.exceptions import (ConnectionLoss, NodeExistsError, NoNodeError, OperationTimeoutError,
                               SessionExpiredError)
from kazoo.interfaces import IAsyncResult
from kazoo.retry import KazooRetry, RetryFailedError

#: What a bounded retry gives up with, or what means "the session/connection is gone":
#: the caller's ZooKeeper-side state (watches, ephemeral nodes) may be gone with it.
CONNECTIVITY_ERRORS = (ConnectionLoss, OperationTimeoutError, SessionExpiredError, RetryFailedError)

# ZooKeeper's PathUtils.validatePath refuses these code points in a path.
_FORBIDDEN = re.compile("[\u0000-\u001f\u007f-\u009f\ud800-\uf8ff\ufff0-\uffff]")


#: KazooClient methods that are their ``*_async`` twin plus an unbounded wait for the
#: answer (kazoo's source: ``return self.<name>_async(...).get()``); a bounded retry runs
#: the twin and waits no longer than its deadline.
_ASYNC_TWINS = frozenset({"create", "delete", "exists", "get", "get_children", "set", "sync", "get_acls",
                          "set_acls", "ensure_path"})


class BoundedRetry:
    """A KazooRetry whose attempts at a KazooClient call are bounded by its deadline too.

    A retry's deadline bounds only the gaps between attempts, and kazoo queues a call made
    while it reconnects until it is connected again, however long ZooKeeper stays out of
    reach: an attempt could wait that long. Called with a client method that has an async
    twin, each attempt runs the twin and waits for its answer until the deadline at most
    (an attempt that runs out counts as an OperationTimeoutError, retried while time is
    left). Any other callable runs as it is: calls it makes inside are not bounded.
    """

    def __init__(self, retry: KazooRetry, deadline: float) -> None:
        self.retry = retry
        self.deadline = deadline

    def __call__(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        client, name = getattr(func, "__self__", None), getattr(func, "__name__", "")
        if not isinstance(client, KazooClient) or name not in _ASYNC_TWINS or "recursive" in kwargs:
            return self.retry(func, *args, **kwargs)
        end = time.monotonic() + self.deadline
        start = getattr(client, f"{name}_async")
        return self.retry(lambda: answer(client, start(*args, **kwargs), end, name))

    def put(self, client: KazooClient, path: str, data: bytes) -> None:
        """``put``, retried, each of its calls answered within the deadline."""
        self.retry(put, client, path, data, time.monotonic() + self.deadline)

    def transaction(self, client: KazooClient, build: Callable[[TransactionRequest], None]) -> list:
        """Commit the transaction ``build`` fills in, retried as a client call is: a fresh
        TransactionRequest each attempt (kazoo refuses to commit one twice, so a retried
        ``commit`` raised "Transaction already committed"), each answered within the deadline.
        An attempt whose reply was lost may have committed: the caller reads that in the
        next attempt's results (a create's NodeExistsError, a set's BadVersionError)."""
        end = time.monotonic() + self.deadline

        def attempt() -> list:
            request = client.transaction()
            build(request)
            return answer(client, request.commit_async(), end, "transaction")

        return self.retry(attempt)


def bounded_retry(deadline: float, *, ignore_expire: bool = False,
                  interrupt: Callable[[], bool] | None = None) -> BoundedRetry:
    """A retry of connection loss until ``deadline`` seconds have passed, each attempt at a
    client call bounded too (``BoundedRetry``).

    ``ignore_expire=False`` (the default) lets a session expiry surface: the caller's
    watches and ephemeral nodes are gone, and only the caller knows what that means.
    Pass True for stateless reads and writes that may simply run on the new session.
    """
    if not (isinstance(deadline, (int, float)) and math.isfinite(deadline) and deadline > 0):
        raise ValueError(f"retry deadline must be a positive number of seconds, got {deadline!r}")
    return BoundedRetry(KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_jitter=0.4, max_delay=1.0,
                                   deadline=float(deadline), ignore_expire=ignore_expire, interrupt=interrupt),
                        float(deadline))


def answer(client: KazooClient, result: IAsyncResult, end: float, what: str) -> Any:
    """What the asynchronous call ``result`` answers, waited for until monotonic time ``end``
    at most (the same reason as ``BoundedRetry``); OperationTimeoutError past it."""
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


def put(client: KazooClient, path: str, data: bytes, end: float | None = None) -> None:
    """Set ``path`` to ``data``, creating it (and its parents) if it does not exist; each
    call answered by monotonic time ``end`` (``BoundedRetry.put`` passes its deadline), else
    as long as ZooKeeper takes.

    Unconditional: for znodes one writer owns. A create that races another (or our own
    earlier attempt whose reply was lost) falls back to a set.
    """
    def call(name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(client, f"{name}_async")(*args, **kwargs)
        return result.get() if end is None else answer(client, result, end, name)

    try:
        call("set", path, data)
    except NoNodeError:
        try:
            call("create", path, data, makepath=True)
        except NodeExistsError:
            call("set", path, data)
