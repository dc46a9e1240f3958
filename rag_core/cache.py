"""Query caches: Redis when `REDIS_URL` is set, an in-process LRU otherwise.

Keys carry the index version, so a reindex invalidates every cached result at once, and the tenant whose
request filled them first (`tenant_prefix`), so deleting a tenant deletes its entries by prefix. A Redis that dies
mid-flight never fails a request: calls fall through uncached, and the client retries the connection
after a short back-off, so caching resumes by itself when Redis returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger(__name__)
SCAN_BATCH = 500  # keys per SCAN step and per UNLINK


def tenant_prefix(tenant: str) -> str:
    """What every cache key of `tenant` starts with. Tenant names (rag_core.tenants) hold no glob characters."""
    return f"rag:tenant={tenant}:"


def cache_key(kind: str, index_version: str, *parts: object, tenant: str | None = None) -> str:
    """The key of an entry; with `tenant`, one `delete_prefix(tenant_prefix(tenant))` finds it."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]
    scope = tenant_prefix(tenant) if tenant is not None else "rag:"
    return f"{scope}{kind}:{index_version}:{digest}"


class Cache(Protocol):
    backend: str

    def get(self, key: str) -> Any | None: ...

    def set(self, key: str, value: Any, ttl_s: int) -> None: ...

    def healthy(self) -> bool: ...

    def delete_prefix(self, prefix: str) -> int: ...


class LRUCache:
    backend = "memory"

    def __init__(self, max_items: int = 10_000) -> None:
        self._items: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_items = max_items

    def get(self, key: str) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or item[0] < time.monotonic():
                self._items.pop(key, None)
                return None
            self._items.move_to_end(key)
            return item[1]

    def set(self, key: str, value: Any, ttl_s: int) -> None:
        with self._lock:
            self._items[key] = (time.monotonic() + ttl_s, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def healthy(self) -> bool:
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every entry whose key starts with `prefix`; how many there were."""
        with self._lock:
            doomed = [key for key in self._items if key.startswith(prefix)]
            for key in doomed:
                del self._items[key]
        return len(doomed)


class RedisCache:
    """JSON values in Redis; any Redis error is logged once per outage and treated as a miss."""

    backend = "redis"

    def __init__(self, url: str, retry_after_s: float = 2.0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.retry_after_s = retry_after_s
        self._down_until = 0.0

    def _call(self, operation, *args):
        if time.monotonic() < self._down_until:
            return None
        try:
            result = operation(*args)
        except Exception as error:  # redis raises ConnectionError, TimeoutError, ResponseError…
            if self._down_until == 0.0:
                log.warning("Redis unavailable (%s); serving uncached until it returns", error)
            self._down_until = time.monotonic() + self.retry_after_s
            return None
        if self._down_until:
            log.info("Redis is back; caching resumed")
        self._down_until = 0.0
        return result

    def get(self, key: str) -> Any | None:
        raw = self._call(self.client.get, key)
        return json.loads(raw) if raw else None

    def set(self, key: str, value: Any, ttl_s: int) -> None:
        self._call(self.client.set, key, json.dumps(value), ttl_s)

    def healthy(self) -> bool:
        return bool(self._call(self.client.ping))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with `prefix`, found with SCAN (KEYS would block Redis on a large
        keyspace); how many were deleted. Unlike a lookup this raises when Redis fails: a purge must not
        report success over entries it could not reach."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=SCAN_BATCH):
            batch.append(key)
            if len(batch) >= SCAN_BATCH:
                deleted += self.client.unlink(*batch)
                batch = []
        if batch:
            deleted += self.client.unlink(*batch)
        return deleted


def make_cache(redis_url: str) -> Cache:
    return RedisCache(redis_url) if redis_url else LRUCache()
