"""Per-key limits: token buckets driven by a fake clock, session counting."""

from __future__ import annotations

import pytest

from framewire.gateway.platform.auth import Limits, Principal
from framewire.gateway.platform.limits import Limiter, RateLimiter, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_one_second_of_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert [limiter.take("k", 5.0) for _ in range(5)] == [None] * 5
    wait = limiter.take("k", 5.0)
    assert wait == pytest.approx(0.2)
    clock.now += 0.2
    assert limiter.take("k", 5.0) is None
    assert limiter.take("k", 5.0) == pytest.approx(0.2)


def test_slow_rates_still_allow_one_call_and_say_how_long_to_wait() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.take("k", 0.5) is None
    assert limiter.take("k", 0.5) == pytest.approx(2.0)
    assert retry_after_header(0.01) == "1" and retry_after_header(2.0) == "2" and retry_after_header(2.1) == "3"


def test_keys_have_separate_buckets_and_unlimited_keys_no_state() -> None:
    limiter = RateLimiter(Clock())
    assert limiter.take("a", 1.0) is None
    assert limiter.take("a", 1.0) is not None
    assert limiter.take("b", 1.0) is None
    assert limiter.take("c", None) is None
    assert len(limiter) == 2


def test_a_changed_rate_applies_at_once() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(2):
        assert limiter.take("k", 2.0) is None
    assert limiter.take("k", 2.0) is not None
    clock.now += 0.1
    assert limiter.take("k", 100.0) is None  # 0.1 s at the new rate refills 10 tokens


def test_sessions_are_counted_per_key_up_to_the_limit() -> None:
    limiter = Limiter(Clock())
    key = Principal("k", limits=Limits(max_sessions=2))
    assert limiter.open_session(key) and limiter.open_session(key)
    assert not limiter.open_session(key)
    assert limiter.sessions_of("k") == 2
    limiter.close_session(key)
    assert limiter.open_session(key)
    free = Principal("free")
    assert all(limiter.open_session(free) for _ in range(50))


def test_zero_sessions_means_no_realtime_at_all() -> None:
    limiter = Limiter(Clock())
    assert not limiter.open_session(Principal("k", limits=Limits(max_sessions=0)))
    assert limiter.sessions_of("k") == 0
