"""Edges and workers in one process over real loopback sockets: routing, credits, faults."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random

import pytest

from framewire.cluster import wire
from framewire.cluster.edge import REFUSED, Partial, RemoteStream
from framewire.cluster.wire import WorkerState
from framewire.engine.api import AppError, AppRegistry, EngineUnavailable, FrameResult, StartTimeout
from framewire.engine.apps.echo import EchoApp
from tests.cluster.apps import OtherSleepApp, SleepApp, SleepIn, SleepOut
from tests.cluster.conftest import (
    FAST,
    SECRET,
    Results,
    cluster,
    edge_for,
    home_of,
    running,
    start_worker,
    wait_for,
)


async def _ready(*edges: object) -> None:
    for edge in edges:
        await wait_for(lambda e=edge: e.ready, what="the edge to become ready")  # type: ignore[attr-defined]


def _endpoint(edge: object, path: str = "test/sleep", realtime: bool = True):  # type: ignore[no-untyped-def]
    return edge.registry.resolve(path, realtime=realtime)  # type: ignore[attr-defined]


async def test_frames_come_back_in_order_with_their_tags() -> None:
    async with cluster() as (edge, _):
        results = Results()
        stream = edge.open_stream(_endpoint(edge), 4, results)
        for n in range(20):
            while not stream.can_send():  # a client paced by its answers
                await asyncio.sleep(0.001)
            assert edge.submit(stream, SleepIn(n=n, image=b"j" * 48_000), ("tag", n)) is None
        await wait_for(lambda: len(results.got) == 20, what="20 results")
        assert results.tags() == [("tag", n) for n in range(20)]
        out = results.got[0].output
        assert isinstance(out, SleepOut) and out.image_bytes == 48_000
        assert results.got[0].batch_size >= 1 and results.got[0].inference_ms >= 0
        assert edge.close_stream(stream) == 0


async def test_an_input_over_a_limit_is_refused_at_the_edge_before_reaching_a_worker() -> None:
    async with cluster() as (edge, workers):
        stream = edge.open_stream(_endpoint(edge), 4, Results())
        with pytest.raises(AppError) as err:
            edge.submit(stream, SleepIn(n=1, sleep_ms=6000), "t")
        assert err.value.code == "OVER_BUDGET"
        result = await edge.call(_endpoint(edge, realtime=False), SleepIn(n=2, sleep_ms=6000))
        assert result.error is not None and result.error.code == "OVER_BUDGET" and "--limit" in result.error.reason
        assert workers[0].apps[0].seen == []  # type: ignore[attr-defined]


async def test_two_edges_share_batches_on_one_worker() -> None:
    app = SleepApp()
    worker = await start_worker([app])
    edges = [edge_for([worker.address]) for _ in range(2)]
    async with running(*edges, worker):
        for edge in edges:
            await edge.start()
        await _ready(*edges)
        got = [Results() for _ in range(4)]
        streams = [edges[i % 2].open_stream(_endpoint(edges[i % 2]), 2, got[i]) for i in range(4)]
        # A long first batch lets frames from both edges gather behind it, as behind a busy GPU.
        edges[0].submit(streams[0], SleepIn(n=0, sleep_ms=300, origin="a"), "first")
        await asyncio.sleep(0.1)
        for i, stream in enumerate(streams):
            edges[i % 2].submit(stream, SleepIn(n=i + 1, origin="ab"[i % 2]), i)
        await wait_for(lambda: sum(len(r.got) for r in got) == 5, what="5 results")
        mixed = [b for b in app.seen if {x.split(":")[0] for x in b} == {"a", "b"}]
        assert mixed, f"no batch mixed both edges: {app.seen}"


async def test_new_sessions_go_to_the_least_loaded_worker_and_stay() -> None:
    async with cluster(2) as (edge, _):
        streams = [edge.open_stream(_endpoint(edge), 2, Results()) for _ in range(4)]
        homes = [s.worker.name for s in streams]  # type: ignore[union-attr]
        assert sorted(homes.count(w.name) for w in edge._workers.values()) == [2, 2]
        for stream in streams:
            edge.submit(stream, SleepIn(n=1), 1)
        assert [s.worker.name for s in streams] == homes  # type: ignore[union-attr]
        await wait_for(lambda: sum(s.sessions_total for s in edge.worker_status()) == 4, what="load reports")


async def test_latest_frame_wins_end_to_end() -> None:
    async with cluster() as (edge, _):
        results = Results()
        stream: RemoteStream = edge.open_stream(_endpoint(edge), 1, results)  # window: 1 buffered + 1 running
        dropped = []
        for n in range(10):
            dropped.append(edge.submit(stream, SleepIn(n=n, sleep_ms=100), n))
            assert len(stream.in_flight) <= stream.window == 2
        assert dropped == [None, None, None, *range(2, 9)]  # the edge's slot keeps only the newest
        assert stream.dropped == 7
        await wait_for(lambda: len(results.got) == 3, what="3 results")
        assert results.tags() == [0, 1, 9]  # the latest frame always runs
        assert not results.errors()


async def test_a_backed_up_link_holds_only_the_newest_frame_at_the_edge() -> None:
    async with cluster() as (edge, _):
        results = Results()
        stream = edge.open_stream(_endpoint(edge), 4, results)
        link = stream.worker.link  # type: ignore[union-attr]
        assert link is not None
        link.pause_writing()  # what asyncio calls when the send buffer passes the high-water mark
        assert [edge.submit(stream, SleepIn(n=n), n) for n in range(5)] == [None, 0, 1, 2, 3]
        assert not stream.in_flight  # nothing queued behind the full buffer
        link.resume_writing()
        await wait_for(lambda: len(results.got) == 1, what="the newest frame's result")
        assert results.tags() == [4]


async def test_requests_return_results_and_progress() -> None:
    async with cluster() as (edge, _):
        endpoint = _endpoint(edge, "test/sleep", realtime=False)
        partials: list[object] = []
        result = await edge.call(endpoint, SleepIn(n=7), priority=0, on_progress=partials.append)
        assert isinstance(result.output, SleepOut) and result.output.n == 7
        assert len(partials) == 1 and isinstance(partials[0], Partial)
        assert partials[0].model_dump() == {"step": 1}


async def test_a_request_that_cannot_start_in_time_raises_start_timeout() -> None:
    async with cluster() as (edge, _):
        busy = edge.open_stream(_endpoint(edge), 1, Results())
        edge.submit(busy, SleepIn(n=0, sleep_ms=400), 0)  # holds the app's thread
        await asyncio.sleep(0.05)
        with pytest.raises(StartTimeout):
            await edge.call(_endpoint(edge, realtime=False), SleepIn(n=1), start_timeout_s=0.1)


async def test_a_cancelled_request_is_taken_out_of_the_worker_queue() -> None:
    app = SleepApp()
    worker = await start_worker([app])
    edge = edge_for([worker.address])
    async with running(edge, worker):
        await edge.start()
        await _ready(edge)
        busy = edge.open_stream(_endpoint(edge), 1, Results())
        edge.submit(busy, SleepIn(n=0, sleep_ms=300, origin="busy"), 0)
        await asyncio.sleep(0.05)
        task = asyncio.create_task(edge.call(_endpoint(edge, realtime=False), SleepIn(n=1, origin="gone")))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        after = await edge.call(_endpoint(edge, realtime=False), SleepIn(n=2, origin="after"))
        assert after.output is not None
        assert not [b for b in app.seen if "gone:1" in b]
        assert not any(s.requests for s in edge.worker_status())


async def test_a_wrong_secret_is_refused_and_nothing_is_routed() -> None:
    worker = await start_worker(secret=b"another-secret-" + b"y" * 32)
    edge = edge_for([worker.address])
    async with running(edge, worker):
        await edge.start()
        await wait_for(lambda: edge.worker_status()[0].state == REFUSED, what="the refusal")
        status = edge.worker_status()[0]
        assert "AUTH_FAILED" in (status.error or "") and "--worker-secret" in (status.error or "")
        assert worker.server.auth_failures >= 1
        assert not edge.ready and edge.unserved_apps() == ["test/sleep"]
        with pytest.raises(EngineUnavailable):
            edge.open_stream(_endpoint(edge), 2, Results())


async def test_an_edge_refuses_a_worker_that_cannot_prove_the_secret() -> None:
    async def fake_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        enc, dec = wire.Encoder(), wire.Decoder()
        writer.write(enc.pack([wire.Kind.HELLO, wire.PROTOCOL_VERSION, "impostor", wire.new_nonce()]))
        while not (messages := dec.feed(await reader.read(65536))):
            pass
        assert messages[0][0] == wire.Kind.AUTH
        writer.write(enc.pack([wire.Kind.WELCOME, b"\x00" * 32, {}]))
        await writer.drain()
        await reader.read()  # until the edge hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(fake_worker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    from framewire.cluster.directory import WorkerAddress

    edge = edge_for([WorkerAddress("127.0.0.1", port)])
    try:
        await edge.start()
        await wait_for(lambda: edge.worker_status()[0].state == REFUSED, what="the refusal")
        assert "did not prove the secret" in (edge.worker_status()[0].error or "")
    finally:
        await edge.stop()
        server.close()


async def _raw_edge(port: int, secret: bytes = SECRET) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made edge that completes the handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    enc, dec = wire.Encoder(), wire.Decoder()
    hello = dec.feed(await reader.read(65536))[0]
    nonce = wire.new_nonce()
    writer.write(enc.pack([wire.Kind.AUTH, 1, "raw", nonce, wire.edge_proof(secret, hello[3], nonce), {}]))
    welcome = dec.feed(await reader.read(65536))[0]
    assert welcome[0] == wire.Kind.WELCOME
    return reader, writer


async def test_a_malformed_message_gets_an_error_and_garbage_ends_only_that_link() -> None:
    async with cluster() as (edge, (worker,)):
        reader, writer = await _raw_edge(worker.address.port)
        enc, dec = wire.Encoder(), wire.Decoder()
        writer.write(enc.pack([wire.Kind.OPEN, "not-an-int", "test/sleep/realtime", 2]))
        writer.write(enc.pack([wire.Kind.PING, 1.0]))
        replies: list[list[object]] = []
        while len(replies) < 2:
            replies += dec.feed(await asyncio.wait_for(reader.read(65536), 5))
        assert replies[0][0] == wire.Kind.ERROR and replies[0][1] == "PROTOCOL"
        assert replies[1][0] == wire.Kind.PONG  # the link went on
        writer.write(b"\xc1\xc1\xc1")  # not msgpack: the worker drops this link
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        # The worker and its other edge are unaffected.
        result = await edge.call(_endpoint(edge, realtime=False), SleepIn(n=3))
        assert result.output is not None


async def test_a_stranger_cannot_make_the_worker_buffer_before_the_handshake() -> None:
    worker = await start_worker()
    async with running(worker):
        reader, writer = await asyncio.open_connection("127.0.0.1", worker.address.port)
        await reader.read(65536)  # HELLO
        writer.write(wire.Encoder().pack([wire.Kind.FRAME, 1, 1, {"image": bytes(100_000)}]))
        assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped, never decoded
        writer.close()
        await writer.wait_closed()


async def test_a_lost_worker_moves_sessions_with_one_error_per_frame_in_flight() -> None:
    async with cluster(2) as (edge, workers):
        results = Results()
        stream: RemoteStream = edge.open_stream(_endpoint(edge), 1, results)
        home = home_of(stream, workers)
        for n in range(3):  # two in flight at the worker, one waiting at the edge
            edge.submit(stream, SleepIn(n=n, sleep_ms=300), n)
        await asyncio.sleep(0.05)
        await home.crash()
        await wait_for(lambda: len(results.got) == 3, what="three answers")
        assert sorted(r.tag for r in results.got if r.error is not None) == [0, 1]  # type: ignore[type-var]
        assert results.errors() == ["ENGINE_RESTARTING", "ENGINE_RESTARTING"]
        assert [r.tag for r in results.got if r.error is None] == [2]  # the waiting frame ran elsewhere
        assert stream.worker is not None and stream.worker.address.port != home.address.port
        edge.submit(stream, SleepIn(n=3), 3)
        await wait_for(lambda: len(results.got) == 4, what="the next frame")
        assert results.got[-1].error is None
        assert edge.sessions_moved == 1


async def test_a_silent_worker_is_lost_after_the_timeout() -> None:
    async with cluster(2, edge_timeout_s=30.0) as (edge, workers):
        results = Results()
        stream: RemoteStream = edge.open_stream(_endpoint(edge), 2, results)
        home = home_of(stream, workers)
        for conn in home.server.connections():  # a frozen process: it reads and sends nothing
            assert conn.link is not None
            conn.link._transport.pause_reading()  # type: ignore[union-attr]
        edge.submit(stream, SleepIn(n=1), 1)
        started = asyncio.get_running_loop().time()
        await wait_for(lambda: len(results.got) == 1, timeout_s=5.0, what="the frame's answer")
        took_s = asyncio.get_running_loop().time() - started
        assert results.errors() == ["ENGINE_RESTARTING"]
        assert FAST.timeout_s * 0.8 < took_s < 3.0
        edge.submit(stream, SleepIn(n=2), 2)
        await wait_for(lambda: len(results.got) == 2, what="the next frame")
        assert results.got[1].error is None


async def test_a_draining_worker_hands_its_sessions_over_without_errors() -> None:
    async with cluster(2) as (edge, workers):
        results = Results()
        stream: RemoteStream = edge.open_stream(_endpoint(edge), 2, results)
        home = home_of(stream, workers)
        edge.submit(stream, SleepIn(n=0, sleep_ms=200), 0)
        call = asyncio.create_task(edge.call(_endpoint(edge, realtime=False), SleepIn(n=9, sleep_ms=100)))
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(home.server.drain(timeout_s=5.0))
        await wait_for(lambda: stream.moving or stream.worker is None or stream.worker.name != str(home.address))
        edge.submit(stream, SleepIn(n=1), 1)  # waits at the edge until frame 0 is back, then goes elsewhere
        await wait_for(lambda: len(results.got) == 2, what="both frames")
        assert not results.errors() and results.tags() == [0, 1]
        assert stream.worker is not None and stream.worker.address.port != home.address.port
        assert (await call).output is not None  # the request it had finished there
        await asyncio.wait_for(drain, 5.0)


async def test_requests_run_again_when_their_worker_is_lost() -> None:
    async with cluster(2) as (edge, workers):
        call = asyncio.create_task(edge.call(_endpoint(edge, realtime=False), SleepIn(n=5, sleep_ms=300)))
        await wait_for(lambda: any(s.requests for s in edge.worker_status()), what="the request to leave")
        holder = next(w for w in edge._workers.values() if w.calls)
        await next(w for w in workers if w.address.port == holder.address.port).crash()
        result = await asyncio.wait_for(call, 5.0)
        assert result.error is None and isinstance(result.output, SleepOut) and result.output.n == 5
        assert edge.requests_retried == 1


async def test_a_request_lost_too_often_fails_with_engine_restarting() -> None:
    worker = await start_worker()
    options = dataclasses.replace(FAST, call_retries=0, wait_for_worker_s=0.5)
    edge = edge_for([worker.address], options=options)
    async with running(edge, worker):
        await edge.start()
        await _ready(edge)
        call = asyncio.create_task(edge.call(_endpoint(edge, realtime=False), SleepIn(n=5, sleep_ms=300)))
        await wait_for(lambda: any(s.requests for s in edge.worker_status()), what="the request to leave")
        await worker.crash()
        result = await asyncio.wait_for(call, 5.0)
        assert result.error is not None and result.error.code == "ENGINE_RESTARTING"


async def test_apps_without_a_worker_are_reported_and_refused() -> None:
    worker = await start_worker()  # serves test/sleep only
    options = dataclasses.replace(FAST, wait_for_worker_s=0.2)
    edge = edge_for([worker.address], apps=[SleepApp(), EchoApp()], options=options)
    async with running(edge, worker):
        await edge.start()
        await wait_for(lambda: edge.worker_status()[0].state == "ready", what="the worker")
        assert not edge.ready and edge.unserved_apps() == ["framewire/echo"]
        echo = edge.registry.resolve("framewire/echo", realtime=True)
        with pytest.raises(EngineUnavailable, match="no worker serves framewire/echo"):
            edge.open_stream(echo, 2, Results())
        result = await edge.call(echo, echo.input_model())
        assert isinstance(result.error, EngineUnavailable)


async def test_a_worker_that_comes_back_takes_the_waiting_sessions() -> None:
    worker = await start_worker()
    port = worker.address.port
    edge = edge_for([worker.address])
    async with running(edge):
        await edge.start()
        await _ready(edge)
        results = Results()
        stream = edge.open_stream(_endpoint(edge), 2, results)
        await worker.crash()
        worker.sock.close()
        await wait_for(lambda: edge.worker_status()[0].state == "lost", what="the loss")
        with pytest.raises(EngineUnavailable):
            edge.submit(stream, SleepIn(n=1), 1)
        back = await start_worker(port=port)
        async with running(back):
            await wait_for(lambda: stream.worker is not None, what="the session to be placed again")
            edge.submit(stream, SleepIn(n=2), 2)
            await wait_for(lambda: len(results.got) == 1, what="a result")
            assert results.got[0].error is None and results.tags() == [2]
            assert edge.ready


async def test_a_worker_with_other_app_code_gets_no_traffic() -> None:
    worker = await start_worker([OtherSleepApp()])
    edge = edge_for([worker.address])
    async with running(edge, worker):
        await edge.start()
        await wait_for(lambda: edge.worker_status()[0].state == WorkerState.READY, what="the worker")
        status = edge.worker_status()[0]
        assert status.apps == () and "differ" in (status.error or "")
        assert not edge.ready


async def test_worker_status_reports_sessions_and_batches() -> None:
    async with cluster() as (edge, _):
        got: list[FrameResult] = []
        stream = edge.open_stream(_endpoint(edge), 2, got.append)
        edge.submit(stream, SleepIn(n=1), 1)
        await wait_for(lambda: len(got) == 1, what="a result")
        await wait_for(lambda: bool(edge.worker_status()[0].batch_fill), what="a load report with batches")
        status = edge.worker_status()[0]
        assert status.sessions == 1 and status.sessions_total == 1
        assert status.batch_size["test/sleep/realtime"] == 1.0
        assert status.batch_fill["test/sleep/realtime"] == pytest.approx(1 / 8)
        assert status.rtt_ms is not None and status.device == "cpu"


async def test_the_catalog_learns_an_apps_weights_from_the_workers_that_run_it() -> None:
    async with cluster() as (edge, _):
        await _ready(edge)
        app = edge.registry.get("test/sleep")
        assert app is not None and app.weights_info() is None  # the edge's copy is never set up
        await wait_for(lambda: edge.weights_of(app) is not None, what="the worker's weights report")
        assert edge.weights_of(app) == SleepApp.WEIGHTS


def _random_message(rng: random.Random) -> list[object]:
    """A message of a real type with fields of random shapes (ints, strings, maps, nils)."""
    kinds = [int(k) for k in wire.Kind] + [99]
    values: list[object] = [None, 0, -1, 7, 2**40, 1.5, "", "test/sleep/realtime", b"\x00" * 3, [], {}, {"n": "x"}]
    fields = [rng.choice(values) for _ in range(rng.randint(0, 8))]
    return [rng.choice(kinds), *fields]


async def test_random_messages_never_break_a_worker() -> None:
    async with cluster() as (edge, (worker,)):
        reader, writer = await _raw_edge(worker.address.port)
        enc, dec = wire.Encoder(), wire.Decoder()
        rng = random.Random(14)
        for _ in range(400):
            message = _random_message(rng)
            if message[0] == wire.Kind.CLOSE and len(message) == 2:
                continue  # a valid close of a stream this edge never opened: no answer to wait for
            writer.write(enc.pack(message))
        writer.write(enc.pack([wire.Kind.PING, 42.0]))
        replies: list[list[object]] = []
        async with asyncio.timeout(10):
            while not any(r[0] == wire.Kind.PONG and r[1] == 42.0 for r in replies):
                replies += dec.feed(await reader.read(1 << 20))
        assert {r[1] for r in replies if r[0] == wire.Kind.ERROR} == {"PROTOCOL"}  # no handler crashed
        kinds = {r[0] for r in replies}
        assert wire.Kind.ERROR in kinds and kinds <= {
            wire.Kind.ERROR,
            wire.Kind.PONG,
            wire.Kind.STREAM_ERROR,
            wire.Kind.REPLY,
            wire.Kind.RESULT,
        }
        writer.close()
        await writer.wait_closed()
        result = await edge.call(_endpoint(edge, realtime=False), SleepIn(n=1))
        assert result.output is not None


async def test_random_messages_from_a_worker_never_break_an_edge() -> None:
    registry = AppRegistry([SleepApp()])
    errors: list[list[object]] = []
    done = asyncio.Event()

    async def fuzzing_worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        enc, dec = wire.Encoder(), wire.Decoder()
        nonce = wire.new_nonce()
        writer.write(enc.pack([wire.Kind.HELLO, wire.PROTOCOL_VERSION, "fuzz", nonce]))
        auth = dec.feed(await reader.read(65536))[0]
        load = wire.WorkerLoad(wire.WorkerState.READY)
        info = wire.WorkerInfo("fuzz", "cpu", 0, wire.describe_apps(registry), load)
        writer.write(enc.pack([wire.Kind.WELCOME, wire.worker_proof(SECRET, auth[3], nonce), info.to_wire()]))
        rng = random.Random(15)
        for _ in range(400):
            writer.write(enc.pack(_random_message(rng)))
        writer.write(enc.pack([wire.Kind.ERROR, "DONE", "marker"]))  # the edge only logs this one
        await writer.drain()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(2):
                while data := await reader.read(1 << 20):
                    errors.extend(m for m in dec.feed(data) if m[0] == wire.Kind.ERROR)
        done.set()
        writer.close()

    server = await asyncio.start_server(fuzzing_worker, "127.0.0.1", 0)
    real = await start_worker()
    from framewire.cluster.directory import WorkerAddress

    edge = edge_for([WorkerAddress("127.0.0.1", server.sockets[0].getsockname()[1]), real.address])
    async with running(edge, real):
        await edge.start()
        await asyncio.wait_for(done.wait(), 10)
        assert errors and {e[1] for e in errors} == {"PROTOCOL"}  # refused, and no handler crashed
        result = await edge.call(_endpoint(edge, realtime=False), SleepIn(n=1))
        assert result.output is not None
    server.close()


async def test_a_sessions_target_and_skipping_reach_the_worker_and_come_back() -> None:
    async with cluster() as (edge, (worker,)):
        results = Results()
        stream = edge.open_stream(_endpoint(edge), 2, results, target_latency_ms=500.0, similarity_threshold=0.0)
        for answered in (1, 2):  # the same frame twice: the worker may answer the repeat without running it
            edge.submit(stream, SleepIn(n=1, image=b"same"), answered)
            await wait_for(lambda n=answered: len(results.got) == n, what="a result")
        first, second = results.got
        assert first.target_latency_ms == 500.0 and first.latency_ms is not None and first.target_met
        assert first.skipped == "" and second.skipped == "exact" and second.batch_size == 0
        assert second.timings["skipped"] == "exact"
        app = worker.apps[0]
        assert isinstance(app, SleepApp) and app.seen == [[":1"]]  # ran once
        with pytest.raises(ValueError, match="target_latency_ms"):
            edge.open_stream(_endpoint(edge), 2, results, target_latency_ms=0.0)
