"""Rate limits over a sliding window: at most `per_minute` hits per subject in any 60-second span.

Every accepted hit is remembered with its time: in a Redis sorted set per subject (shared by every
replica; a hit is one round trip, a Lua script that drops the expired entries, counts and adds the hit
if it fits) or, when Redis is not configured, in process — the same algorithm over a deque. A refused
hit is not remembered, so a client that keeps retrying does not push its own window forward.

Why a log of hits: a fixed per-minute window lets twice the limit through across a minute boundary, and
so, by up to nearly as much, do a sliding-window counter (it assumes the previous minute's hits were
spread evenly) and a token bucket with a burst of `per_minute`. Only the log bounds every span; it costs
`per_minute` timestamps per active subject. A Redis outage lets requests through rather than failing them.

A subject may carry its own limit (`hit(subject, per_minute)`): a tenant's `rate_limit_per_minute` replaces
the deployment's for its keys, with the same window and the same single round trip.

`FailedAttempts` throttles failed API key attempts per client address with the same limiter."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

WINDOW_S = 60.0
# KEYS[1]: the subject's sorted set (score = hit time). ARGV: now, now - window, limit, window in ms, a
# unique member. Times travel as the client's strings: Lua would print numbers with 14 digits only.
# Returns {allowed, hits in the window, time of the oldest of them (a string, as Redis stores it)}.
SLIDING_WINDOW_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  count = count + 1
  allowed = 1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2] or ARGV[1]
return {allowed, count, oldest}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: int  # whole seconds until another hit fits; 0 while the window has room


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        redis_url: str = "",
        retry_after_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        key_prefix: str = "rag:ratelimit",
    ) -> None:
        self.per_minute = per_minute
        self.window_s = WINDOW_S
        self.retry_after_s = retry_after_s  # how long a failed Redis is left alone
        self.clock = clock
        self.key_prefix = key_prefix
        self._hits: dict[str, deque[float]] = {}
        self._swept = clock()
        self._lock = threading.Lock()
        self._redis = None
        self._redis_down_until = 0.0
        if redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No client retries: a hit stays one round trip when Redis fails, and a script that ran
            # before the connection dropped is not counted twice.
            self._redis = redis.Redis.from_url(
                redis_url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
            )
            self._script = self._redis.register_script(SLIDING_WINDOW_SCRIPT)

    def _hit_in_process(self, subject: str, now: float, limit: int) -> tuple[bool, int, float]:
        horizon = now - self.window_s
        with self._lock:
            if now - self._swept >= self.window_s:  # forget the subjects idle for a whole window
                self._hits = {name: hits for name, hits in self._hits.items() if hits and hits[-1] > horizon}
                self._swept = now
            hits = self._hits.setdefault(subject, deque())
            while hits and hits[0] <= horizon:
                hits.popleft()
            allowed = len(hits) < limit
            if allowed:
                hits.append(now)
            return allowed, len(hits), hits[0]

    def _hit_in_redis(self, subject: str, now: float, limit: int) -> tuple[bool, int, float] | None:
        # After a failure, do not wait on a dead Redis (up to the socket timeout) in every request.
        if time.monotonic() < self._redis_down_until:
            return None
        try:
            allowed, count, oldest = self._script(
                keys=[f"{self.key_prefix}:{subject}"],
                args=[
                    repr(now),
                    repr(now - self.window_s),
                    limit,
                    math.ceil(self.window_s * 1000),
                    uuid.uuid4().hex,
                ],
            )
        except Exception as error:  # redis down: do not turn an outage into refused requests
            if not self._redis_down_until:
                log.warning("Redis unavailable for rate limits (%s); letting requests through until it returns", error)
            self._redis_down_until = time.monotonic() + self.retry_after_s
            return None
        if self._redis_down_until:
            log.info("Redis is back; rate limits apply again")
            self._redis_down_until = 0.0
        return bool(allowed), int(count), float(oldest)

    def hit(self, subject: str, per_minute: int | None = None) -> Decision:
        """Count a hit of `subject` against `per_minute` (None: the limiter's own); a limit of 0 is no limit."""
        limit = self.per_minute if per_minute is None else per_minute
        if limit <= 0:
            return Decision(True, 0, 0)
        now = self.clock()
        if self._redis is None:
            counted = self._hit_in_process(subject, now, limit)
        else:
            counted = self._hit_in_redis(subject, now, limit)
        if counted is None:
            return Decision(True, limit, 0)
        allowed, count, oldest = counted
        full = count >= limit
        retry_after = max(1, math.ceil(oldest + self.window_s - now)) if full else 0
        return Decision(allowed, max(0, limit - count), retry_after)

    def forget(self, subjects: list[str]) -> int:
        """Drop what is remembered of these subjects (their hits in Redis or in process); how many had any.
        Raises when Redis fails: a purge must not report success over hits it could not reach."""
        with self._lock:
            forgotten = sum(self._hits.pop(subject, None) is not None for subject in subjects)
        if self._redis is not None and subjects:
            forgotten += int(self._redis.delete(*(f"{self.key_prefix}:{subject}" for subject in subjects)))
        return forgotten


class FailedAttempts:
    """Failed API key attempts per client address. Once an address has used up `per_minute` failures
    within 60 s it is refused until the oldest of them is a minute old — before its key is looked up,
    so a client guessing keys costs neither a database lookup nor a Redis round trip. Failures are
    counted by a RateLimiter (in Redis, shared by the replicas); each process remembers the refusal."""

    def __init__(self, limiter: RateLimiter, max_addresses: int = 100_000) -> None:
        self.limiter = limiter
        self.max_addresses = max_addresses
        self._refused_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def refused_for(self, address: str) -> int:
        """Whole seconds this address stays refused; 0 when it may present a key."""
        now = self.limiter.clock()
        with self._lock:
            until = self._refused_until.get(address)
            if until is None:
                return 0
            if until <= now:
                del self._refused_until[address]
                return 0
        return max(1, math.ceil(until - now))

    def failed(self, address: str) -> int:
        """Count a failed attempt; the one that uses up the allowance starts the refusal. Returns the
        seconds to refuse this attempt for: 0 unless it was already over the allowance."""
        decision = self.limiter.hit(f"failed-auth:{address}")
        if not decision.retry_after_s:
            return 0
        now = self.limiter.clock()
        with self._lock:
            if len(self._refused_until) >= self.max_addresses:  # many addresses: keep the live refusals
                self._refused_until = {a: until for a, until in self._refused_until.items() if until > now}
            if len(self._refused_until) < self.max_addresses:
                self._refused_until[address] = now + decision.retry_after_s
        return 0 if decision.allowed else decision.retry_after_s
