"""Per-key requests/s shared by every edge: one token bucket per key in Redis, one script per request.

The script refills the bucket from the Redis server's clock (``TIME``), so edges with
skewed clocks share one notion of time, and takes the token in the same step, so two
edges can never both take the last one. A bucket holds one second of its rate (at least
one token), exactly like :class:`~framewire.gateway.platform.limits.RateLimiter`, and
expires once it would be full again (an idle key costs no memory).

When Redis cannot be reached, requests are limited by this edge's own buckets
(:class:`~framewire.gateway.platform.limits.RateLimiter`): the limit then holds per edge,
not across edges, until Redis answers again (logged once per outage).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from framewire.gateway.platform.limits import RateLimiter
from framewire.state.connection import StateConnection, StateUnavailable

log = logging.getLogger("framewire.limits")

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = math.max(1, rate)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or capacity
local at = tonumber(b[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.9f', tokens), 'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisRates:
    """:class:`~framewire.gateway.platform.limits.RateStore` in Redis; see the module docstring."""

    def __init__(self, conn: StateConnection, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self._take = conn.script(_TAKE)
        self.fallback = RateLimiter(clock)
        self._falling_back = False

    async def take(self, key_id: str, rate_per_s: float) -> float | None:
        try:
            with self.conn.guard("take a request token"):
                wait_s = float(await self._take(keys=[self.conn.key("rate", key_id)], args=[repr(rate_per_s)]))
        except StateUnavailable as exc:
            if not self._falling_back:
                log.error("request rates are limited per edge until Redis answers again: %s", exc)
                self._falling_back = True
            return self.fallback.take(key_id, rate_per_s)
        if self._falling_back:
            log.warning("request rates are shared by every edge again")
            self._falling_back = False
        return None if wait_s <= 0 else wait_s
