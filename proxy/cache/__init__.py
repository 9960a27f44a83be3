"""The cache half of the proxy: memcached routes for the three modes, COW/COR warming of
N2, the safe mode switch, and a memcached-protocol listener for the apps.

Import from here: ``CacheRouter``, ``CacheListener``, the route classes and the errors.
"""

from proxy.cache.client import Item, MemcacheClient, Outcome, StoreMode, StoreReply
from proxy.cache.errors import (
    MAX_ITEM_BYTES, MAX_KEY_BYTES, CacheError, CacheFencedError, CacheInputError, CacheOutcomeUnknown,
    InvalidKeyError, InvalidNumberError, MemcacheRejected, MemcacheServerError, MemcacheTimeout, MemcacheUnavailable,
    SwitchError, ValueTooLargeError,
)
from proxy.cache.copies import CopyQueue
from proxy.cache.listener import CacheListener
from proxy.cache.pool import Ketama, MemcachePool, ServerSpec, parse_servers
from proxy.cache.router import MODES, CacheRouter, ModeRoute
from proxy.cache.routes import CacheRoute, CopyWritesRoute, MemcachedRoute, WarmUpRoute

__all__ = [
    "MAX_ITEM_BYTES", "MAX_KEY_BYTES", "MODES", "CacheError", "CacheFencedError", "CacheInputError", "CacheListener",
    "CacheOutcomeUnknown", "CacheRoute", "CacheRouter", "CopyQueue", "CopyWritesRoute", "InvalidKeyError",
    "InvalidNumberError", "Item", "Ketama", "MemcacheClient", "MemcachePool", "MemcacheRejected", "MemcacheServerError",
    "MemcacheTimeout", "MemcacheUnavailable", "MemcachedRoute", "ModeRoute", "Outcome", "ServerSpec", "StoreMode",
    "StoreReply", "SwitchError", "parse_servers", "ValueTooLargeError", "WarmUpRoute",
]
