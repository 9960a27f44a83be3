"""A memcached-protocol TCP listener, so an app's memcache client talks to the proxy unchanged.

Responsible for: parsing memcached's text commands (get/gets/gat/gats, set/add/replace/
append/prepend/cas, delete, incr/decr, touch, version, verbosity, flush_all, quit) and
the meta commands (mg/ms/md/ma/mn) from each connection and sending each one through
``router.route`` — whatever the current mode is at that moment; answering in memcached's
own reply format; one command at a time per connection, replies in order.

Must never: let bad input reach memcached or stop the listener. A malformed line, an
unknown command, a key over 250 bytes or with a control byte, a negative or oversized
length, a data block whose length does not match (``CLIENT_ERROR bad data chunk``), a
line over 2048 bytes without a newline: each gets ``CLIENT_ERROR <reason>`` (``ERROR`` for
an unknown command, as memcached does) and the connection keeps serving. Where the
stream's framing is lost the listener resynchronises the way memcached does: a declared
data block it refuses is swallowed (its length is known), a bad data chunk or an
overlong line is discarded up to the next newline.

Slow or stuck clients: each connection is its own task, so a slow one never delays
another. A connection that stops halfway through a command (a partial line or data
block) is closed after ``command_timeout`` s; an idle one after ``idle_timeout`` s
(long: memcache clients keep pooled connections open); one that does not read its
replies is closed when ``command_timeout`` passes with the send buffer full. At most
``max_connections`` at once; beyond that a new connection gets ``SERVER_ERROR`` and is
closed.

What the proxy refuses, and why:
- ``flush_all``: the memcached behind the proxy is shared by every app of the deployment,
  and a flush cannot be ordered against the copies still queued for the other side (a
  copy queued before the flush could land after it on N2) — ``CLIENT_ERROR``.
- ``verbosity`` is answered ``OK`` and not forwarded (it is memcached's log level, not the
  app's); ``stats``, ``shutdown``, ``slabs``, ``lru_crawler``… are unknown here (``ERROR``).
- meta flags that have no meaning through a two-sided route (``b`` base64 keys, ``I``
  invalidation, ``N`` autovivify, ``E``/``R``/``h``/``l`` …) — ``CLIENT_ERROR``.
- text lines longer than 2048 bytes, except multi-key retrievals (get/gets/gat/gats, up
  to 64 KiB — memcached makes the same exception).
"""

from __future__ import annotations

import asyncio
import logging
import re

from proxy.cache.client import Item, Outcome, StoreMode
from proxy.cache.errors import (
    MAX_EXPTIME, MAX_FLAGS, MAX_KEY_BYTES, MAX_U64, MAX_VALUE_BYTES, MIN_EXPTIME, CacheError, CacheInputError,
    MemcacheRejected,
)
from proxy.cache.router import CacheRouter

log = logging.getLogger("nxnw.proxy.cache.listener")

MAX_LINE = 2048
MAX_RETRIEVAL_LINE = 64 * 1024
#: pause reading a connection above this many buffered bytes (a full value fits)
_HIGH_WATER = MAX_VALUE_BYTES + MAX_RETRIEVAL_LINE + 4096
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
VERSION = b"VERSION 1.6.18-nxnw-proxy\r\n"


class _BadRequest(Exception):
    """The command is malformed: ``CLIENT_ERROR <reason>``, sent even with noreply."""


class _Closing(Exception):
    """The connection must close (peer gone, EOF or timeout halfway through a command)."""


def _key(token: bytes) -> bytes:
    if len(token) > MAX_KEY_BYTES:
        raise _BadRequest(f"bad command line format: key of {len(token)} bytes exceeds the {MAX_KEY_BYTES}-byte limit")
    if _BAD_KEY_BYTE.search(token):
        raise _BadRequest("bad command line format: key contains a control character")
    return token


def _integer(token: bytes) -> int | None:
    """memcached's numbers: ASCII digits with an optional leading minus (no ``+``, ``_``,
    spaces or other forms Python's ``int`` would accept)."""
    digits = token[1:] if token[:1] == b"-" else token
    if not digits or not digits.isdigit() or len(digits) > 20:
        return None
    return int(token)


