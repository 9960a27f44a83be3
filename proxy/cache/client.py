"""An asyncio memcached client for the proxy: a small pool of connections to ONE server.

Responsible for: speaking memcached's meta protocol (``mg``/``ms``/``md``/``ma``/``mn``),
the text ``version`` and ``flush_all``, and relaying a text request untouched
(``forward``: the fast path) to one server; one request (or one pipelined batch) at a time
per connection, at most ``max_connections`` connections; a deadline on every request;
replies parsed from a byte buffer however the kernel splits them (a reply may arrive one
byte at a time) — a relayed reply only as far as its framing needs. Errors name the
server (``n1 127.0.0.1:21211``) and say what went wrong. Several servers of one side are
a ``MemcachePool`` (``pool.py``), which sends each key to its server.

Must never: write a key, value or number that memcached would refuse — every argument is
checked here (or, for ``forward``, by the listener that parsed the request), before a byte
is sent, so bad input never reaches memcached; reuse a connection after a timeout, a
cancellation, an error reply or anything it could not parse (where that connection stands
in the reply stream is unknown, so it is closed).

``pipeline`` sends several requests in one write and reads their replies in order (the
copy workers batch their copies this way).

``RelayConnection`` is the listener's callback path: one connection per server shared by
every client connection, requests pipelined on it, each reply handed to its entry from
``data_received`` (no coroutine, future or timer per request; see its docstring).

Why meta commands for the parsed path: ``mg`` returns value, client flags, remaining TTL
and CAS in one round trip (what cache-on-read needs), ``ms`` returns the CAS of what it
stored (what the copy's verification needs), and every text storage command is an
``ms`` mode. Where no reply needs to be understood, ``forward`` relays the app's own text
request and memcached's own reply bytes.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from typing import NamedTuple, Protocol

from proxy.cache.errors import (
    MAX_EXPTIME, MAX_FLAGS, MAX_U64, MIN_EXPTIME, MemcacheProtocolError, MemcacheRejected,
    MemcacheServerError, MemcacheServerReply, MemcacheTimeout, MemcacheUnavailable, check_key, check_range, check_value,
)

#: A reply header longer than this without CRLF is not memcached talking.
_MAX_REPLY_LINE = 8192

#: How a relayed reply is framed: one line, a text retrieval of one key (VALUE… END), the
#: ``HD c<cas>``/``NS``/``EX``/``NF`` line of an ``ms … c`` answered as text, or an ``mg``'s
#: reply (a ``VA`` header and its data block, or one line).
REPLY_LINE, REPLY_VALUES, REPLY_META_STORE, REPLY_META_VALUE = 0, 1, 2, 3
#: ``ms`` codes -> the text storage reply memcached gives for the same outcome
_STORED_TEXT = b"STORED\r\n"
_TEXT_OF_MS = {b"HD": _STORED_TEXT, b"NS": b"NOT_STORED\r\n", b"EX": b"EXISTS\r\n", b"NF": b"NOT_FOUND\r\n"}


class Item(NamedTuple):
    """One cached item as the side that served it sees it."""

    value: bytes
    flags: int
    #: remaining seconds to live; -1 = never expires; None = not asked
    ttl: int | None = None
    #: the serving side's CAS token (CAS tokens are per server: never compare across sides)
    cas: int | None = None


class Peek(NamedTuple):
    """An item's identity without its value: the CAS of the current version and its TTL."""

    cas: int
    ttl: int


class Outcome(enum.Enum):
    STORED = "HD"
    NOT_STORED = "NS"
    EXISTS = "EX"
    NOT_FOUND = "NF"
    DELETED = "DELETED"


class StoreMode(enum.Enum):
    """memcached's ``ms`` mode letters."""

    SET = b"S"
    ADD = b"E"
    REPLACE = b"R"
    APPEND = b"A"
    PREPEND = b"P"


class StoreReply(NamedTuple):
    outcome: Outcome
    #: CAS of the stored item (0 when nothing was stored)
    cas: int = 0


