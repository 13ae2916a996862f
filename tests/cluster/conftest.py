"""Workers and edges in the test's own process, over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from framewire.cluster.directory import Directory, StaticDirectory, WorkerAddress
from framewire.cluster.edge import LinkOptions, RemoteEngine
from framewire.cluster.worker import BatchStats, WorkerServer
from framewire.engine.api import App, AppRegistry, FrameResult
from framewire.engine.host import LocalEngine
from tests.cluster.apps import SleepApp

SECRET = b"test-secret-" + b"x" * 32
FAST = LinkOptions(SECRET, heartbeat_s=0.1, timeout_s=0.6, reconnect_min_s=0.05, reconnect_max_s=0.2)


@dataclass
class InProcessWorker:
    server: WorkerServer
    engine: LocalEngine
    sock: socket.socket
    apps: list[App]
    port: int = 0

    @property
    def address(self) -> WorkerAddress:
        return WorkerAddress("127.0.0.1", self.port, label=self.server.worker_id)

    async def crash(self) -> None:
        """Like a killed process: links reset, nothing more answered."""
        for server in self.server._servers:
            server.close()
        for conn in self.server.connections():
            if conn.link is not None:
                conn.link.abort("crashed")
        await self.engine.stop(timeout_s=2.0)


def listening_socket(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


async def start_worker(
    apps: Sequence[App] | None = None,
    *,
    secret: bytes = SECRET,
    worker_id: str = "w",
    port: int = 0,
    edge_timeout_s: float = 3.0,
) -> InProcessWorker:
    chosen = list(apps) if apps is not None else [SleepApp()]
    registry = AppRegistry(chosen)
    stats = BatchStats({ep.key: ep.max_batch_size for a in registry for ep in registry.endpoints_of(a).values()})
    engine = LocalEngine(registry, on_batch=stats.on_batch)
    server = WorkerServer(engine, secret=secret, worker_id=worker_id, stats=stats, edge_timeout_s=edge_timeout_s)
    sock = listening_socket(port)
    await server.listen(sock)
    await server.start_engine()
    return InProcessWorker(server, engine, sock, chosen, sock.getsockname()[1])


def edge_for(
    addresses: Sequence[WorkerAddress] | Directory,
    apps: Sequence[App] | None = None,
    options: LinkOptions = FAST,
) -> RemoteEngine:
    directory = addresses if not isinstance(addresses, list | tuple) else StaticDirectory(addresses)
    return RemoteEngine(AppRegistry(list(apps) if apps is not None else [SleepApp()]), directory, options)


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@dataclass
class Results:
    """Collects a stream's results."""

    got: list[FrameResult] = field(default_factory=list)

    def __call__(self, result: FrameResult) -> None:
        self.got.append(result)

    def tags(self) -> list[object]:
        return [r.tag for r in self.got]

    def errors(self) -> list[str]:
        return [r.error.code for r in self.got if r.error is not None]


@contextlib.asynccontextmanager
async def running(*engines: RemoteEngine | InProcessWorker) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for item in engines:
            if isinstance(item, RemoteEngine):
                await item.stop(timeout_s=2.0)
            else:
                with contextlib.suppress(Exception):
                    await item.server.close()
                item.sock.close()


@contextlib.asynccontextmanager
async def cluster(
    workers: int = 1,
    apps: Sequence[App] | None = None,
    options: LinkOptions = FAST,
    worker_apps: Callable[[], Sequence[App]] | None = None,
    **worker_options: Any,
) -> AsyncIterator[tuple[RemoteEngine, list[InProcessWorker]]]:
    """An edge in front of ``workers`` in-process workers, all ready; each worker has its own
    apps from ``worker_apps`` (default: a SleepApp)."""
    started = [
        await start_worker(None if worker_apps is None else worker_apps(), worker_id=f"w{i}", **worker_options)
        for i in range(workers)
    ]
    edge = edge_for([w.address for w in started], apps=apps, options=options)
    async with running(edge, *started):
        await edge.start()
        await wait_for(lambda: edge.ready and all(s.state == "ready" for s in edge.worker_status()), what="workers")
        yield edge, started


def home_of(stream: Any, workers: Sequence[InProcessWorker]) -> InProcessWorker:
    """The worker a remote stream is placed on."""
    return next(w for w in workers if stream.worker is not None and w.address.port == stream.worker.address.port)
