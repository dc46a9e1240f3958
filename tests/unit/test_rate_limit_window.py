"""The in-process rate limit on an injected clock: a fixed window per clock minute."""

from rag_core.ratelimit import RateLimiter


def test_the_in_process_window_counts_per_subject_and_resets_each_minute():
    now = [60.0 * 1_000 + 10]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit("b").allowed
    denied = limiter.hit("a")
    assert denied.remaining == 0 and denied.retry_after_s == 51
    now[0] += 49.5  # still the same minute
    assert not limiter.hit("a").allowed
    now[0] += 0.5  # the next minute
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.hit("b").remaining == 1