_MS_OUTCOME = {b"HD": Outcome.STORED, b"NS": Outcome.NOT_STORED, b"EX": Outcome.EXISTS, b"NF": Outcome.NOT_FOUND}
_MD_OUTCOME = {b"HD": Outcome.DELETED, b"NF": Outcome.NOT_FOUND, b"EX": Outcome.EXISTS}


def _return_flags(tokens: list[bytes]) -> dict[int, bytes]:
    """``[b'f5', b't-1', b'c9']`` -> ``{ord('f'): b'5', …}``."""
    return {t[0]: t[1:] for t in tokens if t}


Reply = tuple[bytes, bytes | None]  # header line (no CRLF), data block or None


class _Connection(asyncio.Protocol):
    """One TCP connection; one request (or one pipelined batch) outstanding: ``waiter``
    resolves with the list of ``expected`` replies."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[list[Reply]] | None = None
        self.expected = 0
        self.replies: list[Reply] = []
        #: the reply is a text retrieval's (``VALUE …`` blocks up to ``END``), relayed raw
        self.values = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None:
            return  # unsolicited bytes: noticed (and the connection dropped) at the next acquire
        replies = self.replies
        try:
            while len(replies) < self.expected:
                reply = self._parse()
                if reply is None:
                    return
                replies.append(reply)
        except MemcacheProtocolError as exc:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(exc)
            self.abort()
            return
        self.waiter = None
        if not waiter.done():
            waiter.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            detail = f": {exc}" if exc else ""
            waiter.set_exception(MemcacheUnavailable(self.server, f"connection closed during a request{detail}"))

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> tuple[bytes, bytes | None] | None:
        """One complete reply (header line, data block or None), or None if incomplete."""
        if self.values:
            return self._parse_values()
        buf = self.buf
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > _MAX_REPLY_LINE:
                raise MemcacheProtocolError(self.server, f"reply line over {_MAX_REPLY_LINE} bytes without CRLF")
            return None
        if buf[:3] == b"VA ":
            head = bytes(buf[:end])
            try:
                size = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                raise MemcacheProtocolError(self.server, f"malformed VA header {head[:80]!r}") from None
            total = end + 2 + size + 2
            if len(buf) < total:
                return None
            if buf[total - 2:total] != b"\r\n":
                raise MemcacheProtocolError(self.server, f"data block of {size} bytes not followed by CRLF")
            data = bytes(buf[end + 2:end + 2 + size])
            del buf[:total]
            return head, data
        head = bytes(buf[:end])
        del buf[:end + 2]
        return head, None

    def _parse_values(self) -> tuple[bytes, bytes | None] | None:
        """A text retrieval's whole reply, raw: ``(b"", raw)`` once its ``END`` line is in,
        or ``(error line, None)`` for an error; None while incomplete. Only framing is
        parsed: each ``VALUE`` line's length, to step over its data block."""
        buf = self.buf
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > _MAX_REPLY_LINE:
                    raise MemcacheProtocolError(self.server, f"reply line over {_MAX_REPLY_LINE} bytes without CRLF")
                return None
            if buf[pos:pos + 6] == b"VALUE ":
                try:
                    size = int(buf[pos:end].split(b" ", 4)[3])
                except (IndexError, ValueError):
                    raise MemcacheProtocolError(self.server, f"malformed VALUE line {bytes(buf[pos:end])[:80]!r}") from None
                pos = end + 2 + size + 2
                if len(buf) < pos:
                    return None
                if buf[pos - 2:pos] != b"\r\n":
                    raise MemcacheProtocolError(self.server, f"data block of {size} bytes not followed by CRLF")
                continue
            if end == pos + 3 and buf[pos:end] == b"END":
                raw = bytes(buf[:end + 2])
                del buf[:end + 2]
                return b"", raw
            if pos:
                raise MemcacheProtocolError(self.server, f"unexpected line {bytes(buf[pos:end])[:80]!r} in a retrieval")
            head = bytes(buf[:end])
            del buf[:end + 2]
            return head, None


