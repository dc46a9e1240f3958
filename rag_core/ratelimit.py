"""Per-API-key rate limits: a fixed one-minute window counted in Redis (shared by every replica), or
in-process when Redis is not configured. A Redis outage lets requests through rather than failing them."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int


class RateLimiter:
    def __init__(self, per_minute: int, redis_url: str = "") -> None:
        self.per_minute = per_minute
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._redis = None
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def _increment(self, subject: str, window: int) -> int | None:
        if self._redis is None:
            with self._lock:
                self._counts = {key: n for key, n in self._counts.items() if key[1] >= window}
                self._counts[(subject, window)] = self._counts.get((subject, window), 0) + 1
                return self._counts[(subject, window)]
        key = f"rag:ratelimit:{subject}:{window}"
        try:
            pipeline = self._redis.pipeline()
            pipeline.incr(key)
            pipeline.expire(key, 120)
            return int(pipeline.execute()[0])
        except Exception:  # redis down: do not turn an outage into refused requests
            return None

    def hit(self, subject: str) -> Decision:
        if self.per_minute <= 0:
            return Decision(True, 0, 0)
        now = time.time()
        window = int(now // 60)
        count = self._increment(subject, window)
        if count is None:
            return Decision(True, self.per_minute, 0)
        retry_after = max(1, int(60 - (now % 60)) + 1)
        return Decision(count <= self.per_minute, max(0, self.per_minute - count), retry_after)
