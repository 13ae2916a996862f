"""The generator against scripted WebSocket servers on loopback: what it counts is what
the server did."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import msgpack
import pytest
from websockets.asyncio.server import ServerConnection, serve

from framewire.bench.loadgen import LoadSpec, Mode, generate, require_loopback
from framewire.bench.payload import FrameMaker

Behaviour = Callable[[ServerConnection, dict], "asyncio.Future[None] | None"]


async def _answer(ws: ServerConnection, frame: dict) -> None:
    await ws.send(msgpack.packb({"request_id": frame["request_id"], "timings": {"queue_ms": 0.5, "batch_size": 2}}))


async def handler(ws: ServerConnection) -> None:
    """Behaviour by path: /echo answers all, /even answers even ids only, /fail refuses
    every third frame, /silent never answers, /close answers two frames and closes on
    the third, /stall answers one frame and then nothing."""
    path = ws.request.path if ws.request else ""
    async for message in ws:
        frame = msgpack.unpackb(message)
        rid = frame["request_id"]
        early = (path == "/close" and rid < 3) or (path == "/stall" and rid < 2)
        if path == "/echo" or (path == "/even" and rid % 2 == 0) or early:
            await _answer(ws, frame)
        elif path == "/fail":
            if rid % 3 == 0:
                error = {"type": "x-fal-error", "error": "INVALID_INPUT", "reason": "bad", "request_id": rid}
                await ws.send(json.dumps(error))
            else:
                await _answer(ws, frame)
        elif path == "/close" and rid == 3:
            await ws.close(1011, "boom")
            return


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def makers(n: int) -> list[FrameMaker]:
    return [FrameMaker({"image_url": b"\xff\xd8" + bytes(1000), "prompt": "p"}) for _ in range(n)]


def spec(url: str, **kw: object) -> LoadSpec:
    base: dict[str, object] = {"sessions": 2, "warmup_s": 0.1, "window_s": 0.6, "drain_s": 0.3}
    base.update(kw)
    return LoadSpec(url, **base)  # type: ignore[arg-type]


async def test_closed_loop_gets_every_frame_back_and_measures_each(server: str) -> None:
    result = await generate(spec(f"{server}/echo"), makers(2))
    t = result.tally
    assert t.sent > 20 and t.ok == t.sent and t.balanced()
    assert len(result.latencies_ms) == t.ok and all(x > 0 for x in result.latencies_ms)
    assert result.received_in_window > 0
    assert result.throughput_fps == pytest.approx(result.received_in_window / 0.6)
    assert result.batch_sizes == {2: t.ok} and result.timings["queue_ms"][0] == 0.5
    assert not result.session_errors


async def test_open_loop_sends_at_the_asked_rate(server: str) -> None:
    result = await generate(spec(f"{server}/echo", mode=Mode.OPEN, fps=50.0, window_s=1.0), makers(2))
    # 2 sessions x 50 fps x 1 s, give or take a tick; a tick the loop was too late for
    # is skipped and counted, never sent in a burst.
    assert 2 * 50 - 4 <= result.tally.sent + result.skipped_ticks <= 2 * 50 + 4
    assert result.tally.ok == result.tally.sent
    assert len(result.send_lag_ms) == result.tally.sent


async def test_frames_the_server_skipped_count_as_dropped(server: str) -> None:
    result = await generate(spec(f"{server}/even", mode=Mode.OPEN, fps=50.0), makers(2))
    t = result.tally
    assert t.balanced() and t.ok > 10 and not t.errors
    assert t.dropped >= t.ok - 2  # one odd frame before each even answer (window edges aside)
    assert t.lost <= 2  # at most the last odd frame of each session


async def test_errors_are_counted_by_code_per_frame(server: str) -> None:
    result = await generate(spec(f"{server}/fail"), makers(2))
    t = result.tally
    assert t.balanced() and t.errors["INVALID_INPUT"] > 3
    assert abs(t.errors["INVALID_INPUT"] - t.sent / 3) <= 2
    assert result.error_samples["INVALID_INPUT"] == "bad"


async def test_a_silent_server_loses_frames_and_the_run_still_stops_by_itself(server: str) -> None:
    started = time.monotonic()
    result = await generate(spec(f"{server}/silent", mode=Mode.OPEN, fps=20.0), makers(2))
    assert time.monotonic() - started < 5.0
    assert result.tally.ok == 0 and result.tally.lost == result.tally.sent > 0


async def test_a_closed_session_is_a_session_error_and_does_not_hang_closed_loop(server: str) -> None:
    started = time.monotonic()
    result = await generate(spec(f"{server}/close", warmup_s=0.0), makers(2))
    assert time.monotonic() - started < 5.0
    assert result.session_errors["CLOSED_1011"] == 2
    assert result.error_samples["CLOSED_1011"] == "boom"


async def test_a_stalled_server_does_not_hang_closed_loop(server: str) -> None:
    started = time.monotonic()
    result = await generate(spec(f"{server}/stall", warmup_s=0.0), makers(2))
    assert time.monotonic() - started < 5.0
    assert (result.tally.sent, result.tally.ok, result.tally.lost) == (4, 2, 2)


async def test_refused_connections_are_counted_not_raised() -> None:
    from tests.conftest import free_port

    result = await generate(spec(f"ws://127.0.0.1:{free_port()}/x", connect_timeout_s=2.0), makers(2))
    assert result.session_errors["CONNECT_FAILED"] == 2 and result.tally.sent == 0


def test_only_loopback_targets_are_allowed() -> None:
    require_loopback("ws://127.0.0.1:8000/x")
    require_loopback("ws://localhost:8000/x")
    require_loopback("ws://[::1]:8000/x")
    with pytest.raises(ValueError, match="loopback only"):
        require_loopback("ws://10.1.2.3:8000/x")


def test_load_spec_rejects_impossible_shapes() -> None:
    with pytest.raises(ValueError, match="sessions"):
        LoadSpec("ws://127.0.0.1:1/x", 0)
    with pytest.raises(ValueError, match="fps"):
        LoadSpec("ws://127.0.0.1:1/x", 1, mode=Mode.OPEN, fps=0)


async def test_one_frame_maker_is_needed_per_session() -> None:
    with pytest.raises(ValueError, match="one frame maker per session"):
        await generate(spec("ws://127.0.0.1:1/x", sessions=3), makers(2))


async def test_sessions_split_over_generator_processes_add_up(server: str) -> None:
    from framewire.bench.loadgen import generate_in_processes
    from framewire.bench.payload import _echo_check

    inputs = [{"image_url": b"\xff\xd8" + bytes(1000), "prompt": "p"} for _ in range(4)]
    result = await generate_in_processes(spec(f"{server}/echo", sessions=4), inputs, 2, check=_echo_check)
    t = result.tally
    assert result.processes == 2 and len(result.connect_ms) == 4
    # The scripted server's outputs carry no image, so the echo check marks every one bad:
    # proof that the check travelled to the children and ran there.
    assert t.sent > 20 and t.bad_outputs == t.sent and t.balanced()
    assert result.error_samples["BAD_OUTPUT"] == "output has no image bytes"


def test_merging_per_process_results_adds_counts_and_pools_latencies() -> None:
    from collections import Counter

    from framewire.bench.loadgen import LoadResult, merge
    from framewire.bench.stats import Tally

    def part(latency: float, errors: Counter[str]) -> LoadResult:
        return LoadResult(
            spec=LoadSpec("ws://127.0.0.1:1/x", 2),
            window_s=1.0,
            tally=Tally(sent=2, ok=2),
            latencies_ms=[latency, latency],
            timings={"queue_ms": [latency]},
            batch_sizes=Counter({1: 2}),
            received_in_window=2,
            send_lag_ms=[0.1],
            skipped_ticks=1,
            session_errors=errors,
            error_samples={code: "why" for code in errors},
            connect_ms=[1.0],
            client_cpu_s=0.5,
        )

    merged = merge([part(1.0, Counter()), part(2.0, Counter({"CLOSED_1011": 1}))], LoadSpec("ws://127.0.0.1:1/x", 4))
    assert merged.tally.sent == 4 and sorted(merged.latencies_ms) == [1.0, 1.0, 2.0, 2.0]
    assert merged.timings == {"queue_ms": [1.0, 2.0]} and merged.batch_sizes == {1: 4}
    assert merged.throughput_fps == 4.0 and merged.skipped_ticks == 2
    assert merged.session_errors == {"CLOSED_1011": 1} and merged.error_samples == {"CLOSED_1011": "why"}
    assert merged.processes == 2 and merged.client_cpu_fraction == 0.5  # each process used half a core


async def test_more_generator_processes_than_sessions_is_refused() -> None:
    from framewire.bench.loadgen import generate_in_processes

    with pytest.raises(ValueError, match="processes"):
        await generate_in_processes(spec("ws://127.0.0.1:1/x", sessions=2), [{}, {}], 3)