class RelayEntry(Protocol):
    """One request relayed on a ``RelayConnection``: how its reply is framed, when it is
    due, and where the reply (or the failure) goes."""

    framing: int
    deadline: float

    def done(self, reply: bytes, cas: int) -> None:
        """The reply's bytes, CRLF included (for ``REPLY_META_STORE`` the text storage reply,
        with the stored item's CAS, else 0)."""

    def fail(self, exc: MemcacheServerError) -> None:
        """No reply: the connection failed or timed out (the outcome of a write is unknown)."""


class _Wire(asyncio.Protocol):
    """One TCP connection of a ``RelayConnection``. Its callbacks reach the relay only while
    it is the relay's current connection: an aborted connection's late ``connection_lost``
    must not fail the requests already waiting for the next one."""

    def __init__(self, relay: RelayConnection) -> None:
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.relay._made(self, transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.relay._wire is self:
            self.relay.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.relay._wire is self:
            self.relay._lost(exc)


class RelayConnection:
    """One connection to one server, shared by every client connection of a listener, its
    requests pipelined: the listener's callback path (no coroutine, future or timer per
    request). Requests are answered in the order they were written, as memcached answers a
    connection; each reply goes to its entry's ``done`` straight from ``data_received``.

    Connected on first use (requests written meanwhile wait in order). One timer, not one
    per request: it fires at the oldest request's deadline; if that request is still
    unanswered, the connection is aborted — where it stands in the reply stream is then
    unknown — and every request on it fails (``MemcacheTimeout`` for the late one,
    ``MemcacheUnavailable`` for the rest). The same on a lost connection, a reply that
    cannot be framed, or ``ERROR`` (memcached did not understand what it was sent: the
    stream may be out of step). ``CLIENT_ERROR``/``SERVER_ERROR`` lines are answers in
    step (memcached swallows a refused data block) and are relayed.

    ``on_success``/``on_failure`` report the server's health to its pool: one call per
    reply, one per failed connection (not per request on it).

    A request is written at once when none is in flight on the connection (one client,
    one request at a time: nothing to wait for). Otherwise it joins the ones the loop's
    current pass sends, and they go out in one write once the pass's callbacks have run:
    several clients' requests and the copies they cause then cost the server one read and
    one wake-up instead of one each (with four clients and copies to N2, ~10 % of the
    proxy's CPU per request). The hold ends with the loop's current pass (no await in
    between, microseconds: the order of the time any request spends between its fence check
    and its write), and everything that waits for requests in flight (a switch's drain, the
    flush barrier) counts a held request as in flight.
    """

    def __init__(self, host: str, port: int, server: str, *, timeout: float, connect_timeout: float,
                 on_success: Callable[[], None], on_failure: Callable[[], None]) -> None:
        self.host = host
        self.port = port
        self.server = server
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._on_success = on_success
        self._on_failure = on_failure
        self.queue: deque[RelayEntry] = deque()
        self._transport: asyncio.Transport | None = None
        self._wire: _Wire | None = None
        self._connecting: list[bytes] | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def send(self, entry: RelayEntry, payload: bytes) -> None:
        """Write ``payload`` (one request, as memcached reads it) and queue ``entry`` for its reply."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        entry.deadline = loop.time() + self.timeout
        self.queue.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(entry.deadline, self._check)
        transport = self._transport
        if transport is not None:
            if self._out:
                self._out.append(payload)
            elif len(self.queue) > 1:  # others in flight: join this pass's write
                self._out.append(payload)
                loop.call_soon(self._flush, transport)
            else:
                transport.write(payload)
        elif self._connecting is not None:
            self._connecting.append(payload)
        elif self._closed:
            self._fail_all(MemcacheUnavailable(self.server, "client is closed"))
        else:
            self._connecting = [payload]
            loop.create_task(self._connect())

    def _flush(self, transport: asyncio.Transport) -> None:
        if transport is self._transport:
            out, self._out = self._out, []
            transport.writelines(out)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: _Wire(self), self.host, self.port)
        except TimeoutError:
            self._connect_failed(MemcacheUnavailable(self.server, f"no connection within {self.connect_timeout}s"))
        except OSError as exc:
            self._connect_failed(MemcacheUnavailable(self.server, f"cannot connect: {exc}"))

    def _connect_failed(self, exc: MemcacheServerError) -> None:
        self._connecting = None
        self._on_failure()
        self._fail_all(exc)

    def _made(self, wire: _Wire, transport: asyncio.Transport) -> None:
        waiting, self._connecting = self._connecting or [], None
        if self._closed:
            transport.abort()
            self._fail_all(MemcacheUnavailable(self.server, "client is closed"))
            return
        self._wire = wire
        self._transport = transport
        if waiting:
            transport.writelines(waiting)

    def _lost(self, exc: Exception | None) -> None:
        self._wire = None
        self._transport = None
        self._buf.clear()
        self._out = []
        if self.queue:
            self._on_failure()
            detail = f": {exc}" if exc else ""
            self._fail_all(MemcacheUnavailable(self.server, f"connection closed during a request{detail}"))

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _abort(self, exc: MemcacheServerError, late: RelayEntry | None = None) -> None:
        """Drop the connection (its place in the reply stream is lost) and fail every request."""
        transport, self._transport = self._transport, None
        self._wire = None  # its late callbacks are not this relay's any more
        self._buf.clear()
        self._out = []
        if transport is not None:
            transport.abort()
        self._on_failure()
        self._fail_all(exc, late)

    def _fail_all(self, exc: MemcacheServerError, late: RelayEntry | None = None) -> None:
        """Fail every queued request (``late`` with a timeout first). The connection is
        already detached: a request a failure callback sends goes on a new one."""
        entries = list(self.queue)
        self.queue.clear()
        if late is not None:
            late.fail(MemcacheTimeout(self.server, f"no reply within {self.timeout}s"))
        for entry in entries:
            entry.fail(exc)

    def _check(self) -> None:
        self._timer = None
        if not self.queue:
            return
        head = self.queue[0]
        if head.deadline <= self._loop.time():  # type: ignore[union-attr]
            self.queue.popleft()
            self._abort(MemcacheUnavailable(self.server, f"connection dropped after a request got no reply "
                                                         f"within {self.timeout}s"), late=head)
        else:
            self._timer = self._loop.call_at(head.deadline, self._check)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        queue = self.queue
        size = len(buf)
        pos = 0
        try:
            while pos < size:
                if not queue:
                    raise MemcacheProtocolError(self.server, f"unsolicited bytes {bytes(buf[pos:pos + 40])!r}")
                entry = queue[0]
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_REPLY_LINE:
                        raise MemcacheProtocolError(self.server, f"reply line over {_MAX_REPLY_LINE} bytes without CRLF")
                    break
                cas = 0
                if entry.framing == REPLY_VALUES and buf[pos:pos + 6] == b"VALUE ":
                    try:
                        length = int(buf[pos:end].split(b" ", 4)[3])
                    except (IndexError, ValueError):
                        raise MemcacheProtocolError(self.server, f"malformed VALUE line {bytes(buf[pos:end])[:80]!r}") \
                            from None
                    block = end + 2 + length
                    stop = block + 7
                    if size < stop:
                        break
                    if buf[block:stop] != b"\r\nEND\r\n":
                        raise MemcacheProtocolError(self.server, "a retrieval of one key not ended by END")
                    reply = buf if pos == 0 and stop == size and type(buf) is bytes else bytes(buf[pos:stop])
                elif entry.framing == REPLY_META_VALUE and buf[pos:pos + 3] == b"VA ":
                    try:
                        length = int(buf[pos + 3:end].split(b" ", 1)[0])
                    except ValueError:
                        raise MemcacheProtocolError(self.server, f"malformed VA line {bytes(buf[pos:end])[:80]!r}") \
                            from None
                    stop = end + 2 + length + 2
                    if size < stop:
                        break
                    if buf[stop - 2:stop] != b"\r\n":
                        raise MemcacheProtocolError(self.server, f"data block of {length} bytes not followed by CRLF")
                    reply = buf if pos == 0 and stop == size and type(buf) is bytes else bytes(buf[pos:stop])
                elif entry.framing == REPLY_META_STORE and (text := _TEXT_OF_MS.get(bytes(buf[pos:pos + 2]))):
                    if text is _STORED_TEXT:  # ``HD c<cas>``: the only flag asked for
                        if buf[pos + 2:pos + 4] != b" c" or not buf[pos + 4:end].isdigit():
                            raise MemcacheProtocolError(self.server, f"malformed ms reply {bytes(buf[pos:end])!r}")
                        cas = int(buf[pos + 4:end])
                    reply = text
                    stop = end + 2
                else:
                    stop = end + 2
                    reply = buf if pos == 0 and stop == size and type(buf) is bytes else bytes(buf[pos:stop])
                    if reply == b"ERROR\r\n":  # relayed as it came, then the connection is dropped
                        queue.popleft()
                        self._abort(MemcacheProtocolError(self.server, "answered ERROR to a relayed request"))
                        entry.done(reply, 0)
                        return
                queue.popleft()
                pos = stop
                self._on_success()
                entry.done(reply, cas)
        except MemcacheProtocolError as exc:
            self._abort(exc)
            return
        if pos >= size:
            if buf is self._buf:
                self._buf.clear()
        elif buf is self._buf:
            del self._buf[:pos]
        else:
            self._buf += memoryview(buf)[pos:]


class MemcacheClient:
    """Requests to one memcached, over at most ``max_connections`` pooled connections.

    ``side`` is a label for errors and metrics (``"n1"``/``"n2"``). Every request has
    ``timeout`` seconds (waiting for a free connection included) and raises
    ``MemcacheTimeout`` after it; a write that timed out may still have been applied.
    """

    def __init__(self, host: str, port: int, *, side: str = "", max_connections: int = 16,
                 timeout: float = 1.0, connect_timeout: float = 1.0) -> None:
        self.host = host
        self.port = port
        self.side = side
        self.server = f"{side} {host}:{port}".strip()
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def __repr__(self) -> str:
        return f"MemcacheClient({self.server})"

    # --- connections -------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self.server), self.host, self.port)
        except TimeoutError:
            raise MemcacheUnavailable(self.server, f"no connection within {self.connect_timeout}s") from None
        except OSError as exc:
            raise MemcacheUnavailable(self.server, f"cannot connect: {exc}") from None
        return conn

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise MemcacheUnavailable(self.server, "client is closed")
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise MemcacheTimeout(self.server, f"all {self.max_connections} connections busy "
                                                   f"for {self.timeout}s") from None
        else:
            await self._slots.acquire()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.buf:
                return conn
            conn.abort()  # closed by the server, or bytes nobody asked for: not trustworthy
        try:
            return await self._connect()
        except BaseException:
            self._slots.release()
            raise

    async def _request(self, payload: bytes) -> Reply:
        return (await self.pipeline(payload, 1))[0]

    async def forward(self, payload: bytes, reply_kind: int = REPLY_LINE) -> bytes:
        """Send one text request as the app wrote it and return its reply's raw bytes
        (CRLF included), framed by ``reply_kind``; the fast path of ``passthrough`` and
        ``proxy``, where nothing in a reply needs to be understood. An error reply from
        memcached is returned as it came (the app gets memcached's own words) and the
        connection is not reused."""
        try:
            head, raw = (await self.pipeline(payload, 1, values=reply_kind == REPLY_VALUES, raw_errors=True))[0]
        except _ErrorReply as exc:
            return exc.line + b"\r\n"
        return raw if raw is not None else head + b"\r\n"

    async def flush_all(self, delay: int = 0) -> None:
        """``flush_all [delay]``: every item invalid now (or in ``delay`` s)."""
        check_range("flush_all delay", delay, 0, MAX_EXPTIME)
        head, _ = await self._request(b"flush_all %d\r\n" % delay if delay else b"flush_all\r\n")
        if head != b"OK":
            raise self._unexpected(head, "flush_all")

    async def pipeline(self, payload: bytes, count: int, *, values: bool = False,
                       raw_errors: bool = False) -> list[Reply]:
        """Send ``payload`` (``count`` requests, concatenated) in one write on one
        connection and return the ``count`` replies, in order. If any reply is an error
        (``CLIENT_ERROR``/``SERVER_ERROR``/``ERROR``) the first one is raised."""
        conn = await self._acquire()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        conn.waiter = waiter
        conn.expected = count
        conn.values = values
        conn.replies = []
        conn.transport.write(payload)  # type: ignore[union-attr]
        timer = loop.call_later(self.timeout, _expire, waiter, self.server, self.timeout)
        try:
            replies = await waiter
        except BaseException:
            conn.waiter = None
            conn.abort()
            self._slots.release()
            raise
        finally:
            timer.cancel()
        for head, _ in replies:
            if head[:2] in (b"CL", b"SE", b"ER"):
                # CLIENT_ERROR / SERVER_ERROR / ERROR: answer the caller, never reuse the connection
                conn.abort()
                self._slots.release()
                raise _ErrorReply(head) if raw_errors else self._error_reply(head)
        self._idle.append(conn)
        self._slots.release()
        return replies

    def _error_reply(self, head: bytes) -> Exception:
        text = head.decode("latin-1")
        if head.startswith(b"CLIENT_ERROR"):
            return MemcacheRejected(self.server, text[len("CLIENT_ERROR "):] or text)
        if head.startswith(b"SERVER_ERROR"):
            return MemcacheServerReply(self.server, text)
        return MemcacheProtocolError(self.server, f"replied {text!r}")

    def _unexpected(self, head: bytes, command: str) -> MemcacheProtocolError:
        return MemcacheProtocolError(self.server, f"unexpected reply {head[:80]!r} to {command}")

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()

    # --- commands: ``cmd_*`` encodes a request (checking every argument), ``reply_*``
    # decodes its reply; ``pipeline`` sends several encoded requests at once -------------

    @staticmethod
    def cmd_get(key: bytes, touch: int | None = None) -> bytes:
        """``mg key v f t c`` (``T<touch>`` also sets a new exptime: get-and-touch)."""
        check_key(key)
        if touch is None:
            return b"mg %b v f t c\r\n" % key
        check_range("exptime", touch, MIN_EXPTIME, MAX_EXPTIME)
        return b"mg %b T%d v f t c\r\n" % (key, touch)  # T first: t then reports the new TTL

    def reply_get(self, reply: Reply) -> Item | None:
        head, data = reply
        if data is not None:
            flags = _return_flags(head.split(b" ")[2:])
            try:
                return Item(data, int(flags[102]), int(flags[116]), int(flags[99]))  # f, t, c
            except (KeyError, ValueError):
                raise self._unexpected(head, "mg") from None
        if head == b"EN":
            return None
        raise self._unexpected(head, "mg")

    @staticmethod
    def cmd_peek(key: bytes) -> bytes:
        """``mg key c t``: the current version's CAS and TTL, without the value."""
        check_key(key)
        return b"mg %b c t\r\n" % key

    def reply_peek(self, reply: Reply) -> Peek | None:
        head = reply[0]
        if head[:2] == b"HD":
            flags = _return_flags(head.split(b" ")[1:])
            try:
                return Peek(int(flags[99]), int(flags[116]))
            except (KeyError, ValueError):
                raise self._unexpected(head, "mg") from None
        if head == b"EN":
            return None
        raise self._unexpected(head, "mg")

    @staticmethod
    def cmd_store(key: bytes, value: bytes, *, mode: StoreMode = StoreMode.SET, flags: int = 0, exptime: int = 0,
                  cas: int | None = None, invalidate: bool = False) -> bytes:
        """``ms key <len> M<mode> F<flags> T<exptime> [C<cas>] [I] c``.

        ``invalidate`` (``I``): with ``cas``, a CAS older than the item's marks the stored
        value stale instead of failing (memcached's meta invalidation semantics).
        """
        check_key(key)
        check_value(value)
        check_range("flags", flags, 0, MAX_FLAGS)
        check_range("exptime", exptime, MIN_EXPTIME, MAX_EXPTIME)
        extra = b""
        if cas is not None:
            extra = b" C%d" % check_range("cas", cas, 0, MAX_U64)
        if invalidate:
            extra += b" I"
        return b"ms %b %d M%b F%d T%d%b c\r\n%b\r\n" % (key, len(value), mode.value, flags, exptime, extra, value)

    def reply_store(self, reply: Reply) -> StoreReply:
        head = reply[0]
        outcome = _MS_OUTCOME.get(head[:2])
        if outcome is None:
            raise self._unexpected(head, "ms")
        new_cas = 0
        if outcome is Outcome.STORED:
            try:
                new_cas = int(_return_flags(head.split(b" ")[1:])[99])
            except (KeyError, ValueError):
                raise self._unexpected(head, "ms") from None
        return StoreReply(outcome, new_cas)

    @staticmethod
    def cmd_delete(key: bytes, cas: int | None = None) -> bytes:
        """``md key [C<cas>]``."""
        check_key(key)
        if cas is None:
            return b"md %b\r\n" % key
        return b"md %b C%d\r\n" % (key, check_range("cas", cas, 0, MAX_U64))

    def reply_delete(self, reply: Reply) -> Outcome:
        outcome = _MD_OUTCOME.get(reply[0][:2])
        if outcome is None:
            raise self._unexpected(reply[0], "md")
        return outcome

    async def get(self, key: bytes, *, touch: int | None = None) -> Item | None:
        """Value, flags, remaining TTL (-1: none) and CAS; with ``touch``, get-and-touch."""
        return self.reply_get(await self._request(self.cmd_get(key, touch)))

    async def peek(self, key: bytes) -> Peek | None:
        return self.reply_peek(await self._request(self.cmd_peek(key)))

    async def store(self, key: bytes, value: bytes, *, mode: StoreMode = StoreMode.SET, flags: int = 0,
                    exptime: int = 0, cas: int | None = None, invalidate: bool = False) -> StoreReply:
        """``ms`` in ``mode`` -> outcome and the stored item's new CAS."""
        return self.reply_store(await self._request(
            self.cmd_store(key, value, mode=mode, flags=flags, exptime=exptime, cas=cas, invalidate=invalidate)))

    async def delete(self, key: bytes, *, cas: int | None = None) -> Outcome:
        """DELETED, NOT_FOUND, or EXISTS (``cas`` did not match)."""
        return self.reply_delete(await self._request(self.cmd_delete(key, cas)))

    async def arith(self, key: bytes, delta: int, *, incr: bool = True) -> int | None:
        """``ma key D<delta> M<I|D> v`` -> the new value, or None if the key is absent."""
        check_key(key)
        check_range("delta", delta, 0, MAX_U64)
        head, data = await self._request(b"ma %b D%d M%b v\r\n" % (key, delta, b"I" if incr else b"D"))
        if data is not None:
            try:
                return int(data)
            except ValueError:
                raise self._unexpected(head, "ma") from None
        if head == b"NF":
            return None
        raise self._unexpected(head, "ma")

    async def touch(self, key: bytes, exptime: int) -> bool:
        """``mg key T<exptime>`` -> whether the key existed."""
        check_key(key)
        check_range("exptime", exptime, MIN_EXPTIME, MAX_EXPTIME)
        head, _ = await self._request(b"mg %b T%d\r\n" % (key, exptime))
        if head[:2] == b"HD":
            return True
        if head == b"EN":
            return False
        raise self._unexpected(head, "mg")

    async def noop(self) -> None:
        head, _ = await self._request(b"mn\r\n")
        if head != b"MN":
            raise self._unexpected(head, "mn")

    async def version(self) -> str:
        head, _ = await self._request(b"version\r\n")
        if not head.startswith(b"VERSION "):
            raise self._unexpected(head, "version")
        return head[8:].decode("latin-1")


class _ErrorReply(Exception):
    """An error line to relay verbatim (``forward``)."""

    def __init__(self, line: bytes) -> None:
        super().__init__(line)
        self.line = line


def _expire(waiter: asyncio.Future, server: str, timeout: float) -> None:
    if not waiter.done():
        waiter.set_exception(MemcacheTimeout(server, f"no reply within {timeout}s"))


__all__ = ["REPLY_LINE", "REPLY_META_STORE", "REPLY_META_VALUE", "REPLY_VALUES", "Item", "MemcacheClient", "MemcacheServerError", "Outcome", "Peek", "StoreMode",
           "StoreReply"]
