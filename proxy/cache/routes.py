"""Cache routes: one small class per behaviour, composed into the three modes.

Every route implements ``CacheRoute``: six primitives (``meta_get``, ``gat``, ``store``,
``delete_item``, ``arith``, ``touch``) and, on top of them, memcached's operations
(``get``/``gets``, ``set``/``add``/``replace``/``append``/``prepend``, ``cas``, ``delete``,
``incr``/``decr``). A mode switch swaps one composed object (see ``router.py``):

    passthrough = MemcachedRoute(N1)
    cow         = WarmUpRoute(warm=MemcachedRoute(N1), cold=MemcachedRoute(N2), copies N1→N2)
    proxy       = CopyWritesRoute(MemcachedRoute(N2), copies N2→N1)

Keys are ``bytes`` (≤ 250 bytes, no space/control byte), values ≤ ``MAX_ITEM_BYTES``;
anything else raises a ``CacheInputError`` (a ``ValueError``) before memcached sees it.
CAS tokens (``gets``, ``meta_get``, ``store(...).cas``) belong to the side that served the
request: after a switch, a ``cas`` with a token from the other side answers EXISTS.

Relaying untouched (the fast path): ``forward(op, key, request, reply_kind)`` sends a text
request as the app wrote it to the key's server and returns that server's reply bytes.
``op`` is one of ``FORWARD_OPS``; a route says which it relays (``forwards``):
``MemcachedRoute`` all of them; ``CopyWritesRoute`` and ``WarmUpRoute`` all but ``set``
(set/add/replace/cas), copying a write by its reply line and, in ``cow``, a hit by a
fill by key (the copy worker reads the item's CAS and TTL itself, off the client's path).
Why not ``set``: a relayed set's reply carries no CAS, so its copy would have to read the
value back from the source (three round trips and the value twice); the parsed path's
``ms … c`` returns the CAS, and the copy is a store and one check.

The listener's callback path relays without a coroutine: ``relays`` maps each op a route
relays that way to a ``Relay`` (the pool, the op counter, and what the route queues for
the reply) — the same decisions as ``forward``. There a set of a route that copies writes
is sent as ``ms … c`` with the app's data block, answered as text, and copied with the CAS.

Must never: answer a client from a side the mode does not read from; wait for an
asynchronous copy before answering.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import NamedTuple

from proxy.cache import metrics
from proxy.cache.client import Item, Outcome, StoreMode, StoreReply
from proxy.cache.errors import CacheInputError
from proxy.cache.copies import CopyQueue
from proxy.cache.pool import MemcachePool

_OPS = ("get", "gat", "store", "delete", "arith", "touch")
#: what ``forward`` relays: get/gets, set/add/replace/cas, append/prepend, delete, incr/decr, touch
FORWARD_OPS = frozenset(("get", "set", "store", "delete", "arith", "touch"))
#: a relayed op's name in the metrics (a set is a store there, as on the parsed path)
METRIC_OP = {"get": "get", "set": "store", "store": "store", "delete": "delete", "arith": "arith", "touch": "touch"}


class Relay(NamedTuple):
    """How the listener's callback path relays one op of a route (``CacheRoute.relays``):
    to which pool, and what the route does with the reply — the same as ``forward`` would,
    without a coroutine. Built once per route and op, never per request."""

    pool: MemcachePool
    #: the op's count and latency (``nxnw_cache_ops_total``, ``nxnw_cache_op_seconds``)
    tally: metrics.Tally
    #: ``(key, reply bytes)`` once the reply is in: what the route queues for it
    on_reply: Callable[[bytes, bytes], None] | None = None
    #: the op's outcome on ``pool`` is unknown (no reply): what the route queues then
    on_error: Callable[[bytes], None] | None = None
    #: set/add/replace/cas are sent as ``ms … c`` (their data block untouched) and answered
    #: as text; a STORED calls this with ``(key, value, flags, exptime, CAS)`` — the copy
    #: needs the CAS a text set's reply does not carry
    on_stored: Callable[[bytes, bytes, int, int, int], None] | None = None
    #: a get/gets is sent as ``mg key v f t c`` and answered as text; a hit calls this with
    #: the item — flags, remaining TTL and CAS are what a fill needs and a text reply lacks
    on_item: Callable[[bytes, Item], None] | None = None
    #: with ``on_item``: whether a hit of this key could need a fill at all (False while the
    #: other side is known to hold it: then the get goes as it came, with no fill)
    wants_item: Callable[[bytes], bool] | None = None


class CacheRoute(ABC):
    """What a mode does with each memcached operation."""

    #: the ops of ``FORWARD_OPS`` that ``forward`` relays untouched
    forwards: frozenset[str] = frozenset()
    #: the ops the listener relays by callbacks, and how (see ``Relay``)
    relays: dict[str, Relay] = {}

    async def forward(self, op: str, key: bytes, request: bytes, reply_kind: int) -> bytes:
        """Relay one text request for ``key`` and return the reply's bytes; only for the
        ops in ``forwards``."""
        raise NotImplementedError(f"{type(self).__name__} does not relay requests untouched")

    @abstractmethod
    async def meta_get(self, key: bytes) -> Item | None:
        """Value, client flags, remaining TTL (-1 = none) and CAS; None on a miss."""

    @abstractmethod
    async def gat(self, key: bytes, exptime: int) -> Item | None:
        """Get and touch: set a new exptime and return the item (with its new TTL)."""

    @abstractmethod
    async def store(self, mode: StoreMode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                    cas: int | None = None) -> StoreReply:
        """memcached ``ms`` in ``mode``; with ``cas``, only if the item's CAS matches."""

    @abstractmethod
    async def delete_item(self, key: bytes, cas: int | None = None) -> Outcome:
        """DELETED, NOT_FOUND, or EXISTS when ``cas`` was given and did not match."""

    @abstractmethod
    async def arith(self, key: bytes, delta: int, incr: bool = True) -> int | None:
        """incr/decr by ``delta`` (decr stops at 0); the new value, None if absent."""

    @abstractmethod
    async def touch(self, key: bytes, exptime: int) -> bool:
        """Set a new exptime; whether the key existed."""

    # memcached's operations, on top of the primitives

    async def get(self, key: bytes) -> Item | None:
        return await self.meta_get(key)

    async def gets(self, key: bytes) -> Item | None:
        return await self.meta_get(key)

    async def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        return (await self.store(StoreMode.SET, key, value, flags, exptime)).outcome is Outcome.STORED

    async def add(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        return (await self.store(StoreMode.ADD, key, value, flags, exptime)).outcome is Outcome.STORED

    async def replace(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        return (await self.store(StoreMode.REPLACE, key, value, flags, exptime)).outcome is Outcome.STORED

    async def append(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """``flags``/``exptime`` are ignored by memcached for append: the item keeps its own."""
        return (await self.store(StoreMode.APPEND, key, value, flags, exptime)).outcome is Outcome.STORED

    async def prepend(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> bool:
        """``flags``/``exptime`` are ignored by memcached for prepend: the item keeps its own."""
        return (await self.store(StoreMode.PREPEND, key, value, flags, exptime)).outcome is Outcome.STORED

    async def cas(self, key: bytes, value: bytes, cas: int, flags: int = 0, exptime: int = 0) -> Outcome:
        """STORED, EXISTS (someone wrote since ``gets``) or NOT_FOUND."""
        return (await self.store(StoreMode.SET, key, value, flags, exptime, cas)).outcome

    async def delete(self, key: bytes) -> bool:
        return (await self.delete_item(key)) is Outcome.DELETED

    async def incr(self, key: bytes, delta: int = 1) -> int | None:
        return await self.arith(key, delta, True)

    async def decr(self, key: bytes, delta: int = 1) -> int | None:
        return await self.arith(key, delta, False)


class MemcachedRoute(CacheRoute):
    """Every operation to one memcached, synchronously.

    get/gets/meta_get/gat, set/add/replace/append/prepend/cas, delete, incr/decr, touch:
    ``server``, sync; the reply is that server's reply.
    Does not promise anything about any other server.
    """

    def __init__(self, server: MemcachePool, *, mode: str = "passthrough") -> None:
        self.server = server
        self.side = server.side
        self._count = {op: metrics.OPS.labels(mode, server.side, op).inc for op in _OPS}
        self.relays = {op: Relay(server, metrics.Tally(metrics.OPS.labels(mode, server.side, METRIC_OP[op]),
                                                       metrics.LATENCY.labels(mode, METRIC_OP[op])))
                       for op in FORWARD_OPS}

    forwards = FORWARD_OPS

    def __repr__(self) -> str:
        return f"MemcachedRoute({self.server.server})"

    async def forward(self, op: str, key: bytes, request: bytes, reply_kind: int) -> bytes:
        self._count[METRIC_OP[op]]()
        return await self.server.forward(key, request, reply_kind)

    async def meta_get(self, key: bytes) -> Item | None:
        self._count["get"]()
        return await self.server.get(key)

    async def gat(self, key: bytes, exptime: int) -> Item | None:
        self._count["gat"]()
        return await self.server.get(key, touch=exptime)

    async def store(self, mode: StoreMode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                    cas: int | None = None) -> StoreReply:
        self._count["store"]()
        return await self.server.store(key, value, mode=mode, flags=flags, exptime=exptime, cas=cas)

    async def delete_item(self, key: bytes, cas: int | None = None) -> Outcome:
        self._count["delete"]()
        return await self.server.delete(key, cas=cas)

    async def arith(self, key: bytes, delta: int, incr: bool = True) -> int | None:
        self._count["arith"]()
        return await self.server.arith(key, delta, incr=incr)

    async def touch(self, key: bytes, exptime: int) -> bool:
        self._count["touch"]()
        return await self.server.touch(key, exptime)


class CopyWritesRoute(CacheRoute):
    """Serve everything from ``primary``; copy every change to ``copies.dest`` asynchronously.

    This is ``proxy`` mode (primary N2, copies to N1, so that a rollback to N1 never serves
    a value N2 has since overwritten) and the write half of ``cow``.

    get/gets/meta_get: ``primary``, sync. Nothing else.
    set/add/replace/cas: ``primary``, sync; if STORED, the stored value, flags, exptime and
        the primary's new CAS are queued for ``copies.dest`` (async, ``set`` there, then
        verified against the primary — see ``copies.py``). Not stored → nothing queued.
    append/prepend/incr/decr/touch/gat: ``primary``, sync; if the key existed, the key is
        queued and the worker reads the *result* back from the primary (``mg v f t c``)
        and copies that — replaying the op on the other side could double an append or
        an incr, and CAS tokens differ between the sides.
    delete: ``primary``, sync; a delete is queued for ``copies.dest`` whatever the reply
        (unless a CAS-guarded delete answered EXISTS: nothing changed).
    forward (a text request relayed untouched): reads as ``get``; a write's reply line says
        what to copy — ``STORED``, ``TOUCHED`` or a number: the key is queued and the worker
        reads the result back from the primary (as for append); ``DELETED``/``NOT_FOUND``
        of a delete, or any error line: a delete is queued; ``NOT_STORED``/``EXISTS``, or
        ``NOT_FOUND`` of a write: nothing changed, nothing queued.
    Any op whose outcome on the primary is unknown (timeout, connection lost, cancelled):
        a delete is queued for ``copies.dest`` and the error is raised to the caller.
    Not guaranteed: that ``copies.dest`` has the change when the client is answered, or at
    all — a full queue drops the copy and records the key in ``copies.dropped`` (the
    router invalidates those keys before a mode switch).
    """

    def __init__(self, primary: CacheRoute, copies: CopyQueue) -> None:
        self.primary = primary
        self.copies = copies
        self.forwards = primary.forwards - {"set"}
        self.relays = {op: Relay(r.pool, r.tally, on_error=copies.copy_delete,
                                 on_reply=self._copy_deleted if op == "delete" else self._copy_by_reply)
                       for op, r in primary.relays.items() if op != "get"}
        if "get" in primary.relays:
            self.relays["get"] = primary.relays["get"]
        if "set" in primary.relays:
            r = primary.relays["set"]
            self.relays["set"] = Relay(r.pool, r.tally, on_reply=self._copy_deleted_on_error,
                                       on_error=copies.copy_delete, on_stored=copies.copy_value_now)

    def _copy_by_reply(self, key: bytes, reply: bytes) -> None:
        """A relayed write's reply line says what to copy (see the class docstring)."""
        if reply == b"STORED\r\n" or reply == b"TOUCHED\r\n" or reply[:1].isdigit():
            self.copies.copy_current(key)
        elif reply[:4] in (b"CLIE", b"SERV", b"ERRO"):
            self.copies.copy_delete(key)

    def _copy_deleted(self, key: bytes, reply: bytes) -> None:
        self.copies.copy_delete(key)

    def _copy_deleted_on_error(self, key: bytes, reply: bytes) -> None:
        """A set sent as ``ms``: STORED is copied by ``on_stored``; an error line may hide a change."""
        if reply[:4] in (b"CLIE", b"SERV", b"ERRO"):
            self.copies.copy_delete(key)

    async def forward(self, op: str, key: bytes, request: bytes, reply_kind: int) -> bytes:
        if op == "get":
            return await self.primary.forward(op, key, request, reply_kind)
        try:
            reply = await self.primary.forward(op, key, request, reply_kind)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if op == "delete":
            self._copy_deleted(key, reply)
        else:
            self._copy_by_reply(key, reply)
        return reply

    def __repr__(self) -> str:
        return f"CopyWritesRoute({self.primary!r} -> {self.copies.dest.server})"

    async def meta_get(self, key: bytes) -> Item | None:
        return await self.primary.meta_get(key)

    async def gat(self, key: bytes, exptime: int) -> Item | None:
        try:
            item = await self.primary.gat(key, exptime)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if item is not None:
            self.copies.copy_current(key)
        return item

    async def store(self, mode: StoreMode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                    cas: int | None = None) -> StoreReply:
        try:
            reply = await self.primary.store(mode, key, value, flags, exptime, cas)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if reply.outcome is Outcome.STORED:
            if mode is StoreMode.APPEND or mode is StoreMode.PREPEND:
                self.copies.copy_current(key)
            else:
                self.copies.copy_value(key, value, flags, exptime, reply.cas)
        return reply

    async def delete_item(self, key: bytes, cas: int | None = None) -> Outcome:
        try:
            outcome = await self.primary.delete_item(key, cas)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if outcome is not Outcome.EXISTS:
            self.copies.copy_delete(key)
        return outcome

    async def arith(self, key: bytes, delta: int, incr: bool = True) -> int | None:
        try:
            value = await self.primary.arith(key, delta, incr)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if value is not None:
            self.copies.copy_current(key)
        return value

    async def touch(self, key: bytes, exptime: int) -> bool:
        try:
            found = await self.primary.touch(key, exptime)
        except CacheInputError:
            raise
        except BaseException:
            self.copies.copy_delete(key)
            raise
        if found:
            self.copies.copy_current(key)
        return found


class WarmUpRoute(CacheRoute):
    """``cow``: serve from ``warm`` (N1) and warm ``cold`` (N2) behind it, asynchronously.

    Modelled on mcrouter's WarmUpRoute, with the sides' roles fixed by the migration: N1
    stays the truth until the switch, so reads never go to N2 first.

    get/gets/meta_get: ``warm``, sync. On a hit, a fill of ``cold`` is queued (COR, async)
        unless this same N1 version (CAS) was copied or seen on ``cold`` within the last
        minute; the worker skips it if ``cold`` already has the key, else stores the item with
        ``add`` semantics (an N2 value written meanwhile by a newer copy wins) with its
        flags and remaining TTL, then checks that ``warm`` still holds the version it read
        (same CAS) and otherwise deletes the fill again if ``cold`` still holds exactly it.
        So an overwrite or delete on N1 between the read and the fill — even one whose own
        copy reached N2 *before* the fill, or one made through another proxy instance —
        never leaves the old value on N2 (argument in ``copies.py``). On a miss: nothing.
    get relayed by the listener's callbacks (``relays``): ``warm``, sync, sent as ``mg key v
        f t c`` and answered as the text get/gets; on a hit the fill starts at once (COR,
        async, ``CopyQueue.fill_now``) with the item read — ``add`` on ``cold``, then the
        same check of ``warm``'s CAS as above. Skipped while ``cold`` was seen holding this
        version within the last minute.
    get relayed untouched (``forward``, the awaitable path): ``warm``, sync, its reply bytes
        as they came; on a hit a fill *by key* is queued (COR, async): the worker reads the
        item (value, flags, TTL, CAS) from ``warm`` itself and fills ``cold`` as above.
        Skipped while ``cold`` was seen holding the key within the last minute and nothing
        was written to it since.
    gat (get-and-touch) and every write, relayed untouched or not: as
        ``CopyWritesRoute(warm, copies)`` — ``warm`` sync, the change copied to ``cold``
        async (COW).
    Not guaranteed: that ``cold`` is warm — fills are shed first when the queue is half
    full, lost to any race, and skipped for items expiring within a second; that ``cold``
    holds a key's latest value before the copy queue is drained (the router drains it
    and invalidates dropped keys before switching to ``proxy``).
    """

    def __init__(self, warm: CacheRoute, cold: MemcachedRoute, copies: CopyQueue) -> None:
        if copies.dest is not cold.server:
            raise ValueError(f"WarmUpRoute: the copy queue writes to {copies.dest.server}, "
                             f"not to cold {cold.server.server}")
        self.warm = warm
        self.cold = cold
        self.copies = copies
        self._writes = CopyWritesRoute(warm, copies)
        self.forwards = warm.forwards - {"set"}
        self.relays = dict(self._writes.relays)
        if "get" in warm.relays:
            r = warm.relays["get"]
            self.relays["get"] = Relay(r.pool, r.tally, on_item=copies.fill_now, wants_item=copies.may_need_fill)

    def _fill_on_hit(self, key: bytes, reply: bytes) -> None:
        if reply[:6] == b"VALUE ":
            self.copies.offer_fill_key(key)

    async def forward(self, op: str, key: bytes, request: bytes, reply_kind: int) -> bytes:
        if op != "get":
            return await self._writes.forward(op, key, request, reply_kind)
        reply = await self.warm.forward(op, key, request, reply_kind)
        self._fill_on_hit(key, reply)
        return reply

    def __repr__(self) -> str:
        return f"WarmUpRoute(warm={self.warm!r}, cold={self.cold!r})"

    async def meta_get(self, key: bytes) -> Item | None:
        item = await self.warm.meta_get(key)
        if item is not None:
            self.copies.offer_fill(key, item)
        return item

    async def gat(self, key: bytes, exptime: int) -> Item | None:
        return await self._writes.gat(key, exptime)

    async def store(self, mode: StoreMode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                    cas: int | None = None) -> StoreReply:
        return await self._writes.store(mode, key, value, flags, exptime, cas)

    async def delete_item(self, key: bytes, cas: int | None = None) -> Outcome:
        return await self._writes.delete_item(key, cas)

    async def arith(self, key: bytes, delta: int, incr: bool = True) -> int | None:
        return await self._writes.arith(key, delta, incr)

    async def touch(self, key: bytes, exptime: int) -> bool:
        return await self._writes.touch(key, exptime)
