"""Per-key limits shared by every edge: requests/s (token buckets) and open realtime sessions.

Requests/s: one token bucket per key in Redis, one script per request.

The script refills the bucket from the Redis server's clock (``TIME``), so edges with
skewed clocks share one notion of time, and takes the token in the same step, so two
edges can never both take the last one. A bucket holds one second of its rate (at least
one token), exactly like :class:`~framewire.gateway.platform.limits.RateLimiter`, and
expires once it would be full again (an idle key costs no memory).

When Redis cannot be reached, requests are limited by this edge's own buckets
(:class:`~framewire.gateway.platform.limits.RateLimiter`): the limit then holds per edge,
not across edges, until Redis answers again (logged once per outage).

Open sessions (:class:`RedisSessions`), only for keys with ``max_sessions``: a sorted set
per key, one member per open session scored by when its entry lapses. Opening one is a
script that drops lapsed entries, compares the count with the limit and adds the new
entry; closing removes it; each edge renews its sessions' entries every third of
``lease_s``. So an edge that dies holds its sessions' places for at most ``lease_s``.
Without Redis, each edge's own count decides (logged once per outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
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


_ENTER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[1]))
return 1
"""

#: How long a session's entry lasts without renewal: an edge that dies frees its sessions' places after this.
SESSION_LEASE_S = 30.0


class RedisSessions:
    """:class:`~framewire.gateway.platform.limits.SessionStore` in Redis; see the module docstring."""

    def __init__(self, conn: StateConnection, *, lease_s: float = SESSION_LEASE_S) -> None:
        self.conn = conn
        self.lease_s = lease_s
        self._enter = conn.script(_ENTER)
        self._renew = conn.script(_RENEW)
        self._held: dict[str, set[str]] = {}  # key id -> tokens of this edge's open sessions
        self._task: asyncio.Task[None] | None = None
        self._falling_back = False

    def _key(self, key_id: str) -> str:
        return self.conn.key("sessions", key_id)

    async def acquire(self, key_id: str, limit: int) -> str | None:
        token = uuid.uuid4().hex
        try:
            with self.conn.guard("count a realtime session"):
                args = [limit, int(self.lease_s * 1000), token]
                if not await self._enter(keys=[self._key(key_id)], args=args):
                    return None
        except StateUnavailable as exc:
            if not self._falling_back:
                log.error("realtime sessions are counted per edge until Redis answers again: %s", exc)
                self._falling_back = True
            return None if limit <= 0 else ""  # admitted on this edge's count alone
        self._falling_back = False
        self._held.setdefault(key_id, set()).add(token)
        return token

    async def release(self, key_id: str, token: str) -> None:
        tokens = self._held.get(key_id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._held[key_id]
        if not token:
            return
        with contextlib.suppress(StateUnavailable), self.conn.guard("release a realtime session"):
            await self.conn.client.zrem(self._key(key_id), token)  # else its entry lapses by itself

    def start(self) -> None:
        self._task = asyncio.create_task(self._renewals(), name="session-renewals")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def renew(self) -> None:
        """Renew the entries of this edge's open sessions (one script per key, one round trip)."""
        held = [(key_id, list(tokens)) for key_id, tokens in self._held.items() if tokens]
        if not held:
            return
        with self.conn.guard("renew realtime sessions"):
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for key_id, tokens in held:
                    args = [int(self.lease_s * 1000), *tokens]
                    await self._renew(keys=[self._key(key_id)], args=args, client=pipe)
                await pipe.execute()

    async def _renewals(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.renew()
            except StateUnavailable:
                pass  # the entries may lapse; the sessions go on
            except Exception:
                log.exception("could not renew the realtime sessions' entries")
