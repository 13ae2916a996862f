"""The worker registry: workers announce themselves with leases; edges follow the list.

A worker started with ``--redis-url`` holds a *lease*: an entry with its address, device,
apps, capacity (each endpoint's largest batch), load and state (``starting``, ``ready``,
``draining``, ...), which expires unless renewed. The worker renews it every third of
``lease_s`` (so two renewals can be lost before it lapses), at once when its state
changes, and withdraws it when it stops. Every announcement that changes what edges
need (a new worker, a new state, a new address) is published, so an edge's
:class:`RegistryDirectory` connects to a new worker within milliseconds rather than at a
poll; it also re-reads the list every half lease to drop workers whose lease lapsed
(killed without withdrawing), and after every gap in the notices.

Routing itself needs nothing from here: each edge's link to each worker carries that
worker's load on every heartbeat (:mod:`framewire.cluster.edge`). A lease only says
where to connect, and what ``GET /v1/apps`` shows. Anyone who can write to Redis can
announce an address, but no frame reaches it unless it proves the workers' secret.

Two implementations: :class:`MemoryRegistry` (one process, e.g. tests and embedding)
and :class:`RedisRegistry` (``worker:{id}`` keys with a TTL, the ``workers`` set, the
``notice:workers`` channel). The same contract tests run against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from framewire.cluster.directory import WorkerAddress
from framewire.state.connection import StateConnection, StateUnavailable

log = logging.getLogger("framewire.registry")

#: Largest lease entry accepted from the registry (a worker serving hundreds of endpoints fits).
MAX_LEASE_BYTES = 256 * 1024


@dataclass(frozen=True)
class Lease:
    """One worker as it announces itself."""

    worker_id: str
    host: str
    port: int
    device: str
    apps: tuple[str, ...]
    state: str
    tls: bool = False
    capacity: Mapping[str, int] = field(default_factory=dict)  # endpoint key -> largest batch
    sessions: int = 0  # realtime streams open there, from every edge
    calls: int = 0  # requests queued or running there
    edges: int = 0  # edges linked to it
    pid: int = 0
    started_at: float = 0.0
    renewed_at: float = 0.0

    @property
    def address(self) -> WorkerAddress:
        return WorkerAddress(self.host, self.port, label=self.worker_id, tls=self.tls)

    def essentials(self) -> tuple[object, ...]:
        """What edges act on: a change of these is published at once."""
        return (self.host, self.port, self.tls, self.device, self.apps, self.state)

    def to_json(self) -> str:
        data = asdict(self)
        data["apps"] = list(self.apps)
        data["capacity"] = dict(self.capacity)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Lease:
        """ValueError for an entry that is not a lease (written by something else)."""
        if len(text) > MAX_LEASE_BYTES:
            raise ValueError("lease entry too large")
        try:
            data = json.loads(text)
            lease = cls(
                worker_id=str(data["worker_id"]),
                host=str(data["host"]),
                port=int(data["port"]),
                device=str(data["device"]),
                apps=tuple(str(a) for a in data["apps"]),
                state=str(data["state"]),
                tls=bool(data.get("tls", False)),
                capacity={str(k): int(v) for k, v in dict(data.get("capacity") or {}).items()},
                sessions=int(data.get("sessions", 0)),
                calls=int(data.get("calls", 0)),
                edges=int(data.get("edges", 0)),
                pid=int(data.get("pid", 0)),
                started_at=float(data.get("started_at", 0.0)),
                renewed_at=float(data.get("renewed_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a worker lease: {exc}") from None
        if not 0 < lease.port < 65536 or not lease.host:
            raise ValueError("not a worker lease: bad address")
        return lease


class Registry(Protocol):
    """Where leases live. ``lease_s``: how long an entry lasts without renewal."""

    lease_s: float

    async def announce(self, lease: Lease, *, publish: bool) -> None:
        """Create or renew ``lease`` for ``lease_s``; tell the edges when ``publish``."""

    async def withdraw(self, worker_id: str) -> None:
        """Remove the worker's lease at once, and tell the edges."""

    async def leases(self) -> list[Lease]:
        """The live leases, by worker id."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` when a published announcement or a withdrawal may have changed the list."""


class MemoryRegistry:
    """:class:`Registry` in this process; ``clock`` is injectable for tests."""

    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease_s = lease_s
        self.clock = clock
        self._entries: dict[str, tuple[float, Lease]] = {}
        self._watchers: list[Callable[[], None]] = []

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            watcher()

    async def announce(self, lease: Lease, *, publish: bool) -> None:
        self._entries[lease.worker_id] = (self.clock() + self.lease_s, lease)
        if publish:
            self._notify()

    async def withdraw(self, worker_id: str) -> None:
        if self._entries.pop(worker_id, None) is not None:
            self._notify()

    async def leases(self) -> list[Lease]:
        now = self.clock()
        for worker_id in [w for w, (until, _) in self._entries.items() if until <= now]:
            del self._entries[worker_id]
        return [lease for _, (_, lease) in sorted(self._entries.items())]

    def watch(self, on_change: Callable[[], None]) -> None:
        self._watchers.append(on_change)


