"""One process's connection to the state plane's Redis: checks, health, notices.

:class:`StateConnection` wraps one ``redis.asyncio`` client (a connection pool) and adds:

- :meth:`~StateConnection.connect`: the start-up check. It fails with a message naming
  the URL when the server cannot be reached or is too old, and logs what a restart of
  that server could lose given its persistence settings (see :func:`durability_warning`).
- A health watch: a PING every ``health_interval_s``; :attr:`~StateConnection.available`
  turns False at the first failure (or any store call that fails to reach the server,
  through :meth:`~StateConnection.guard`) and True again at the next answer. Readiness
  reads it; stores raise :class:`StateUnavailable`, which the HTTP surfaces answer with
  503 and ``Retry-After``.
- Notices: one pub/sub connection for every channel the process listens to (worker
  changes, key changes, job events). Pub/sub delivers at most once and nothing while
  disconnected, so after every gap the ``on_resync`` callbacks run: listeners re-read
  what they cache instead of trusting that they heard every notice.

Calls go to the server with a short socket timeout (``timeout_s``) and one retry, so a
lost server costs a caller seconds, not minutes; every script the stores run is safe
to run twice for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("framewire.state")

SCHEMES = ("redis", "rediss", "unix")
#: XAUTOCLAIM (the reclaim of a dead edge's jobs) arrived in Redis 6.2.
MIN_VERSION = (6, 2)
#: Longest wait between two tries to subscribe again after the notice connection broke.
MAX_RESUBSCRIBE_S = 2.0
#: Connections to Redis one process opens at most; calls beyond wait for a free one.
MAX_CONNECTIONS = 64
#: Longest a call waits for a free connection before it fails (503: the edge is overloaded).
POOL_WAIT_S = 10.0
#: Errors that mean "the server cannot answer now" (not "the command was wrong").
UNREACHABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # includes BusyLoadingError: the server is loading its AOF after a restart
    RedisTimeoutError,
    ReadOnlyError,  # a replica that has not been promoted yet (during a failover)
    OSError,
)
_UNREACHABLE_OR_LATE: tuple[type[BaseException], ...] = (*UNREACHABLE, TimeoutError)
_ANY_FAILURE: tuple[type[BaseException], ...] = (*UNREACHABLE, RedisError)


class StateError(Exception):
    """The state plane cannot be used as configured; ``str()`` names the URL and the fix."""


class StateUnavailable(StateError):
    """The state plane's server cannot be reached now; the caller should retry shortly."""


def redacted(url: str) -> str:
    """``url`` without its password (for logs and error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> None:
    """ValueError, naming the fix, for a URL redis-py cannot use."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"--redis-url {redacted(url)!r}: expected redis://[:password@]host:port[/db], rediss://... (TLS)"
            " or unix:///path/to/redis.sock"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"--redis-url {redacted(url)!r}: no host; e.g. redis://redis:6379/0")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ValueError(f"--redis-url {redacted(url)!r}: the port is not a number") from None
    if parts.path.strip("/") and parts.scheme != "unix" and not parts.path.strip("/").isdigit():
        raise ValueError(f"--redis-url {redacted(url)!r}: the path must be a database number, e.g. /0")


def durability_warning(aof_enabled: bool, appendfsync: str | None) -> str | None:
    """What a restart of a server with these settings can lose, or None when it loses nothing acknowledged.

    ``appendfsync`` None: unknown (``CONFIG`` is disabled on many managed servers).
    """
    if not aof_enabled:
        return (
            "it keeps no append-only file, so a restart loses every job, key and usage count written since its"
            " last snapshot; run it with --appendonly yes --appendfsync always (deploy/redis.conf)"
        )
    if appendfsync is None:
        return None
    if appendfsync != "always":
        return (
            f"its append-only file is synced to disk '{appendfsync}', so a crash of its machine (not of the Redis"
            " process alone) can lose about the last second of acknowledged submits; use --appendfsync always"
        )
    return None


@dataclass(frozen=True)
class StateOptions:
    """How to reach the state plane. ``prefix`` starts every key and channel name."""

    url: str
    timeout_s: float = 2.0
    health_interval_s: float = 0.5
    prefix: str = "framewire:"

    def __post_init__(self) -> None:
        check_url(self.url)
        if self.timeout_s <= 0 or self.health_interval_s <= 0:
            raise ValueError("the state plane's timeout and health interval must be > 0")


