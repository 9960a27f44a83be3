"""A memcached-protocol TCP listener, so an app's memcache client talks to the proxy unchanged.

Responsible for: parsing memcached's text commands (get/gets/gat/gats, set/add/replace/
append/prepend/cas, delete, incr/decr, touch, version, verbosity, flush_all, stats, quit)
and the meta commands (mg/ms/md/ma/mn) from each connection and sending each one through
``router.route_for(key)`` — whatever the key's mode is at that moment; answering with the bytes
memcached 1.6 answers, errors included (``tests/test_memcache_fidelity.py`` sends the same
requests to both); one command at a time per connection, replies in order (a pipelining
client's requests are read in order and answered in order).

The fast path, by callbacks: the single-key text commands (get/gets, set/add/replace/
append/prepend/cas, delete, incr/decr, touch; without noreply), once complete in the
buffer, are parsed only as far as framing and validation need (verb, key, numbers, data
length) in ``data_received`` and sent on the key's server's one pipelined connection
(``RelayConnection``, ``pool.relay_for``): the request's own bytes, except set/add/
replace/cas where the mode copies writes (``cow``, ``proxy``), whose command line becomes
``ms … c`` (the data block as it came) so that the copy gets the CAS it is verified by,
and a ``cow`` get/gets whose hit may need a fill of N2, sent as ``mg key v f t c`` (the
fill needs flags, TTL and CAS) and answered as the text reply memcached gives.
Each reply is written from that connection's ``data_received`` into the client's
transport, in request order (a FIFO of relayed requests per client connection), and the
route's ``Relay`` queues what the mode copies (``routes.py``). No task, future, timer or
coroutine per request. Every route rule still holds: ``router.route_for(key)`` per key;
the mode route admits the request (``ModeRoute.enter``: no switch under way, the fence
open) and counts it in flight until its reply, when the fence is asked again
(``ModeRoute.leave``). Everything else — meta commands, noreply, multi-key retrievals,
gat/gats, an incomplete or invalid command, a switch under way, a closed fence, a server
marked down — is served by the awaitable path: a task that waits until the relayed
requests before it are answered, serves that one command through the route's
primitives (or ``forward``), and hands the connection back.

Must never: let bad input reach memcached or stop the listener. A malformed line, an
unknown command, a key over 250 bytes or with a control byte, a negative or unparsable
length: memcached's own error (``ERROR``, ``CLIENT_ERROR bad command line format``…), and
like memcached the listener goes on reading the next line (a refused command's data
block is then read as a command, as memcached does). A value over the limit gets
``SERVER_ERROR object too large for cache`` and its data block is swallowed; a data block
not ended by CRLF where its length says gets ``CLIENT_ERROR bad data chunk``; a line over
2048 bytes without a newline gets ``CLIENT_ERROR line too long`` and is discarded.

Slow or stuck clients: no connection waits for another (each has its own buffer and
FIFO; the server connections are shared, and a server that does not answer within the
timeout fails the requests on its connection, naming it). A connection that stops
halfway through a command (a partial line or data block) is closed after
``command_timeout`` s; an idle one after ``idle_timeout`` s (long: memcache clients keep
pooled connections open); one that does not read its replies is closed when
``command_timeout`` passes with the send buffer full (nothing more is read from it
meanwhile). A client pipelining more than ``_MAX_PIPELINE`` requests is read on as its
replies go out. At most ``max_connections`` at once; beyond that a new connection gets
``SERVER_ERROR`` and is closed.

What the proxy answers itself, and what it refuses:
- ``flush_all [delay] [noreply]``: refused by default (``SERVER_ERROR`` with the reason,
  as mcrouter refuses it without ``--enable-flush-cmd``): the memcached behind the proxy
  is shared by every app of the deployment. With ``enable_flush`` it flushes both sides
  in the mode's order with a barrier in the copy queue (``CacheRouter.flush_all``).
- ``stats``: the proxy's own counters (``STAT`` lines, ``END``), as mcrouter does; any
  ``stats <sub>`` gets ``ERROR``, memcached's answer to a subcommand it does not know.
- ``version``: this proxy's version in memcached's format.
- ``verbosity`` is answered ``OK`` and not forwarded (memcached's log level, not the app's).
- meta flags that have no meaning through a two-sided route (``b`` base64 keys, ``I``
  invalidation, ``N`` autovivify, ``E``/``R``/``h``/``l`` …): ``CLIENT_ERROR`` saying so;
  flags memcached does not know at all: memcached's ``CLIENT_ERROR invalid flag``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections import deque

from proxy.cache import metrics
from proxy.cache.client import REPLY_LINE, REPLY_META_STORE, REPLY_META_VALUE, REPLY_VALUES, Item, Outcome, StoreMode
from proxy.cache.errors import (
    MAX_EXPTIME, MAX_FLAGS, MAX_ITEM_BYTES, MAX_KEY_BYTES, MAX_U64, MIN_EXPTIME, CacheError, CacheFencedError,
    CacheInputError, CacheOutcomeUnknown, MemcacheProtocolError, MemcacheRejected, MemcacheServerError,
    MemcacheServerReply,
)
from proxy.cache.router import CacheRouter, ModeRoute
from proxy.cache.routes import METRIC_OP, Relay

log = logging.getLogger("nxnw.proxy.cache.listener")

MAX_LINE = 2048
MAX_RETRIEVAL_LINE = 64 * 1024
#: pause reading a connection above this many buffered bytes (a full value fits)
_HIGH_WATER = MAX_ITEM_BYTES + MAX_RETRIEVAL_LINE + 4096
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")
_RETRIEVAL_PREFIXES = (b"get ", b"gets ", b"gat ", b"gats ")
_TEXT_OUTCOME = {Outcome.STORED: b"STORED\r\n", Outcome.NOT_STORED: b"NOT_STORED\r\n",
                 Outcome.EXISTS: b"EXISTS\r\n", Outcome.NOT_FOUND: b"NOT_FOUND\r\n"}
_META_CODE = {Outcome.STORED: b"HD", Outcome.DELETED: b"HD", Outcome.NOT_STORED: b"NS",
              Outcome.EXISTS: b"EX", Outcome.NOT_FOUND: b"NF"}
_TEXT_MODES = {b"set": StoreMode.SET, b"add": StoreMode.ADD, b"replace": StoreMode.REPLACE,
               b"append": StoreMode.APPEND, b"prepend": StoreMode.PREPEND, b"cas": StoreMode.SET}
_META_MODES = {b"S": StoreMode.SET, b"E": StoreMode.ADD, b"R": StoreMode.REPLACE, b"A": StoreMode.APPEND,
               b"P": StoreMode.PREPEND}
#: flags memcached 1.6 knows per meta command (anything else: ``CLIENT_ERROR invalid flag``)
_MEMCACHED_FLAGS = {b"mg": b"bcfhklOqstuvENRT", b"ms": b"bcCEFIkOqsSTMN", b"md": b"bCEIkOqTx",
                    b"ma": b"bCENJDTMOqtckv"}
VERSION_NUMBER = b"1.6.18-nxnw-proxy"
VERSION = b"VERSION %b\r\n" % VERSION_NUMBER
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_BAD_EXPTIME = "invalid exptime argument"
_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
_FLUSH_REFUSED = (b"SERVER_ERROR flush_all is disabled on the nxnw cache proxy: the memcached behind it is shared by "
                  b"every app of the deployment (start it with --enable-flush-cmd to serve it)\r\n")


class _BadRequest(Exception):
    """Answered ``CLIENT_ERROR <reason>`` (memcached's words), even with noreply."""


class _Unknown(Exception):
    """Answered ``ERROR``, as memcached answers a command it cannot parse."""


class _Closing(Exception):
    """The connection must close (peer gone, EOF or timeout halfway through a command)."""


def _key(token: bytes) -> bytes:
    """memcached's key rule (at most 250 bytes); control bytes are refused too: the meta
    protocol the parsed path speaks could not carry them."""
    if len(token) > MAX_KEY_BYTES or _BAD_KEY_BYTE.search(token):
        raise _BadRequest("bad command line format")
    return token


def _integer(token: bytes) -> int | None:
    """memcached's numbers: ASCII digits with an optional leading minus (no ``+``, ``_``,
    spaces or other forms Python's ``int`` would accept)."""
    digits = token[1:] if token[:1] == b"-" else token
    if not digits or not digits.isdigit() or len(digits) > 20:
        return None
    return int(token)


def _number(token: bytes, reason: str, low: int, high: int) -> int:
    value = _integer(token)
    if value is None or not low <= value <= high:
        raise _BadRequest(reason)
    return value


def _error_text(exc: BaseException) -> bytes:
    if isinstance(exc, MemcacheServerReply):
        return exc.line.encode("latin-1") + b"\r\n"
    if isinstance(exc, MemcacheRejected):
        text, kind = exc.reason, "CLIENT_ERROR"
    elif isinstance(exc, CacheInputError):
        text, kind = str(exc), "CLIENT_ERROR"
    elif isinstance(exc, CacheError):
        text, kind = str(exc), "SERVER_ERROR"
    else:
        text, kind = f"internal error ({type(exc).__name__}); see the proxy's log", "SERVER_ERROR"
    text = " ".join(text.split())[:1024]
    return f"{kind} {text}\r\n".encode("utf-8", "replace")


class ListenerStats:
    """The listener's own counters, answered to ``stats`` (memcached's names where one fits)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.total_connections = 0
        self.rejected_connections = 0
        self.cmd_get = self.get_hits = self.get_misses = 0
        self.cmd_set = self.cmd_touch = self.cmd_flush = 0
        self.delete_hits = self.delete_misses = 0
        self.incr_hits = self.incr_misses = self.decr_hits = self.decr_misses = 0
        self.touch_hits = self.touch_misses = 0
        self.forwarded = 0
        self.errors = 0


class CacheListener:
    """memcached protocol on ``host:port`` (port 0: any free port; see ``.port`` after start)."""

    def __init__(self, router: CacheRouter, host: str = "127.0.0.1", port: int = 0, *,
                 idle_timeout: float = 300.0, command_timeout: float = 5.0, max_connections: int = 1024,
                 enable_flush: bool = False, ssl_context: ssl.SSLContext | None = None) -> None:
        self.router = router
        self.ssl_context = ssl_context  # TLS on the listening socket (the proxy's certificate), None for plain TCP
        self.enable_flush = enable_flush
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self.stats = ListenerStats()
        self._server: asyncio.base_events.Server | None = None
        self._flusher: asyncio.TimerHandle | None = None
        self._sessions: set[_Session] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port, reuse_address=True,
                                                ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        self._flusher = loop.call_later(_FLUSH_EVERY, self._flush_metrics)
        log.info("memcached listener on %s:%d", self.host, self.port)

    def _flush_metrics(self) -> None:
        """The callback path's counts and latencies into the metrics (``metrics.Tally``)."""
        metrics.flush_tallies()
        self._flusher = asyncio.get_running_loop().call_later(_FLUSH_EVERY, self._flush_metrics)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
            metrics.flush_tallies()
        if self._server is not None:
            self._server.close()
        sessions = list(self._sessions)
        for session in sessions:
            session.close()
        await asyncio.gather(*(s.task for s in sessions if s.task is not None), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def connections(self) -> int:
        return len(self._sessions)

    def stat_lines(self) -> bytes:
        """``stats``: ``STAT <name> <value>`` lines and ``END``."""
        st, router = self.stats, self.router
        now = time.time()
        pairs: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", int(now - st.started)), ("time", int(now)),
            ("version", VERSION_NUMBER.decode()), ("curr_connections", len(self._sessions)),
            ("total_connections", st.total_connections), ("rejected_connections", st.rejected_connections),
        ]
        pairs += [(name, getattr(st, name)) for name in (
            "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "delete_hits", "delete_misses",
            "incr_hits", "incr_misses", "decr_hits", "decr_misses", "touch_hits", "touch_misses")]
        pairs += [("proxy_forwarded", st.forwarded), ("proxy_errors", st.errors)]
        pairs += list(router.stats().items())
        return b"".join(b"STAT %s %s\r\n" % (str(k).encode(), str(v).encode()) for k, v in pairs) + b"END\r\n"


#: what a relayed reply counts in ``stats``
_ST_GET, _ST_SET, _ST_DELETE, _ST_INCR, _ST_DECR, _ST_TOUCH = range(6)
#: relayed requests of one connection waiting for their replies before it reads on
_MAX_PIPELINE = 256
#: seconds between additions of the callback path's counts into the metrics
_FLUSH_EVERY = 1.0
_STORED = b"STORED\r\n"
_MS_MODE = {b"set": b"S", b"add": b"E", b"replace": b"R", b"cas": b"S"}


class _Relayed:
    """One request of a client connection relayed by callbacks: its place in the
    connection's reply FIFO, what the route does with its reply, and the reply once in.
    The ``RelayConnection`` entry of ``client.py``."""

    __slots__ = ("session", "route", "relay", "key", "op", "write", "stat", "framing", "deadline", "started",
                 "reply", "value", "flags", "exptime", "with_cas")

    def __init__(self, session: _Session, route: ModeRoute, relay: Relay, key: bytes, op: str, write: bool | None,
                 stat: int, framing: int) -> None:
        self.session = session
        self.route = route
        self.relay = relay
        self.key = key
        self.op = op
        self.write = write
        self.stat = stat
        self.framing = framing
        self.started = time.perf_counter()
        self.reply: bytes | None = None

    def done(self, reply: bytes, cas: int) -> None:
        relay = self.relay
        item = None
        if self.framing == REPLY_META_VALUE:
            reply, item = self._text_of_mg(reply)
        relay.tally.add(time.perf_counter() - self.started)
        reason = self.route.leave(self.write)
        session = self.session
        if reason is not None:  # fenced while it ran: the answer may belong to a mode the fleet has left
            exc = (CacheOutcomeUnknown(f"cache {self.op} not answered: {reason}; it may have been applied")
                   if self.write else CacheFencedError(f"cache {self.op} not answered: {reason}"))
            session.listener.stats.errors += 1
            self.reply = _error_text(exc)
        else:
            session.count(self.stat, reply)
            self.reply = reply
        session.answered(self)
        # the client is answered first; what the route copies starts right after, in this
        # same callback (so before a switch waiting for the in-flight count can go on)
        if relay.on_stored is not None and reply == _STORED:
            relay.on_stored(self.key, self.value, self.flags, self.exptime, cas)
        elif item is not None:
            relay.on_item(self.key, item)  # type: ignore[misc]
        elif relay.on_reply is not None:
            relay.on_reply(self.key, reply)

    def _text_of_mg(self, reply: bytes) -> tuple[bytes, Item | None]:
        """``mg key v f t c``'s reply as the text get/gets memcached would have answered,
        and the item; a miss is ``END``, an error line stays as it came."""
        if reply[:3] != b"VA ":
            return (b"END\r\n", None) if reply == b"EN\r\n" else (reply, None)
        end = reply.find(b"\r\n")
        fields = {t[:1]: t[1:] for t in reply[3:end].split(b" ")[1:]}
        try:
            flags, ttl, cas = int(fields[b"f"]), int(fields[b"t"]), int(fields[b"c"])
        except (KeyError, ValueError):
            self.session.listener.stats.errors += 1
            server = self.relay.pool.server
            return _error_text(MemcacheProtocolError(server, f"malformed mg reply {reply[:end][:80]!r}")), None
        value = reply[end + 2:-2]
        if self.with_cas:
            head = b"VALUE %b %d %d %d\r\n" % (self.key, flags, len(value), cas)
        else:
            head = b"VALUE %b %d %d\r\n" % (self.key, flags, len(value))
        return head + value + b"\r\nEND\r\n", Item(value, flags, ttl, cas)

    def fail(self, exc: MemcacheServerError) -> None:
        if self.relay.on_error is not None:
            self.relay.on_error(self.key)
        self.relay.tally.add(time.perf_counter() - self.started)
        self.route.leave(self.write)
        self.session.listener.stats.errors += 1
        self.reply = _error_text(exc)
        self.session.answered(self)


class _Session(asyncio.Protocol):
    """One client connection.

    The callback path: ``data_received`` reads each complete single-key command it can
    relay (``_relay``), sends it on the key's server's pipelined connection and queues a
    ``_Relayed`` in ``pending``; each reply, straight from the server connection's
    ``data_received``, is written once every earlier one has been (``answered``). No task,
    future or timer per request. Any other command — and anything incomplete, malformed,
    refused, or met while a switch runs or the fence is closed — goes to the awaitable
    path: a task that waits for ``pending`` to empty, serves that one command with the
    handlers below (which wait for more bytes, time out, answer errors), and hands the
    connection back. So replies keep the order of requests, whichever path served them.
    """

    def __init__(self, listener: CacheListener) -> None:
        self.listener = listener
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.closed = False
        self.pending: deque[_Relayed] = deque()
        self._eof = False
        self._parsing = False
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._emptied: asyncio.Future[None] | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: loop time of the last bytes received (the idle timeout counts from it)
        self._last = 0.0

    # --- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if len(listener._sessions) >= listener.max_connections:
            transport.write(b"SERVER_ERROR too many connections to the nxnw cache proxy\r\n")  # type: ignore
            transport.close()
            self.closed = True
            listener.stats.rejected_connections += 1
            return
        listener.stats.total_connections += 1
        listener._sessions.add(self)
        loop = self._loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._idle_timer = loop.call_later(listener.idle_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        if self.task is not None or self._writing_paused or self._parsing:
            self._hold(data)
            return
        if self.buf:
            data = bytes(self.buf) + data
            self.buf.clear()
        self._parse(data)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(False)
        if self.task is None and not self.pending:
            self.close()
        # keep a plain TCP transport open to answer what was already received; TLS has no
        # half-close (asyncio ignores True there and warns), so it closes as the client did
        return self.listener.ssl_context is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener._sessions.discard(self)
        self._cancel_timers()
        self._wake(False)
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        emptied, self._emptied = self._emptied, None
        if emptied is not None and not emptied.done():
            emptied.set_result(None)

    def pause_writing(self) -> None:
        """The client does not read its replies: read nothing more from it, and close it if
        that lasts ``command_timeout``."""
        self._writable = asyncio.get_running_loop().create_future()
        self._writing_paused = True
        self._pause_reading()
        self._write_timer = asyncio.get_running_loop().call_later(self.listener.command_timeout, self._stuck)

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._resume_parsing()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            self._wake(False)
            if self.transport is not None:
                self.transport.close()

    def _stuck(self) -> None:
        """The client has not read its replies for ``command_timeout``: drop the connection
        (aborted: a close would wait for the client to read what is buffered)."""
        self._write_timer = None
        if not self.closed:
            self.close()
            self.transport.abort()  # type: ignore[union-attr]

    def _cancel_timers(self) -> None:
        for timer in (self._write_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._write_timer = self._idle_timer = None

    def _idle_check(self) -> None:
        """Close a connection that sent nothing for ``idle_timeout`` s and waits for nothing."""
        self._idle_timer = None
        if self.closed:
            return
        loop = asyncio.get_running_loop()
        timeout = self.listener.idle_timeout
        if not self.pending and self.task is None and loop.time() - self._last >= timeout:
            self.close()
            return
        self._idle_timer = loop.call_at(max(self._last + timeout, loop.time() + 0.1), self._idle_check)

    def _wake(self, value: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    def _hold(self, data: bytes) -> None:
        """Keep ``data`` for later (the awaitable path reads it, or parsing resumes)."""
        self.buf += data
        if len(self.buf) > _HIGH_WATER:
            self._pause_reading()
        self._wake(True)

    def _pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self._reading_paused = True

    def _resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            self.transport.resume_reading()  # type: ignore[union-attr]
            self._reading_paused = False

    # --- the callback path ---------------------------------------------------------------

    def _parse(self, buf: bytes) -> None:
        """Relay the complete commands at the start of ``buf`` by callbacks, until one needs
        the awaitable path (started here) or the connection must wait; keep the rest."""
        pos = 0
        size = len(buf)
        self._parsing = True
        try:
            while pos < size:
                if self.closed:
                    return
                if self._writing_paused or len(self.pending) >= _MAX_PIPELINE:
                    break  # ``answered`` or ``resume_writing`` parse on
                step = self._relay(buf, pos, size)
                if step < 0:
                    self.buf += memoryview(buf)[pos:]
                    self.task = asyncio.get_running_loop().create_task(self._awaitable())
                    return
                pos = step
        finally:
            self._parsing = False
        if pos < size:
            self.buf += memoryview(buf)[pos:]
            if len(self.buf) > _HIGH_WATER:
                self._pause_reading()
        elif self._eof and not self.pending:
            self.close()

    def _relay(self, buf: bytes, pos: int, size: int) -> int:
        """Relay the command at ``pos`` by callbacks and return where the next one starts,
        or -1: the awaitable path must serve it (it is not a relayed command, or not
        complete, or not valid, or its route cannot take it now)."""
        nl = buf.find(b"\n", pos, pos + MAX_LINE + 1)
        if nl < 0:
            return -1
        tokens = buf[pos:nl - 1 if buf[nl - 1] == 13 else nl].split(b" ")
        verb = tokens[0]
        count = len(tokens)
        nxt = nl + 1
        value = flags = exptime = None
        framing = REPLY_LINE
        payload = None
        if verb == b"get" or verb == b"gets":
            if count != 2:
                return -1
            op, write, stat, framing = "get", False, _ST_GET, REPLY_VALUES
        elif verb in _TEXT_MODES:
            if count != (6 if verb == b"cas" else 5):
                return -1
            flags = _integer(tokens[2])
            exptime = _integer(tokens[3])
            length = _integer(tokens[4])
            cas = _integer(tokens[5]) if count == 6 else 0
            if (flags is None or exptime is None or length is None or cas is None or not 0 <= flags <= MAX_FLAGS
                    or not MIN_EXPTIME <= exptime <= MAX_EXPTIME or not 0 <= length <= MAX_ITEM_BYTES
                    or not 0 <= cas <= MAX_U64):
                return -1
            block = nxt + length
            if size < block + 2 or buf[block:block + 2] != b"\r\n":
                return -1  # incomplete, or a bad data chunk: the awaitable path waits or answers
            op = "set" if verb in _MS_MODE else "store"
            write, stat = True, _ST_SET
            nxt = block + 2
        elif verb == b"delete":
            if count != 2:
                return -1
            op, write, stat = "delete", None, _ST_DELETE
        elif verb == b"incr" or verb == b"decr":
            delta = _integer(tokens[2]) if count == 3 else None
            if delta is None or not 0 <= delta <= MAX_U64:
                return -1
            op, write, stat = "arith", True, _ST_INCR if verb == b"incr" else _ST_DECR
        elif verb == b"touch":
            touch = _integer(tokens[2]) if count == 3 else None
            if touch is None or not MIN_EXPTIME <= touch <= MAX_EXPTIME:
                return -1
            op, write, stat = "touch", True, _ST_TOUCH
        else:
            return -1
        key = tokens[1]
        if not key or len(key) > MAX_KEY_BYTES or _BAD_KEY_BYTE.search(key):
            return -1
        route = self.listener.router.route_for(key)
        relay = route.inner.relays.get(op)
        if relay is None:
            return -1
        conn = relay.pool.relay_for(key)
        if conn is None or not route.enter(write):
            return -1
        if relay.on_item is not None and relay.wants_item(key):  # type: ignore[misc]
            # a fill needs flags, TTL and CAS: sent as ``mg``, answered as text
            framing = REPLY_META_VALUE
            payload = b"mg %b v f t c\r\n" % key
        elif relay.on_stored is not None:  # the copy needs the CAS: sent as ``ms … c``, the data block as it came
            framing = REPLY_META_STORE
            value = buf[nl + 1:nxt - 2]
            payload = b"ms %b %d M%b F%d T%d%b c\r\n%b\r\n" % (
                key, len(value), _MS_MODE[verb], flags, exptime, b" C%d" % cas if verb == b"cas" else b"", value)
        entry = _Relayed(self, route, relay, key, METRIC_OP[op], write, stat, framing)
        if value is not None:
            entry.value, entry.flags, entry.exptime = value, flags, exptime
        entry.with_cas = verb == b"gets"
        stats = self.listener.stats
        if stat == _ST_GET:
            stats.cmd_get += 1
        elif stat == _ST_SET:
            stats.cmd_set += 1
        elif stat == _ST_TOUCH:
            stats.cmd_touch += 1
        stats.forwarded += 1
        self.pending.append(entry)
        conn.send(entry, payload if payload is not None else buf[pos:nxt])
        return nxt

    def count(self, stat: int, reply: bytes) -> None:
        """A relayed reply in the listener's ``stats``."""
        stats = self.listener.stats
        if stat == _ST_GET:
            if reply[:6] == b"VALUE ":
                stats.get_hits += 1
            else:
                stats.get_misses += 1
        elif stat == _ST_DELETE:
            if reply == b"DELETED\r\n":
                stats.delete_hits += 1
            else:
                stats.delete_misses += 1
        elif stat == _ST_INCR or stat == _ST_DECR:
            found = reply[:1].isdigit()
            if stat == _ST_INCR:
                stats.incr_hits += found
                stats.incr_misses += not found
            else:
                stats.decr_hits += found
                stats.decr_misses += not found
        elif stat == _ST_TOUCH:
            if reply == b"TOUCHED\r\n":
                stats.touch_hits += 1
            else:
                stats.touch_misses += 1

    def answered(self, entry: _Relayed) -> None:
        """``entry`` has its reply: write every reply at the head of the FIFO that is in."""
        pending = self.pending
        if pending[0] is not entry:
            return  # an earlier request is still out: its reply goes first
        pending.popleft()
        transport = self.transport
        if len(pending) == 0 or pending[0].reply is None:
            if not self.closed:
                transport.write(entry.reply)  # type: ignore[union-attr]
        else:
            out = [entry.reply]
            while pending and pending[0].reply is not None:
                out.append(pending.popleft().reply)
            if not self.closed:
                transport.writelines(out)  # type: ignore[union-attr]
        if not pending:
            emptied = self._emptied
            if emptied is not None:
                self._emptied = None
                if not emptied.done():
                    emptied.set_result(None)
            elif self._eof and self.task is None and not self.closed:
                self.close()
                return
        if self.buf and self.task is None and not self._parsing:
            self._resume_parsing()

    def _resume_parsing(self) -> None:
        if self.task is not None or self._parsing or self._writing_paused or self.closed:
            return
        if len(self.buf) <= _HIGH_WATER:
            self._resume_reading()
        if self.buf and len(self.pending) < _MAX_PIPELINE:
            data = bytes(self.buf)
            self.buf.clear()
            self._parse(data)

    # --- the awaitable path --------------------------------------------------------------

    async def _awaitable(self) -> None:
        """Serve the command at the start of ``buf`` once every relayed request before it
        has been answered, then hand the connection back to the callback path."""
        try:
            if self.pending:
                self._emptied = asyncio.get_running_loop().create_future()
                await self._emptied
            await self._serve_one()
        except _Closing:
            self.close()
        except Exception:  # noqa: BLE001 — one connection's bug must not reach the others
            log.exception("cache listener connection failed; closing it")
            self.close()
        finally:
            self.task = None
        if not self.closed:
            if self._eof and not self.buf:
                self.close()
            else:
                self._resume_parsing()

    async def _more(self, timeout: float) -> None:
        """Wait for more bytes; raise ``_Closing`` on EOF, close or timeout."""
        if self.closed or self._eof:
            raise _Closing()
        self._resume_reading()
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout, self._wake, False)
        try:
            got = await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if not got:
            raise _Closing()

    async def _block(self, size: int) -> bytes | None:
        """The ``size``-byte data block; its ``size + 2`` bytes are consumed whatever they
        are, and None returned if the last two are not CRLF (memcached's bad data chunk:
        what follows is read as the next command, as memcached does)."""
        need = size + 2
        while len(self.buf) < need:
            await self._more(self.listener.command_timeout)
        buf = self.buf
        ok = buf[size:need] == b"\r\n"
        data = bytes(buf[:size]) if ok else None
        del buf[:need]
        return data

    async def _skip_line(self) -> None:
        """Discard bytes up to and including the next newline."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                del self.buf[:nl + 1]
                return
            self.buf.clear()
            await self._more(self.listener.command_timeout)

    async def _swallow(self, size: int) -> None:
        """Discard the next ``size`` bytes (a refused data block and its CRLF)."""
        while size > 0:
            if not self.buf:
                await self._more(self.listener.command_timeout)
            n = min(size, len(self.buf))
            del self.buf[:n]
            size -= n

    def _send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    async def _drained(self) -> None:
        writable = self._writable
        if writable is not None:
            try:
                async with asyncio.timeout(self.listener.command_timeout):
                    await writable
            except TimeoutError:
                raise _Closing() from None

    async def _serve_one(self) -> None:
        """Read one command (waiting for it, bounded) and serve it."""
        listener = self.listener
        while True:
            buf = self.buf
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > MAX_LINE and not self._long_line_allowed(len(buf)):
                    self._send(b"CLIENT_ERROR line too long\r\n")
                    await self._skip_line()
                    return
                await self._more(listener.command_timeout if buf else listener.idle_timeout)
                continue
            if nl > MAX_LINE and not self._long_line_allowed(nl):
                del buf[:nl + 1]
                self._send(b"CLIENT_ERROR line too long\r\n")
                return
            end = nl - 1 if nl and buf[nl - 1] == 13 else nl
            line = bytes(buf[:end])
            del buf[:nl + 1]
            await self._command(line)
            if self._writable is not None:
                await self._drained()
            return

    def _long_line_allowed(self, length: int) -> bool:
        return length <= MAX_RETRIEVAL_LINE and self.buf.lstrip()[:5].startswith(_RETRIEVAL_PREFIXES)

    async def _command(self, line: bytes) -> None:
        tokens = line.split(b" ")
        if b"" in tokens:
            tokens = [t for t in tokens if t]
        handler = _HANDLERS.get(tokens[0]) if tokens else None
        try:
            if handler is None:
                raise _Unknown()
            await handler(self, tokens, line)
        except _Unknown:
            self._send(b"ERROR\r\n")
        except _BadRequest as exc:
            self._send(b"CLIENT_ERROR %s\r\n" % str(exc).encode("utf-8", "replace"))
        except (_Closing, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 — answered, logged if unexpected, connection kept
            self.listener.stats.errors += 1
            if not isinstance(exc, CacheError):
                log.exception("cache command %r failed", line[:80])
            self._send(_error_text(exc))

    # --- text retrieval ------------------------------------------------------------------

    async def _retrieve(self, tokens: list[bytes], line: bytes) -> None:
        name = tokens[0]
        touch = name in (b"gat", b"gats")
        with_cas = name in (b"gets", b"gats")
        exptime = None
        keys = tokens[1:]
        if touch:
            if len(tokens) < 2:
                raise _Unknown()
            exptime = _number(tokens[1], _BAD_EXPTIME, MIN_EXPTIME, MAX_EXPTIME)
            keys = tokens[2:]
        elif not keys:
            raise _Unknown()
        for key in keys:
            _key(key)
        stats = self.listener.stats
        stats.cmd_get += len(keys)
        if touch:
            stats.cmd_touch += len(keys)
        router = self.listener.router
        if exptime is None and len(keys) == 1:
            raw = await router.route_for(keys[0]).forward("get", keys[0], line + b"\r\n", REPLY_VALUES)
            if raw is not None:
                stats.forwarded += 1
                if raw[:6] == b"VALUE ":
                    stats.get_hits += 1
                else:
                    stats.get_misses += 1
                self._send(raw)
                return
        if exptime is None:
            if len(keys) == 1:
                items: list[Item | None] = [await router.route_for(keys[0]).meta_get(keys[0])]
            else:
                items = await asyncio.gather(*(router.route_for(k).meta_get(k) for k in keys))
        else:
            items = await asyncio.gather(*(router.route_for(k).gat(k, exptime) for k in keys))
        out = []
        for key, item in zip(keys, items):
            if item is None:
                stats.get_misses += 1
                if touch:
                    stats.touch_misses += 1
                continue
            stats.get_hits += 1
            if touch:
                stats.touch_hits += 1
            if with_cas:
                out.append(b"VALUE %b %d %d %d\r\n%b\r\n"
                           % (key, item.flags, len(item.value), item.cas or 0, item.value))
            else:
                out.append(b"VALUE %b %d %d\r\n%b\r\n" % (key, item.flags, len(item.value), item.value))
        out.append(b"END\r\n")
        self._send(b"".join(out))

    # --- text storage --------------------------------------------------------------------

    async def _storage(self, tokens: list[bytes], line: bytes) -> None:
        name = tokens[0]
        is_cas = name == b"cas"
        nargs = 6 if is_cas else 5
        if len(tokens) not in (nargs, nargs + 1):
            raise _Unknown()
        key = _key(tokens[1])
        flags = _integer(tokens[2])
        exptime = _integer(tokens[3])
        size = _integer(tokens[4])
        cas = _integer(tokens[5]) if is_cas else 0
        if (flags is None or exptime is None or size is None or cas is None or not 0 <= flags <= MAX_FLAGS
                or not MIN_EXPTIME <= exptime <= MAX_EXPTIME or size < 0 or not 0 <= cas <= MAX_U64):
            raise _BadRequest("bad command line format")
        noreply = len(tokens) == nargs + 1 and tokens[-1] == b"noreply"
        stats = self.listener.stats
        stats.cmd_set += 1
        if size > MAX_ITEM_BYTES:
            await self._swallow(size + 2)  # memcached swallows a refused block too
            if not noreply:
                self._send(_TOO_LARGE)
            return
        data = await self._block(size)
        if data is None:
            if noreply:  # memcached keeps quiet about it too
                return
            raise _BadRequest("bad data chunk")
        route = self.listener.router.route_for(key)
        if not noreply:
            op = "store" if name == b"append" or name == b"prepend" else "set"
            raw = await route.forward(op, key, b"%b\r\n%b\r\n" % (line, data), REPLY_LINE)
            if raw is not None:
                stats.forwarded += 1
                self._send(raw)
                return
        try:
            reply = await route.store(_TEXT_MODES[name], key, data, flags, exptime, cas if is_cas else None)
        except CacheError as exc:
            if noreply:
                log.warning("noreply %s %r failed: %s", name.decode(), key, exc)
                return
            raise
        if not noreply:
            self._send(_TEXT_OUTCOME[reply.outcome])

    # --- text others ---------------------------------------------------------------------

    async def _forwarded(self, op: str, key: bytes, line: bytes) -> bytes | None:
        raw = await self.listener.router.route_for(key).forward(op, key, line + b"\r\n", REPLY_LINE)
        if raw is not None:
            self.listener.stats.forwarded += 1
        return raw

    async def _delete(self, tokens: list[bytes], line: bytes) -> None:
        if not 2 <= len(tokens) <= 4:
            raise _Unknown()
        key = _key(tokens[1])
        noreply = tokens[-1] == b"noreply" and len(tokens) > 2
        zero = len(tokens) > 2 and tokens[2] == b"0"
        if not (len(tokens) == 2 or (len(tokens) == 3 and (zero or noreply)) or (len(tokens) == 4 and zero and noreply)):
            raise _BadRequest("bad command line format.  Usage: delete <key> [noreply]")
        stats = self.listener.stats
        if not noreply and len(tokens) == 2:
            raw = await self._forwarded("delete", key, line)
            if raw is not None:
                if raw == b"DELETED\r\n":
                    stats.delete_hits += 1
                else:
                    stats.delete_misses += 1
                self._send(raw)
                return
        outcome = await self._quiet(noreply, "delete", key, self.listener.router.route_for(key).delete_item(key))
        if outcome is Outcome.DELETED:
            stats.delete_hits += 1
        elif outcome is not None:
            stats.delete_misses += 1
        if not noreply and outcome is not None:
            self._send(b"DELETED\r\n" if outcome is Outcome.DELETED else b"NOT_FOUND\r\n")

    async def _arith(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) not in (3, 4):
            raise _Unknown()
        incr = tokens[0] == b"incr"
        noreply = len(tokens) == 4 and tokens[3] == b"noreply"
        key = _key(tokens[1])
        delta = _integer(tokens[2])
        if delta is None or not 0 <= delta <= MAX_U64:
            raise _BadRequest("invalid numeric delta argument")
        stats = self.listener.stats
        value = None
        if not noreply and len(tokens) == 3:
            raw = await self._forwarded("arith", key, line)
            if raw is not None:
                found = raw[:1].isdigit()
                if incr:
                    stats.incr_hits += found
                    stats.incr_misses += not found
                else:
                    stats.decr_hits += found
                    stats.decr_misses += not found
                self._send(raw)
                return
        value = await self._quiet(noreply, tokens[0].decode(), key,
                                  self.listener.router.route_for(key).arith(key, delta, incr))
        if incr:
            stats.incr_hits += value is not None
            stats.incr_misses += value is None
        else:
            stats.decr_hits += value is not None
            stats.decr_misses += value is None
        if not noreply:
            self._send(b"NOT_FOUND\r\n" if value is None else b"%d\r\n" % value)

    async def _touch(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) not in (3, 4):
            raise _Unknown()
        noreply = len(tokens) == 4 and tokens[3] == b"noreply"
        key = _key(tokens[1])
        exptime = _number(tokens[2], _BAD_EXPTIME, MIN_EXPTIME, MAX_EXPTIME)
        stats = self.listener.stats
        stats.cmd_touch += 1
        if not noreply and len(tokens) == 3:
            raw = await self._forwarded("touch", key, line)
            if raw is not None:
                if raw == b"TOUCHED\r\n":
                    stats.touch_hits += 1
                else:
                    stats.touch_misses += 1
                self._send(raw)
                return
        found = await self._quiet(noreply, "touch", key, self.listener.router.route_for(key).touch(key, exptime))
        stats.touch_hits += bool(found)
        stats.touch_misses += found is False
        if not noreply:
            self._send(b"TOUCHED\r\n" if found else b"NOT_FOUND\r\n")

    async def _quiet(self, noreply: bool, what: str, key: bytes, call):
        """Await a route call; with noreply a failure is logged, not answered (the client
        reads no reply, so an error line would be taken as the answer to its next command)."""
        if not noreply:
            return await call
        try:
            return await call
        except CacheError as exc:
            log.warning("noreply %s %r failed: %s", what, key, exc)
            return None

    async def _version(self, tokens: list[bytes], line: bytes) -> None:
        self._send(VERSION)

    async def _verbosity(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) not in (2, 3):
            raise _Unknown()
        if _integer(tokens[1]) is None:
            raise _BadRequest("bad command line format")
        if tokens[-1] != b"noreply":
            self._send(b"OK\r\n")

    async def _stats(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) > 1:
            raise _Unknown()  # memcached's answer to a stats subcommand it does not know
        self._send(self.listener.stat_lines())

    async def _flush_all(self, tokens: list[bytes], line: bytes) -> None:
        noreply = tokens[-1] == b"noreply" and len(tokens) > 1
        delay = 0
        if len(tokens) > 1 and tokens[1] != b"noreply":
            value = _integer(tokens[1])
            if value is None or value > MAX_EXPTIME:
                raise _BadRequest(_BAD_EXPTIME)
            delay = max(value, 0)
        self.listener.stats.cmd_flush += 1
        if not self.listener.enable_flush:
            self._send(_FLUSH_REFUSED)  # sent even with noreply: a refusal must not pass for a flush
            return
        try:
            await self.listener.router.flush_all(delay)
        except CacheError as exc:
            if noreply:
                log.warning("noreply flush_all failed: %s", exc)
                return
            raise
        if not noreply:
            self._send(b"OK\r\n")

    async def _quit(self, tokens: list[bytes], line: bytes) -> None:
        raise _Closing()

    # --- meta ----------------------------------------------------------------------------

    async def _mn(self, tokens: list[bytes], line: bytes) -> None:
        self._send(b"MN\r\n")

    @staticmethod
    def _meta_flags(command: bytes, tokens: list[bytes], allowed: bytes) -> dict[bytes, bytes]:
        flags: dict[bytes, bytes] = {}
        known = _MEMCACHED_FLAGS[command]
        for token in tokens:
            flag = token[:1]
            if not flag.isalpha() or flag not in known:
                raise _BadRequest("invalid flag")
            if flag not in allowed:
                raise _BadRequest(f"flag {flag.decode()} of {command.decode()} is not supported through the nxnw proxy")
            if flag in flags:
                raise _BadRequest("duplicate flag")
            flags[flag] = token[1:]
        return flags

    @staticmethod
    def _meta_return(flags: dict[bytes, bytes], key: bytes, item: Item | None = None, cas: int | None = None) -> bytes:
        out = []
        for flag, token in flags.items():
            if flag == b"O":
                out.append(b" O" + token)
            elif flag == b"k":
                out.append(b" k" + key)
            elif flag == b"c" and (item is not None or cas is not None):
                out.append(b" c%d" % (item.cas if item is not None else cas))
            elif item is not None:
                if flag == b"f":
                    out.append(b" f%d" % item.flags)
                elif flag == b"t":
                    out.append(b" t%d" % (item.ttl if item.ttl is not None else -1))
                elif flag == b"s":
                    out.append(b" s%d" % len(item.value))
        return b"".join(out)

    async def _mg(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) < 2:
            raise _Unknown()
        key = _key(tokens[1])
        flags = self._meta_flags(b"mg", tokens[2:], b"vfctksOqTu")
        route = self.listener.router.route_for(key)
        stats = self.listener.stats
        stats.cmd_get += 1
        if b"T" in flags:
            stats.cmd_touch += 1
            item = await route.gat(key, _number(flags[b"T"], "bad token in command line format", MIN_EXPTIME,
                                                MAX_EXPTIME))
        else:
            item = await route.meta_get(key)
        if item is None:
            stats.get_misses += 1
            if b"q" not in flags:
                self._send(b"EN\r\n")
            return
        stats.get_hits += 1
        ret = self._meta_return(flags, key, item)
        if b"v" in flags:
            self._send(b"VA %d%b\r\n%b\r\n" % (len(item.value), ret, item.value))
        else:
            self._send(b"HD%b\r\n" % ret)

    async def _ms(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) < 3:
            raise _BadRequest("bad command line format")
        size = _integer(tokens[2])
        if size is None or size < 0:
            raise _BadRequest("bad command line format")
        try:
            key = _key(tokens[1])
            flags = self._meta_flags(b"ms", tokens[3:], b"cCFTMkOq")
            mode = _META_MODES.get(flags.get(b"M", b"S"))
            if mode is None:
                raise _BadRequest("invalid mode for ms STORE")
            flag_bits = _number(flags[b"F"], "bad token in command line format", 0, MAX_FLAGS) if b"F" in flags else 0
            exptime = _number(flags[b"T"], "bad token in command line format", MIN_EXPTIME,
                              MAX_EXPTIME) if b"T" in flags else 0
            cas = _number(flags[b"C"], "bad token in command line format", 0, MAX_U64) if b"C" in flags else None
        except _BadRequest:
            await self._swallow(size + 2)  # memcached's meta set skips the value of a refused command
            raise
        self.listener.stats.cmd_set += 1
        if size > MAX_ITEM_BYTES:
            await self._swallow(size + 2)
            self._send(_TOO_LARGE)
            return
        data = await self._block(size)
        if data is None:
            raise _BadRequest("bad data chunk")
        reply = await self.listener.router.route_for(key).store(mode, key, data, flag_bits, exptime, cas)
        if reply.outcome is Outcome.STORED and b"q" in flags:
            return
        ret = self._meta_return(flags, key, cas=reply.cas)
        self._send(b"%b%b\r\n" % (_META_CODE[reply.outcome], ret))

    async def _md(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) < 2:
            raise _Unknown()
        key = _key(tokens[1])
        flags = self._meta_flags(b"md", tokens[2:], b"CkOq")
        cas = _number(flags[b"C"], "bad token in command line format", 0, MAX_U64) if b"C" in flags else None
        outcome = await self.listener.router.route_for(key).delete_item(key, cas)
        stats = self.listener.stats
        if outcome is Outcome.DELETED:
            stats.delete_hits += 1
        else:
            stats.delete_misses += 1
        if outcome is Outcome.DELETED and b"q" in flags:
            return
        self._send(b"%b%b\r\n" % (_META_CODE[outcome], self._meta_return(flags, key)))

    async def _ma(self, tokens: list[bytes], line: bytes) -> None:
        if len(tokens) < 2:
            raise _Unknown()
        key = _key(tokens[1])
        flags = self._meta_flags(b"ma", tokens[2:], b"DMvkOq")
        delta = _number(flags[b"D"], "bad token in command line format", 0, MAX_U64) if b"D" in flags else 1
        mode = flags.get(b"M", b"I")
        if mode not in (b"I", b"i", b"+", b"D", b"d", b"-"):
            raise _BadRequest("invalid mode for ma M token")
        value = await self.listener.router.route_for(key).arith(key, delta, mode in (b"I", b"i", b"+"))
        if value is None:
            self._send(b"NF%b\r\n" % self._meta_return(flags, key))
            return
        if b"q" in flags and b"v" not in flags:
            return
        ret = self._meta_return(flags, key)
        if b"v" in flags:
            number = b"%d" % value
            self._send(b"VA %d%b\r\n%b\r\n" % (len(number), ret, number))
        else:
            self._send(b"HD%b\r\n" % ret)


_HANDLERS = {
    b"get": _Session._retrieve, b"gets": _Session._retrieve, b"gat": _Session._retrieve, b"gats": _Session._retrieve,
    b"set": _Session._storage, b"add": _Session._storage, b"replace": _Session._storage,
    b"append": _Session._storage, b"prepend": _Session._storage, b"cas": _Session._storage,
    b"delete": _Session._delete, b"incr": _Session._arith, b"decr": _Session._arith, b"touch": _Session._touch,
    b"version": _Session._version, b"verbosity": _Session._verbosity, b"flush_all": _Session._flush_all,
    b"stats": _Session._stats, b"quit": _Session._quit,
    b"mn": _Session._mn, b"mg": _Session._mg, b"ms": _Session._ms, b"md": _Session._md, b"ma": _Session._ma,
}
