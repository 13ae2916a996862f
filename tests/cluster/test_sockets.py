"""Raw app sockets through an edge and a worker: messages, credits, closes from either side,
a lost worker; and fal's ``ws_connect()`` through an edge process and a worker process."""

from __future__ import annotations

import asyncio
import json
import os

import fal_client
import pytest

from framewire.cluster.sockets import WINDOW, LinkSocket
from framewire.cluster.wire import Kind, Violation
from framewire.engine.api import App, EngineUnavailable, SocketClosed, SocketEndpoint
from tests.cluster.apps import RawSocketApp, SleepApp
from tests.cluster.conftest import cluster, edge_for, running, start_worker, wait_for
from tests.cluster.processes import edge_process, worker_process
from tests.gateway.test_live import point_fal_client_at


def _apps() -> list[App]:
    return [RawSocketApp(), SleepApp()]


def _endpoint(edge: object, path: str = "") -> SocketEndpoint:
    registry = edge.registry  # type: ignore[attr-defined]
    found = registry.resolve_socket("/".join(p for p in ("test/rawsocket", path) if p))
    assert found is not None
    return found  # type: ignore[no-any-return]


async def test_messages_and_closes_through_an_edge_and_a_worker() -> None:
    async with cluster(apps=[RawSocketApp(), SleepApp()], worker_apps=_apps) as (edge, workers):
        line = await edge.open_socket(_endpoint(edge), {"room": "1"})
        hello = json.loads(await line.receive())
        assert hello == {"pid": os.getpid(), "query": {"room": "1"}, "path": ""}
        for word in ("one", "two"):
            await line.send(word)
        await line.send(b"ab")
        assert [await line.receive() for _ in range(3)] == ["ONE", "TWO", b"ba"]
        await line.send("close")
        with pytest.raises(SocketClosed) as closed:
            await line.receive()
        assert (closed.value.code, closed.value.reason) == (4001, "asked to close")
        await wait_for(lambda: not any(c.sockets for c in workers[0].server.connections()), what="the socket to end")

        # the client leaves first: the worker's handler ends too
        line = await edge.open_socket(_endpoint(edge, "count"), {})
        await line.send('{"n": 1}')
        assert json.loads(await line.receive()) == {"seen": 1, "got": {"n": 1}}
        line.close(1000, "bye")
        await wait_for(lambda: workers[0].engine.open_sockets == 0, what="the handler to end")


async def test_a_lost_worker_closes_its_sockets_with_1011() -> None:
    async with cluster(apps=[RawSocketApp(), SleepApp()], worker_apps=_apps) as (edge, workers):
        line = await edge.open_socket(_endpoint(edge), {})
        await line.receive()
        await workers[0].crash()
        with pytest.raises(SocketClosed) as closed:
            await line.receive()
        assert closed.value.code == 1011 and "went away" in closed.value.reason


async def test_no_worker_with_the_socket_endpoint_means_engine_unavailable() -> None:
    worker = await start_worker([SleepApp()])  # no RawSocketApp there
    edge = edge_for([worker.address], apps=_apps())
    async with running(edge, worker):
        await edge.start()
        await wait_for(lambda: [s.state for s in edge.worker_status()] == ["ready"], what="the worker")
        with pytest.raises(EngineUnavailable, match="no worker serves test/rawsocket"):
            await edge.open_socket(_endpoint(edge), {})


async def test_credits_bound_what_either_end_holds() -> None:
    sent: list[list[object]] = []
    sock = LinkSocket(1, sent.append)
    for n in range(WINDOW):
        await sock.send(str(n))
    blocked = asyncio.create_task(sock.send("over"))
    await asyncio.sleep(0.01)
    assert not blocked.done() and len(sent) == WINDOW
    sock.on_ack(1)
    await asyncio.wait_for(blocked, 1)
    with pytest.raises(Violation):
        sock.on_ack(WINDOW + 5)  # more than is in flight
    for _ in range(WINDOW):
        sock.on_data(b"x")
    with pytest.raises(Violation, match="without credit"):
        sock.on_data(b"one too many")
    assert await sock.receive() == b"x" and sent[-1] == [Kind.SOCKET_ACK, 1, 1]
    sock.on_close(1000, "done")
    assert len([await sock.receive() for _ in range(WINDOW - 1)]) == WINDOW - 1
    with pytest.raises(SocketClosed):
        await sock.receive()


def test_fal_ws_connect_through_an_edge_process_and_a_worker_process(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = ("--app", "tests.cluster.apps:RawSocketApp")
    with (
        worker_process("w1", extra=extra) as (worker, worker_port),
        edge_process([f"127.0.0.1:{worker_port}"], extra=extra) as (edge, port, _),
    ):
        point_fal_client_at(monkeypatch, f"127.0.0.1:{port}")
        client = fal_client.SyncClient(key="any:key")
        for use_jwt in (True, False):
            with client.ws_connect("test/rawsocket", use_jwt=use_jwt) as ws:
                hello = json.loads(ws.recv())
                assert hello["pid"] == worker.pid != edge.pid
                ws.send("through the link")
                assert ws.recv() == "THROUGH THE LINK"
                ws.send(os.urandom(1) + b"payload")
                assert ws.recv()[:7] == b"daolyap"
        client._client.close()