class StateConnection:
    """See the module docstring. Create it anywhere; use it on one event loop."""

    def __init__(self, options: StateOptions) -> None:
        self.options = options
        self.url = redacted(options.url)
        # A bounded pool that makes a call wait for a free connection (the default one fails it
        # at once when a burst of requests holds every connection).
        pool = aioredis.BlockingConnectionPool.from_url(
            options.url,
            max_connections=MAX_CONNECTIONS,
            timeout=POOL_WAIT_S,
            decode_responses=True,
            socket_timeout=options.timeout_s,
            socket_connect_timeout=options.timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), 1),
            health_check_interval=30,
            client_name="framewire",
        )
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)
        self.available = False
        self.version: tuple[int, ...] = ()
        self._channels: dict[str, list[Callable[[str], None]]] = {}
        self._resync: list[Callable[[], None]] = []
        self._health_listeners: list[Callable[[bool], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._started = False
        self._down_logged = False

    # -- names ---------------------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key or channel name under the prefix: ``key("job", id)`` → ``framewire:job:<id>``."""
        return self.options.prefix + ":".join(parts)

    # -- start-up --------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Reach the server and check it; StateError naming the URL and the fix when it fails."""
        try:
            async with asyncio.timeout(self.options.timeout_s * 2):
                await self.client.ping()
                server = await self.client.info("server")
                persistence = await self.client.info("persistence")
        except _UNREACHABLE_OR_LATE as exc:
            raise StateError(
                f"cannot reach Redis at {self.url} (--redis-url / FRAMEWIRE_REDIS_URL): {_describe(exc)}."
                " Start it, or fix the URL"
            ) from None
        except RedisError as exc:
            raise StateError(f"Redis at {self.url} refused the start-up checks: {exc}") from None
        version = tuple(int(p) for p in str(server.get("redis_version", "0")).split(".")[:3] if p.isdigit())
        self.version = version
        if version < MIN_VERSION:
            raise StateError(
                f"Redis at {self.url} is version {'.'.join(map(str, version))}; FrameWire needs 6.2 or newer"
                " (or Valkey)"
            )
        fsync: str | None = None
        with contextlib.suppress(RedisError):  # CONFIG is often disabled on managed servers
            fsync = (await self.client.config_get("appendfsync")).get("appendfsync")
        warning = durability_warning(str(persistence.get("aof_enabled", "0")) == "1", fsync)
        if warning is not None:
            log.warning("Redis at %s: %s", self.url, warning)
        self.available = True

    def start(self) -> None:
        """Begin the health watch and the notice listener (after :meth:`connect`)."""
        self._started = True
        self._tasks.append(asyncio.create_task(self._watch_health(), name="state-health"))
        self._restart_listener()

    async def close(self) -> None:
        self._started = False
        tasks = [*self._tasks, *([self._listener] if self._listener is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._listener = None
        await self.client.aclose()

    # -- calls --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn "the server cannot answer" into :class:`StateUnavailable` (and mark it down)."""
        try:
            yield
        except UNREACHABLE as exc:
            if isinstance(exc, RedisConnectionError) and "No connection available" in str(exc):
                raise StateUnavailable(f"{what}: every connection to Redis at {self.url} is busy") from exc
            self._set_available(False, exc)
            raise StateUnavailable(f"{what}: Redis at {self.url} is unreachable ({_describe(exc)})") from exc

    def script(self, source: str) -> Any:
        """A Lua script run by its digest (loaded again by itself after a server restart)."""
        return self.client.register_script(source)

    # -- health --------------------------------------------------------------------------------

    def on_health(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(available)`` when the server stops or starts answering."""
        self._health_listeners.append(listener)

    def _set_available(self, available: bool, exc: BaseException | None = None) -> None:
        if available == self.available:
            return
        self.available = available
        if available:
            log.warning("Redis at %s answers again", self.url)
        else:
            log.error("Redis at %s does not answer (%s)", self.url, _describe(exc) if exc else "no reply")
        for listener in list(self._health_listeners):
            try:
                listener(available)
            except Exception:
                log.exception("a state health listener failed")

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval_s)
            try:
                async with asyncio.timeout(self.options.timeout_s):
                    await self.client.ping()
            except _UNREACHABLE_OR_LATE as exc:
                self._set_available(False, exc)
            except RedisError as exc:  # e.g. LOADING arrives as a response error on some versions
                self._set_available(False, exc)
            else:
                if not self.available:
                    self._set_available(True)
                    self._run_resync()

    # -- notices -------------------------------------------------------------------------------

    def subscribe(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(message)`` on the event loop for every message on ``channel``."""
        fresh = channel not in self._channels
        self._channels.setdefault(channel, []).append(callback)
        if fresh and self._started:
            self._restart_listener()

    def on_resync(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after notices may have been missed (the notice connection came back)."""
        self._resync.append(callback)

    async def publish(self, channel: str, message: str) -> None:
        with self.guard("publish"):
            await self.client.publish(channel, message)

    def _restart_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
        self._listener = asyncio.create_task(self._listen(), name="state-notices") if self._channels else None

    def _run_resync(self) -> None:
        for callback in list(self._resync):
            try:
                callback()
            except Exception:
                log.exception("a state resync callback failed")

    async def _listen(self) -> None:
        delay_s = 0.05
        first = True
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self._channels)
                if not first:
                    self._run_resync()  # a gap: what was published meanwhile was not heard
                first = False
                delay_s = 0.05
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    for callback in list(self._channels.get(str(message["channel"]), ())):
                        try:
                            callback(str(message["data"]))
                        except Exception:
                            log.exception("a notice callback for %s failed", message["channel"])
            except _ANY_FAILURE as exc:
                log.debug("notice connection to %s broke: %s", self.url, _describe(exc))
                first = False  # whatever was published until the next subscribe is missed
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, MAX_RESUBSCRIBE_S)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def check(options: StateOptions) -> None:
    """Connect once and close: the start-up check of a command (StateError with the fix)."""
    conn = StateConnection(options)
    try:
        await conn.connect()
    finally:
        await conn.client.aclose()