def _number(token: bytes, what: str, low: int, high: int) -> int:
    value = _integer(token)
    if value is None:
        raise _BadRequest(f"bad command line format: {what} {token[:40]!r} is not a number")
    if not low <= value <= high:
        raise _BadRequest(f"bad command line format: {what} {token[:40]!r} is outside {low}..{high}")
    return value


def _error_text(exc: BaseException) -> bytes:
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


class CacheListener:
    """memcached protocol on ``host:port`` (port 0: any free port; see ``.port`` after start)."""

    def __init__(self, router: CacheRouter, host: str = "127.0.0.1", port: int = 0, *,
                 idle_timeout: float = 300.0, command_timeout: float = 5.0, max_connections: int = 1024) -> None:
        self.router = router
        self.host = host
        self.port = port
        self.idle_timeout = idle_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[_Session] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Session(self), self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("memcached listener on %s:%d", self.host, self.port)

    async def close(self) -> None:
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


class _Session(asyncio.Protocol):
    """One client connection: a buffer fed by the transport, and a task that serves it."""

    def __init__(self, listener: CacheListener) -> None:
        self.listener = listener
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task | None = None
        self.closed = False
        self._eof = False
        self._reading_paused = False
        self._waiter: asyncio.Future[bool] | None = None
        self._writable: asyncio.Future[None] | None = None

    # --- transport callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if len(listener._sessions) >= listener.max_connections:
            transport.write(b"SERVER_ERROR too many connections to the nxnw cache proxy\r\n")  # type: ignore
            transport.close()
            self.closed = True
            return
        listener._sessions.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self._reading_paused:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self._reading_paused = True
        self._wake(True)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(False)
        return True  # keep the transport open to answer what was already received

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.listener._sessions.discard(self)
        self._wake(False)
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._wake(False)
            if self.transport is not None:
                self.transport.close()

    def _wake(self, value: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(value)

    # --- reading -------------------------------------------------------------------------

    async def _more(self, timeout: float) -> None:
        """Wait for more bytes; raise ``_Closing`` on EOF, close or timeout."""
        if self.closed or self._eof:
            raise _Closing()
        if self._reading_paused:
            self.transport.resume_reading()  # type: ignore[union-attr]
            self._reading_paused = False
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
        """The ``size``-byte data block and its CRLF; None (resynchronised) if the CRLF is
        not where the declared length says."""
        need = size + 2
        while len(self.buf) < need:
            await self._more(self.listener.command_timeout)
        buf = self.buf
        if buf[size:need] != b"\r\n":
            del buf[:size]
            await self._skip_line()
            return None
        data = bytes(buf[:size])
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

    # --- writing -------------------------------------------------------------------------

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

    # --- the loop ------------------------------------------------------------------------

    async def _serve(self) -> None:
        listener = self.listener
        try:
            while not self.closed:
                buf = self.buf
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > MAX_LINE and not self._long_line_allowed(len(buf)):
                        self._send(b"CLIENT_ERROR line too long: over %d bytes without a newline\r\n" % MAX_LINE)
                        await self._skip_line()
                        continue
                    await self._more(listener.command_timeout if buf else listener.idle_timeout)
                    continue
                if nl > MAX_LINE and not self._long_line_allowed(nl):
                    del buf[:nl + 1]
                    self._send(b"CLIENT_ERROR line too long: over %d bytes without a newline\r\n" % MAX_LINE)
                    continue
                end = nl - 1 if nl and buf[nl - 1] == 13 else nl
                line = bytes(buf[:end])
                del buf[:nl + 1]
                await self._command(line)
                if self._writable is not None:
                    await self._drained()
        except _Closing:
            pass
        except Exception:  # noqa: BLE001 — one connection's bug must not reach the others
            log.exception("cache listener connection failed; closing it")
        finally:
            self.close()

    def _long_line_allowed(self, length: int) -> bool:
        return length <= MAX_RETRIEVAL_LINE and self.buf.lstrip()[:5].startswith(_RETRIEVAL_PREFIXES)

    async def _command(self, line: bytes) -> None:
        tokens = line.split()
        handler = _HANDLERS.get(tokens[0]) if tokens else None
        if handler is None:
            self._send(b"ERROR\r\n")
            return
        try:
            await handler(self, tokens)
        except _Oversized as exc:
            await self._swallow(exc.size + 2)  # stay in step with the client: skip its data block
            self._send(b"CLIENT_ERROR %s\r\n" % str(exc).encode())
        except _BadRequest as exc:
            self._send(b"CLIENT_ERROR %s\r\n" % str(exc).encode("utf-8", "replace"))
        except (_Closing, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 — answered, logged if unexpected, connection kept
            if not isinstance(exc, CacheError):
                log.exception("cache command %r failed", line[:80])
            self._send(_error_text(exc))

    # --- text retrieval ------------------------------------------------------------------

    async def _retrieve(self, tokens: list[bytes]) -> None:
        name = tokens[0]
        touch = name in (b"gat", b"gats")
        with_cas = name in (b"gets", b"gats")
        exptime = None
        keys = tokens[1:]
        if touch:
            if len(tokens) < 3:
                self._send(b"ERROR\r\n")
                return
            exptime = _number(tokens[1], "exptime", MIN_EXPTIME, MAX_EXPTIME)
            keys = tokens[2:]
        if not keys:
            self._send(b"ERROR\r\n")
            return
        for key in keys:
            _key(key)
        route = self.listener.router.route
        if exptime is None:
            if len(keys) == 1:
                items: list[Item | None] = [await route.meta_get(keys[0])]
            else:
                items = await asyncio.gather(*(route.meta_get(k) for k in keys))
        else:
            items = await asyncio.gather(*(route.gat(k, exptime) for k in keys))
        out = []
        for key, item in zip(keys, items):
            if item is None:
                continue
            if with_cas:
                out.append(b"VALUE %b %d %d %d\r\n%b\r\n"
                           % (key, item.flags, len(item.value), item.cas or 0, item.value))
            else:
                out.append(b"VALUE %b %d %d\r\n%b\r\n" % (key, item.flags, len(item.value), item.value))
        out.append(b"END\r\n")
        self._send(b"".join(out))

    # --- text storage --------------------------------------------------------------------

    async def _storage(self, tokens: list[bytes]) -> None:
        name = tokens[0]
        is_cas = name == b"cas"
        nargs = 6 if is_cas else 5
        if len(tokens) not in (nargs, nargs + 1):
            raise _BadRequest("bad command line format: usage: %s <key> <flags> <exptime> <bytes>%s [noreply]"
                              % (name.decode(), " <cas unique>" if is_cas else ""))
        size = self._declared_length(tokens[4])
        noreply = len(tokens) == nargs + 1 and tokens[-1] == b"noreply"
        if len(tokens) == nargs + 1 and not noreply:
            await self._swallow(size + 2)
            raise _BadRequest(f"bad command line format: unexpected {tokens[-1][:40]!r} (expected noreply)")
        data = await self._block(size)
        if data is None:
            raise _BadRequest(f"bad data chunk: the data block is not {size} bytes followed by CRLF")
        key = _key(tokens[1])
        flags = _number(tokens[2], "flags", 0, MAX_FLAGS)
        exptime = _number(tokens[3], "exptime", MIN_EXPTIME, MAX_EXPTIME)
        cas = _number(tokens[5], "cas unique", 0, MAX_U64) if is_cas else None
        route = self.listener.router.route
        try:
            reply = await route.store(_TEXT_MODES[name], key, data, flags, exptime, cas)
        except CacheError as exc:
            if noreply:
                log.warning("noreply %s %r failed: %s", name.decode(), key, exc)
                return
            raise
        if not noreply:
            self._send(_TEXT_OUTCOME[reply.outcome])

    def _declared_length(self, token: bytes) -> int:
        size = _integer(token)
        if size is None:
            raise _BadRequest(f"bad data chunk: length {token[:40]!r} is not a number")
        if size < 0:
            raise _BadRequest(f"bad data chunk: length {size} is negative")
        if size > MAX_VALUE_BYTES:
            raise _Oversized(size)
        return size

    # --- text others ---------------------------------------------------------------------

    async def _delete(self, tokens: list[bytes]) -> None:
        if not 2 <= len(tokens) <= 4 or any(t not in (b"0", b"noreply") for t in tokens[2:]):
            raise _BadRequest("bad command line format: usage: delete <key> [noreply]")
        noreply = tokens[-1] == b"noreply"
        key = _key(tokens[1])
        outcome = await self._quiet(noreply, "delete", key, self.listener.router.route.delete_item(key))
        if not noreply and outcome is not None:
            self._send(b"DELETED\r\n" if outcome is Outcome.DELETED else b"NOT_FOUND\r\n")

    async def _arith(self, tokens: list[bytes]) -> None:
        if len(tokens) not in (3, 4) or (len(tokens) == 4 and tokens[3] != b"noreply"):
            raise _BadRequest(f"bad command line format: usage: {tokens[0].decode()} <key> <value> [noreply]")
        noreply = len(tokens) == 4
        key = _key(tokens[1])
        try:
            delta = _number(tokens[2], "delta", 0, MAX_U64)
        except _BadRequest:
            raise _BadRequest("invalid numeric delta argument") from None
        value = await self._quiet(noreply, tokens[0].decode(), key,
                                  self.listener.router.route.arith(key, delta, tokens[0] == b"incr"))
        if not noreply:
            self._send(b"NOT_FOUND\r\n" if value is None else b"%d\r\n" % value)

    async def _touch(self, tokens: list[bytes]) -> None:
        if len(tokens) not in (3, 4) or (len(tokens) == 4 and tokens[3] != b"noreply"):
            raise _BadRequest("bad command line format: usage: touch <key> <exptime> [noreply]")
        noreply = len(tokens) == 4
        key = _key(tokens[1])
        exptime = _number(tokens[2], "exptime", MIN_EXPTIME, MAX_EXPTIME)
        found = await self._quiet(noreply, "touch", key, self.listener.router.route.touch(key, exptime))
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

    async def _version(self, tokens: list[bytes]) -> None:
        self._send(VERSION)

    async def _verbosity(self, tokens: list[bytes]) -> None:
        if len(tokens) not in (2, 3):
            self._send(b"ERROR\r\n")
        elif tokens[-1] != b"noreply":
            self._send(b"OK\r\n")

    async def _flush_all(self, tokens: list[bytes]) -> None:
        raise _BadRequest("flush_all is refused by the nxnw cache proxy: the cache is shared by every app of "
                          "the deployment, and a flush cannot be ordered against copies still queued for the "
                          "other side")

    async def _quit(self, tokens: list[bytes]) -> None:
        raise _Closing()

    # --- meta ----------------------------------------------------------------------------

    async def _mn(self, tokens: list[bytes]) -> None:
        self._send(b"MN\r\n")

    @staticmethod
    def _meta_flags(tokens: list[bytes], allowed: bytes) -> dict[bytes, bytes]:
        flags: dict[bytes, bytes] = {}
        for token in tokens:
            flag = token[:1]
            if flag not in allowed or not flag.isalpha():
                raise _BadRequest(f"invalid flag {flag.decode('latin-1')!r} (not supported through the nxnw proxy)")
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

    async def _mg(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            raise _BadRequest("bad command line format: usage: mg <key> <flags>*")
        key = _key(tokens[1])
        flags = self._meta_flags(tokens[2:], b"vfctksOqTu")
        route = self.listener.router.route
        if b"T" in flags:
            item = await route.gat(key, _number(flags[b"T"], "T (ttl)", MIN_EXPTIME, MAX_EXPTIME))
        else:
            item = await route.meta_get(key)
        if item is None:
            if b"q" not in flags:
                self._send(b"EN\r\n")
            return
        ret = self._meta_return(flags, key, item)
        if b"v" in flags:
            self._send(b"VA %d%b\r\n%b\r\n" % (len(item.value), ret, item.value))
        else:
            self._send(b"HD%b\r\n" % ret)

    async def _ms(self, tokens: list[bytes]) -> None:
        if len(tokens) < 3:
            raise _BadRequest("bad command line format: usage: ms <key> <datalen> <flags>*")
        size = self._declared_length(tokens[2])
        try:
            flags = self._meta_flags(tokens[3:], b"cCFTMkOq")
            mode = _META_MODES.get(flags.get(b"M", b"S"))
            if mode is None:
                raise _BadRequest("invalid mode for ms M token")
            flag_bits = _number(flags[b"F"], "F (client flags)", 0, MAX_FLAGS) if b"F" in flags else 0
            exptime = _number(flags[b"T"], "T (ttl)", MIN_EXPTIME, MAX_EXPTIME) if b"T" in flags else 0
            cas = _number(flags[b"C"], "C (cas)", 0, MAX_U64) if b"C" in flags else None
        except _BadRequest:
            await self._swallow(size + 2)
            raise
        data = await self._block(size)
        if data is None:
            raise _BadRequest(f"bad data chunk: the data block is not {size} bytes followed by CRLF")
        key = _key(tokens[1])
        reply = await self.listener.router.route.store(mode, key, data, flag_bits, exptime, cas)
        if reply.outcome is Outcome.STORED and b"q" in flags:
            return
        ret = self._meta_return(flags, key, cas=reply.cas)
        self._send(b"%b%b\r\n" % (_META_CODE[reply.outcome], ret))

    async def _md(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            raise _BadRequest("bad command line format: usage: md <key> <flags>*")
        key = _key(tokens[1])
        flags = self._meta_flags(tokens[2:], b"CkOq")
        cas = _number(flags[b"C"], "C (cas)", 0, MAX_U64) if b"C" in flags else None
        outcome = await self.listener.router.route.delete_item(key, cas)
        if outcome is Outcome.DELETED and b"q" in flags:
            return
        self._send(b"%b%b\r\n" % (_META_CODE[outcome], self._meta_return(flags, key)))

    async def _ma(self, tokens: list[bytes]) -> None:
        if len(tokens) < 2:
            raise _BadRequest("bad command line format: usage: ma <key> <flags>*")
        key = _key(tokens[1])
        flags = self._meta_flags(tokens[2:], b"DMvkOq")
        delta = _number(flags[b"D"], "D (delta)", 0, MAX_U64) if b"D" in flags else 1
        mode = flags.get(b"M", b"I")
        if mode not in (b"I", b"i", b"+", b"D", b"d", b"-"):
            raise _BadRequest("invalid mode for ma M token")
        value = await self.listener.router.route.arith(key, delta, mode in (b"I", b"i", b"+"))
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


class _Oversized(_BadRequest):
    """A declared data block over the value limit: refused, and swallowed to stay in sync."""

    def __init__(self, size: int) -> None:
        super().__init__(f"value of {size} bytes exceeds the {MAX_VALUE_BYTES}-byte limit")
        self.size = size


_HANDLERS = {
    b"get": _Session._retrieve, b"gets": _Session._retrieve, b"gat": _Session._retrieve, b"gats": _Session._retrieve,
    b"set": _Session._storage, b"add": _Session._storage, b"replace": _Session._storage,
    b"append": _Session._storage, b"prepend": _Session._storage, b"cas": _Session._storage,
    b"delete": _Session._delete, b"incr": _Session._arith, b"decr": _Session._arith, b"touch": _Session._touch,
    b"version": _Session._version, b"verbosity": _Session._verbosity, b"flush_all": _Session._flush_all,
    b"quit": _Session._quit,
    b"mn": _Session._mn, b"mg": _Session._mg, b"ms": _Session._ms, b"md": _Session._md, b"ma": _Session._ma,
}
