"""The cache half's errors, and the limits memcached puts on keys, values and numbers.

Responsible for: one exception per kind of failure, each carrying the reason and the value
(or server) that caused it, and the checks that keep bad input away from memcached.
Must never: let a caller tell a refused input (``CacheInputError``, a ``ValueError``)
apart from a server failure only by parsing a message — the types say which is which.
"""

from __future__ import annotations

import re

#: memcached's key limit (bytes); keys may not contain spaces or control characters.
MAX_KEY_BYTES = 250
#: memcached's item limit is 1 MiB *including* the key and a ~60-byte item header, so a
#: value of exactly 1 MiB is refused by memcached itself ("object too large"). We refuse
#: it first: 512 bytes of headroom cover the largest key plus the header (measured on
#: memcached 1.6.18: 1 MiB − 330 B stores with a 250-byte key, 1 MiB − 300 B does not).
MAX_ITEM_BYTES = 1024 * 1024 - 512
MAX_FLAGS = 2**32 - 1
MAX_U64 = 2**64 - 1
#: memcached parses exptime as a signed 32-bit number.
MIN_EXPTIME, MAX_EXPTIME = -(2**31), 2**31 - 1

_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")


class CacheError(Exception):
    """Base of every error raised by ``proxy.cache``."""


class CacheInputError(CacheError, ValueError):
    """The request itself is not acceptable; nothing was sent to memcached."""


class InvalidKeyError(CacheInputError):
    """A key that is empty, longer than 250 bytes, not bytes, or has a space/control byte."""


class ValueTooLargeError(CacheInputError):
    """A value over ``MAX_ITEM_BYTES``."""


class InvalidNumberError(CacheInputError):
    """flags, exptime, a CAS token or an incr/decr delta out of memcached's range."""


class MemcacheRejected(CacheInputError):
    """memcached answered ``CLIENT_ERROR`` (e.g. incr of a non-numeric value): the request
    was well-formed but the item does not allow it. Nothing changed on the server."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"memcached {server} refused the request: {reason}")
        self.server = server
        self.reason = reason


class MemcacheServerError(CacheError):
    """A server-side failure; ``server`` names the memcached (``n1 127.0.0.1:21211``).

    The outcome of a write that failed this way is unknown: it may have been applied.
    """

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"memcached {server}: {reason}")
        self.server = server
        self.reason = reason


class MemcacheUnavailable(MemcacheServerError):
    """Could not connect, or the connection was closed under a request."""


class MemcacheTimeout(MemcacheServerError):
    """No complete reply within the client's timeout."""


class MemcacheProtocolError(MemcacheServerError):
    """A reply we could not parse, or ``SERVER_ERROR``/``ERROR`` from memcached."""


class MemcacheServerReply(MemcacheProtocolError):
    """memcached answered ``SERVER_ERROR …`` (out of memory, object too large…): its own
    line is relayed to the app as it came, so the app's client raises what memcached's would."""

    def __init__(self, server: str, line: str) -> None:
        super().__init__(server, f"replied {line!r}")
        self.line = line


class CacheFencedError(CacheError):
    """Writes are refused: this proxy instance lost its ZooKeeper session (fencing)."""


class CacheOutcomeUnknown(CacheError):
    """A write ran, but the proxy was fenced before it could answer: it may have happened."""


class SwitchError(CacheError):
    """A mode switch could not complete safely; the router stays in its old mode."""


def check_key(key: bytes) -> bytes:
    if type(key) is not bytes:
        raise InvalidKeyError(f"a cache key must be bytes, not {type(key).__name__}: {key!r:.80}")
    n = len(key)
    if n == 0:
        raise InvalidKeyError("a cache key must not be empty")
    if n > MAX_KEY_BYTES:
        raise InvalidKeyError(f"cache key of {n} bytes exceeds memcached's {MAX_KEY_BYTES}-byte limit: {key[:40]!r}…")
    if _BAD_KEY_BYTE.search(key):
        raise InvalidKeyError(f"cache key {key!r:.300} contains a space or control character, which memcached forbids")
    return key


def check_value(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise CacheInputError(f"a cache value must be bytes, not {type(value).__name__}")
    if len(value) > MAX_ITEM_BYTES:
        raise ValueTooLargeError(f"cache value of {len(value)} bytes exceeds the {MAX_ITEM_BYTES}-byte limit "
                                 "(memcached's 1 MiB item size minus room for the key and item header)")
    return value


def check_range(name: str, number: int, low: int, high: int) -> int:
    if type(number) is not int or not low <= number <= high:
        raise InvalidNumberError(f"{name} {number!r} is outside memcached's range {low}..{high}")
    return number
