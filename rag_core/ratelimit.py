"""Per-API-key rate limits: a fixed one-minute window counted in Redis (shared by every replica), or
in-process when Redis is not configured. A hit is one Redis round trip (INCR and EXPIRE pipelined in
one MULTI/EXEC) or a dict update. A Redis outage lets requests through rather than failing them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        redis_url: str = "",
        retry_after_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.per_minute = per_minute
        self.retry_after_s = retry_after_s
        self.clock = clock
        self._counts: dict[tuple[str, int], int] = {}
        self._window = 0
        self._lock = threading.Lock()
        self._redis = None
        self._redis_down_until = 0.0
        if redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No client retries: a hit stays one round trip when Redis fails, and a pipeline that
            # reached Redis before the connection dropped is not counted twice.
            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
            )

    def _increment(self, subject: str, window: int) -> int | None:
        if self._redis is None:
            with self._lock:
                if window > self._window:  # a new minute: the earlier counts no longer matter
                    self._counts = {key: n for key, n in self._counts.items() if key[1] >= window}
                    self._window = window
                self._counts[(subject, window)] = self._counts.get((subject, window), 0) + 1
                return self._counts[(subject, window)]
        # After a failure, do not wait on a dead Redis (up to the socket timeout) in every request.
        if time.monotonic() < self._redis_down_until:
            return None
        key = f"rag:ratelimit:{subject}:{window}"
        try:
            pipeline = self._redis.pipeline()
            pipeline.incr(key)
            pipeline.expire(key, 120)
            count = int(pipeline.execute()[0])
        except Exception as error:  # redis down: do not turn an outage into refused requests
            if not self._redis_down_until:
                log.warning("Redis unavailable for rate limits (%s); letting requests through until it returns", error)
            self._redis_down_until = time.monotonic() + self.retry_after_s
            return None
        if self._redis_down_until:
            log.info("Redis is back; rate limits apply again")
            self._redis_down_until = 0.0
        return count

    def hit(self, subject: str) -> Decision:
        if self.per_minute <= 0:
            return Decision(True, 0, 0)
        now = self.clock()
        window = int(now // 60)
        count = self._increment(subject, window)
        if count is None:
            return Decision(True, self.per_minute, 0)
        retry_after = max(1, int(60 - (now % 60)) + 1)
        return Decision(count <= self.per_minute, max(0, self.per_minute - count), retry_after)
