"""Per-key limits: token buckets driven by a fake clock, session counting, the shared requests/s store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from framewire.gateway.platform.auth import Limits, Principal
from framewire.gateway.platform.limits import Limiter, LocalRates, RateLimiter, RateStore, retry_after_header
from framewire.gateway.stores.redis_limits import RedisRates, RedisSessions
from framewire.state.connection import StateConnection, StateOptions
from tests.conftest import free_port
from tests.gateway.stores import KINDS, state


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


# -- the requests/s store, embedded and shared by edges on Redis (real time: rates are fast) -------


@pytest.fixture(params=KINDS)
async def rates(request: pytest.FixtureRequest) -> AsyncIterator[RateStore]:
    if request.param == "sqlite":  # the embedded kind keeps buckets in memory
        yield LocalRates()
    else:
        async with state(request.getfixturevalue("redis_url")) as conn:
            yield RedisRates(conn)


async def test_a_rate_store_allows_a_second_of_burst_then_the_rate(rates: RateStore) -> None:
    took = [await rates.take("k", 10.0) for _ in range(10)]
    assert took == [None] * 10
    wait_s = await rates.take("k", 10.0)
    assert wait_s is not None and 0.0 < wait_s <= 0.1
    await asyncio.sleep(wait_s + 0.02)
    assert await rates.take("k", 10.0) is None
    assert await rates.take("other", 10.0) is None  # keys have their own buckets
    assert await rates.take("slow", 0.5) is None
    slow_wait = await rates.take("slow", 0.5)
    assert slow_wait is not None and 1.8 < slow_wait <= 2.0


async def test_a_limiter_charges_only_keys_with_a_rate(rates: RateStore) -> None:
    limiter = Limiter(requests=rates)
    free, limited = Principal("free"), Principal("k", limits=Limits(requests_per_s=1.0))
    assert all([await limiter.request(free) is None for _ in range(20)])
    assert await limiter.request(limited) is None and await limiter.request(limited) is not None


async def test_redis_two_edges_share_one_bucket(redis_url: str) -> None:
    async with state(redis_url) as one, state(redis_url) as two:
        edges = [RedisRates(one), RedisRates(two)]
        granted = [await edges[i % 2].take("k", 5.0) is None for i in range(10)]
        assert granted.count(True) == 5  # one second of burst in all, not per edge


async def test_redis_limits_fall_back_to_the_edge_when_redis_is_gone() -> None:
    conn = StateConnection(StateOptions(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5))  # nothing listens
    try:
        rates = RedisRates(conn)
        granted = [await rates.take("k", 2.0) is None for _ in range(4)]
        assert granted == [True, True, False, False]  # this edge's own bucket: two tokens, then the rate
    finally:
        await conn.close()


# -- open sessions of a key with a limit, across edges ----------------------------------------------


async def test_redis_a_session_limit_holds_across_edges_and_a_dead_edges_places_lapse(redis_url: str) -> None:
    async with state(redis_url) as one, state(redis_url) as two:
        key = Principal("k", limits=Limits(max_sessions=2))
        a = Limiter(sessions=RedisSessions(one, lease_s=0.6))
        b = Limiter(sessions=RedisSessions(two, lease_s=0.6))
        first, second = await a.enter_session(key), await b.enter_session(key)
        assert first is not None and second is not None
        assert await b.enter_session(key) is None and await a.enter_session(key) is None  # 2 in all, not per edge
        assert await a.enter_session(Principal("free")) is not None  # no limit: nothing shared
        await b.leave_session(second)
        third = await a.enter_session(key)
        assert third is not None and a.sessions_of("k") == 2
        await asyncio.sleep(0.4)
        assert a.shared_sessions is not None
        await a.shared_sessions.renew()  # edge a keeps its sessions' places
        await asyncio.sleep(0.4)
        assert await b.enter_session(key) is None
        await asyncio.sleep(0.7)  # edge a stops renewing (it died): its places lapse
        assert await b.enter_session(key) is not None


async def test_redis_sessions_are_counted_per_edge_while_redis_is_gone() -> None:
    conn = StateConnection(StateOptions(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5))  # nothing listens
    try:
        limiter = Limiter(sessions=RedisSessions(conn))
        key = Principal("k", limits=Limits(max_sessions=1))
        slot = await limiter.enter_session(key)
        assert slot is not None and await limiter.enter_session(key) is None  # this edge's own count
        await limiter.leave_session(slot)
        assert limiter.sessions_of("k") == 0
    finally:
        await conn.close()