class RedisRegistry:
    """:class:`Registry` in Redis; see the module docstring."""

    def __init__(self, conn: StateConnection, lease_s: float) -> None:
        self.conn = conn
        self.lease_s = lease_s
        self.channel = conn.key("notice", "workers")
        self._index = conn.key("workers")

    def _key(self, worker_id: str) -> str:
        return self.conn.key("worker", worker_id)

    async def announce(self, lease: Lease, *, publish: bool) -> None:
        with self.conn.guard("announce a worker"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.set(self._key(lease.worker_id), lease.to_json(), px=max(1, int(self.lease_s * 1000)))
                pipe.sadd(self._index, lease.worker_id)
                if publish:
                    pipe.publish(self.channel, lease.worker_id)
                await pipe.execute()

    async def withdraw(self, worker_id: str) -> None:
        with self.conn.guard("withdraw a worker"):
            async with self.conn.client.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(worker_id))
                pipe.srem(self._index, worker_id)
                pipe.publish(self.channel, worker_id)
                await pipe.execute()

    async def leases(self) -> list[Lease]:
        with self.conn.guard("read the worker registry"):
            ids = sorted(str(i) for i in await self.conn.client.smembers(self._index))
            if not ids:
                return []
            entries = await self.conn.client.mget([self._key(i) for i in ids])
            lapsed = [worker_id for worker_id, entry in zip(ids, entries, strict=True) if entry is None]
            if lapsed:
                await self.conn.client.srem(self._index, *lapsed)
        found = []
        for worker_id, entry in zip(ids, entries, strict=True):
            if entry is None:
                continue
            try:
                found.append(Lease.from_json(str(entry)))
            except ValueError as exc:
                log.warning("ignoring the registry entry of %s: %s", worker_id, exc)
        return found

    def watch(self, on_change: Callable[[], None]) -> None:
        self.conn.subscribe(self.channel, lambda _worker_id: on_change())
        self.conn.on_resync(on_change)


class RegistryDirectory:
    """A :class:`~framewire.cluster.directory.Directory` of the workers in a registry (edge side).

    Reads the registry at start, at every notice, and every ``refresh_s`` (default half
    the lease); tells its watcher only when the set of addresses changed. While the
    registry cannot be read it keeps the last list (the links to those workers go on).
    """

    def __init__(self, registry: Registry, *, refresh_s: float | None = None) -> None:
        self.registry = registry
        self.refresh_s = refresh_s if refresh_s is not None else registry.lease_s / 2
        self._leases: list[Lease] = []
        self._watchers: list[Callable[[], None]] = []
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unreadable = False

    def addresses(self) -> list[WorkerAddress]:
        return [lease.address for lease in self._leases]

    def leases(self) -> list[Lease]:
        return list(self._leases)

    def watch(self, on_change: Callable[[], None]) -> None:
        self._watchers.append(on_change)

    async def start(self) -> None:
        self.registry.watch(self._poked.set)
        with contextlib.suppress(StateUnavailable):
            await self.refresh()
        self._task = asyncio.create_task(self._follow(), name="worker-registry")

    async def stop(self, timeout_s: float) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> bool:
        """Read the registry; True (and watchers told) when the addresses changed."""
        leases = await self.registry.leases()
        before = {lease.address for lease in self._leases}
        self._leases = leases
        if {lease.address for lease in leases} == before:
            return False
        log.info("worker registry: %s", ", ".join(f"{x.worker_id}@{x.address}" for x in leases) or "no worker")
        for watcher in list(self._watchers):
            watcher()
        return True

    async def _follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_s):
                    await self._poked.wait()
            self._poked.clear()
            try:
                await self.refresh()
                self._unreadable = False
            except StateUnavailable as exc:
                if not self._unreadable:
                    log.error("cannot read the worker registry; keeping the last list: %s", exc)
                self._unreadable = True
            except Exception:
                log.exception("reading the worker registry failed")


class Announcer:
    """Keeps one worker's lease (worker side); see the module docstring.

    ``current`` returns the lease as it is now (state and load filled in by the caller).
    """

    def __init__(self, registry: Registry, current: Callable[[], Lease]) -> None:
        self.registry = registry
        self.current = current
        self.interval_s = registry.lease_s / 3
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[object, ...] | None = None
        self._failing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="worker-lease")

    def poke(self) -> None:
        """Announce now (the state changed)."""
        self._poked.set()

    async def announce(self) -> None:
        lease = replace(self.current(), renewed_at=time.time())
        essentials = lease.essentials()
        # After a failure the entry may have lapsed: publish, so edges look again.
        publish = essentials != self._last or self._failing
        await self.registry.announce(lease, publish=publish)
        self._last = essentials

    async def _run(self) -> None:
        while True:
            try:
                await self.announce()
                if self._failing:
                    log.warning("the worker registry answers again; this worker's lease is renewed")
                self._failing = False
            except StateUnavailable as exc:
                if not self._failing:
                    log.error("cannot renew this worker's lease (edges keep their links): %s", exc)
                self._failing = True
            except Exception:
                log.exception("announcing this worker failed")
                self._failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._poked.wait()
            self._poked.clear()

    async def stop(self) -> None:
        """Stop renewing and withdraw the lease (bounded; a lease that cannot be withdrawn lapses)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lease = self.current()
        try:
            async with asyncio.timeout(2.0):
                await self.registry.withdraw(lease.worker_id)
        except (StateUnavailable, TimeoutError) as exc:
            log.warning(
                "could not withdraw this worker's lease; it lapses within %.0f s: %s", self.registry.lease_s, exc
            )


def lease_of(
    worker_id: str,
    address: WorkerAddress,
    device: str,
    apps: Sequence[str],
    capacity: Mapping[str, int],
    load: Any,
    started_at: float,
) -> Lease:
    """A worker's lease now: ``capacity`` maps each endpoint key to its largest batch; ``load``
    is its :class:`~framewire.cluster.wire.WorkerLoad`."""
    return Lease(
        worker_id=worker_id,
        host=address.host,
        port=address.port,
        tls=address.tls,
        device=device,
        apps=tuple(sorted(apps)),
        state=str(load.state),
        capacity=dict(capacity),
        sessions=int(load.sessions),
        calls=int(load.calls),
        edges=int(load.edges),
        pid=os.getpid(),
        started_at=started_at,
    )
