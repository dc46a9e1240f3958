"""The in-process rate limit on an injected clock: a sliding window, at most N hits in any 60-second span,
and the failed-key throttle built on it."""

import random

from rag_core.ratelimit import FailedAttempts, RateLimiter


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def most_in_any_minute(times: list[float]) -> int:
    """The most of `times` inside one 60-second span [t, t + 60)."""
    ordered = sorted(times)
    return max((sum(1 for t in ordered if start <= t < start + 60) for start in ordered), default=0)


def test_a_burst_across_a_minute_boundary_is_not_let_through_twice():
    # What a fixed window allowed: 30 requests late in one clock minute, 30 more early in the next.
    clock = Clock(60.0 * 1_000 + 52)
    limiter = RateLimiter(per_minute=30, clock=clock)
    allowed = []
    for _ in range(60):
        if limiter.hit("key").allowed:
            allowed.append(clock.now)
        clock.now += 7.6 / 60
    assert len(allowed) == 30 and most_in_any_minute(allowed) == 30


def test_at_most_n_pass_in_any_60_second_span_of_random_traffic():
    rng = random.Random(7)
    clock = Clock(1_000_000.0)
    limiter = RateLimiter(per_minute=30, clock=clock)
    allowed = []
    for _ in range(3_000):  # bursts and lulls over about ten minutes
        clock.now += rng.choice([0.0, 0.01, 0.05, 0.2, 1.0, 3.0])
        if limiter.hit("key").allowed:
            allowed.append(clock.now)
    assert most_in_any_minute(allowed) == 30
    assert len(allowed) >= 30 * 8  # the limit is a ceiling, not a trickle


def test_retry_after_says_when_the_oldest_hit_leaves_the_window_and_subjects_are_apart():
    clock = Clock(5_000.0)
    limiter = RateLimiter(per_minute=2, clock=clock)
    first = limiter.hit("a")
    assert first.allowed and first.remaining == 1 and first.retry_after_s == 0
    clock.now += 10
    second = limiter.hit("a")
    assert second.allowed and second.remaining == 0 and second.retry_after_s == 50
    denied = limiter.hit("a")
    assert not denied.allowed and denied.retry_after_s == 50
    assert limiter.hit("b").allowed  # another subject has its own window
    clock.now += 49.9
    assert not limiter.hit("a").allowed  # refused hits did not move the window
    clock.now += 0.1  # the first hit is a minute old: one more fits, not two
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    clock.now += 10  # the second leaves too
    assert limiter.hit("a").allowed


def test_a_limit_of_zero_turns_it_off():
    limiter = RateLimiter(per_minute=0, clock=Clock(0.0))
    assert all(limiter.hit("a").allowed for _ in range(1_000))


def test_an_address_is_refused_after_its_failures_until_the_first_is_a_minute_old():
    clock = Clock(9_000.0)
    attempts = FailedAttempts(RateLimiter(per_minute=3, clock=clock))
    assert attempts.refused_for("10.0.0.1") == 0
    for _ in range(2):
        assert attempts.failed("10.0.0.1") == 0 and attempts.refused_for("10.0.0.1") == 0
        clock.now += 1
    assert attempts.failed("10.0.0.1") == 0  # the third failure is answered, and uses the allowance up
    assert attempts.refused_for("10.0.0.1") == 58 and attempts.refused_for("10.0.0.2") == 0
    clock.now += 57.5
    assert attempts.refused_for("10.0.0.1") == 1
    clock.now += 0.5
    assert attempts.refused_for("10.0.0.1") == 0  # the first failure left the window
    assert attempts.failed("10.0.0.1") == 0 and attempts.refused_for("10.0.0.1") > 0
