"""Per-key limits: requests/s and frames/s (token buckets), realtime sessions open at once.

Pure and clock-injected, so tests drive time. Every method is O(1) and runs on the event
loop. State is kept per key id (all of a key's tokens share it) and only for keys that
have a limit; the rate is read from the caller's :class:`~framewire.gateway.platform.auth.Principal` on each
call, so a changed limit applies at once. A bucket holds one second of its rate (at least
one token): a key may burst that much, then gets its rate.

Requests/s go through a :class:`RateStore`: :class:`LocalRates` (this process's buckets)
or :class:`framewire.gateway.stores.redis_limits.RedisRates` (one bucket per key shared by
every edge, taken from in one atomic script, so two edges cannot each grant the full
rate). Open sessions of a key with a ``max_sessions`` limit are counted in a
:class:`SessionStore` too (:class:`framewire.gateway.stores.redis_limits.RedisSessions`
holds one entry per open session, renewed while it lasts), when the session opens and
closes. Frames/s are counted by each edge alone: the realtime frame path never waits on
another server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from framewire.gateway.platform.auth import Principal

#: Buckets kept per kind before idle ones are forgotten (a full bucket carries no state).
MAX_BUCKETS = 100_000


@dataclass(slots=True)
class TokenBucket:
    """``rate_per_s`` tokens a second, holding at most ``max(1, rate_per_s)``."""

    tokens: float
    updated_s: float
    rate_per_s: float

    def full_after_s(self) -> float:
        return max(1.0, self.rate_per_s) / self.rate_per_s

    def take(self, rate_per_s: float, now_s: float) -> float | None:
        """Take one token; returns None, or the seconds until one is available."""
        self.rate_per_s = rate_per_s
        capacity = max(1.0, rate_per_s)
        self.tokens = min(capacity, self.tokens + (now_s - self.updated_s) * rate_per_s)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return (1.0 - self.tokens) / rate_per_s


class RateLimiter:
    """Token buckets by key id for one kind of event."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key_id: str, rate_per_s: float | None) -> float | None:
        """None when allowed (or unlimited), else seconds to wait before retrying."""
        if rate_per_s is None:
            return None
        now = self.clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[key_id] = TokenBucket(max(1.0, rate_per_s), now, rate_per_s)
        return bucket.take(rate_per_s, now)

    def _forget_full(self, now: float) -> None:
        # A bucket idle long enough to be full again is the same as no bucket.
        for key_id in [k for k, b in self._buckets.items() if now - b.updated_s >= b.full_after_s()]:
            del self._buckets[key_id]

    def __len__(self) -> int:
        return len(self._buckets)


class RateStore(Protocol):
    """Where the requests/s buckets live."""

    async def take(self, key_id: str, rate_per_s: float) -> float | None:
        """Take one token from the key's bucket; None, or the seconds until one is available."""


class LocalRates:
    """:class:`RateStore` in this process (:class:`RateLimiter`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = RateLimiter(clock)

    async def take(self, key_id: str, rate_per_s: float) -> float | None:
        return self.buckets.take(key_id, rate_per_s)


class SessionStore(Protocol):
    """Where the open sessions of keys with a limit are counted, across edges."""

    async def acquire(self, key_id: str, limit: int) -> str | None:
        """Count one more open session of the key; a token to release it with, or None at the limit."""

    async def release(self, key_id: str, token: str) -> None: ...


@dataclass(frozen=True)
class SessionSlot:
    """An admitted session: what :meth:`Limiter.leave_session` gives back."""

    principal: Principal
    token: str | None = None  # its entry in the shared store (None: counted by this edge only)


def retry_after_header(wait_s: float) -> str:
    """``Retry-After`` is whole seconds; round up so a client that obeys it succeeds."""
    return str(max(1, math.ceil(wait_s)))


class Limiter:
    """All of a server's per-key limits; requests/s in ``requests`` (default: this process's buckets)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        requests: RateStore | None = None,
        sessions: SessionStore | None = None,
    ) -> None:
        self.requests = requests if requests is not None else LocalRates(clock)
        self.frames = RateLimiter(clock)
        self.shared_sessions = sessions
        self._sessions: dict[str, int] = {}

    async def request(self, principal: Principal) -> float | None:
        """Charge one request; None, or seconds until the key may send another."""
        rate = principal.limits.requests_per_s
        return None if rate is None else await self.requests.take(principal.key_id, rate)

    def frame(self, principal: Principal) -> float | None:
        """Charge one realtime frame; None, or seconds until the key may send another."""
        return self.frames.take(principal.key_id, principal.limits.frames_per_s)

    def open_session(self, principal: Principal) -> bool:
        """Count a new session of the key; False (and nothing counted) when it has its maximum."""
        limit = principal.limits.max_sessions
        count = self._sessions.get(principal.key_id, 0)
        if limit is not None and count >= limit:
            return False
        self._sessions[principal.key_id] = count + 1
        return True

    def close_session(self, principal: Principal) -> None:
        count = self._sessions.get(principal.key_id, 0) - 1
        if count > 0:
            self._sessions[principal.key_id] = count
        else:
            self._sessions.pop(principal.key_id, None)

    def sessions_of(self, key_id: str) -> int:
        return self._sessions.get(key_id, 0)

    async def enter_session(self, principal: Principal) -> SessionSlot | None:
        """Admit a new session of the key: counted here and, for a key with a limit, in the
        shared store (so the limit holds across edges); None when it has its maximum."""
        if not self.open_session(principal):
            return None
        limit = principal.limits.max_sessions
        if self.shared_sessions is None or limit is None:
            return SessionSlot(principal)
        token = await self.shared_sessions.acquire(principal.key_id, limit)
        if token is None:
            self.close_session(principal)
            return None
        return SessionSlot(principal, token)

    async def leave_session(self, slot: SessionSlot) -> None:
        self.close_session(slot.principal)
        if slot.token is not None and self.shared_sessions is not None:
            await self.shared_sessions.release(slot.principal.key_id, slot.token)
