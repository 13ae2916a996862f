from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from framewire.engine.api import (
    App,
    AppRegistry,
    EngineFault,
    EngineUnavailable,
    FrameIdentity,
    FrameResult,
    Progress,
    Stages,
    endpoint,
    realtime,
)
from framewire.engine.apps.echo import EchoApp, EchoInput
from framewire.engine.host import BatchRecord, LocalEngine
from tests.conftest import BatchingApp, SlowIn
from tests.gateway.queue_apps import StepIn, SteppingApp


async def test_frames_from_many_streams_share_batches_and_keep_order(batching_app: BatchingApp) -> None:
    engine = LocalEngine(AppRegistry([batching_app]))
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    results: dict[int, list[FrameResult]] = {i: [] for i in range(8)}
    streams = [engine.open_stream(ep, 4, results[i].append) for i in range(8)]
    # A slow first batch lets the others pile up, as frames do behind a busy GPU.
    engine.submit(streams[0], SlowIn(n=0, delay_ms=150), tag=("s0", 0))
    await asyncio.sleep(0.05)
    for i, stream in enumerate(streams):
        for k in (1, 2):
            engine.submit(stream, SlowIn(n=100 * i + k), tag=(i, k))
    deadline = time.monotonic() + 5
    while sum(len(r) for r in results.values()) < 17 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await engine.stop()
    assert sum(len(r) for r in results.values()) == 17
    assert max(len(b) for b in batching_app.batches) > 1
    assert all(len(b) <= 8 for b in batching_app.batches)
    for i in range(1, 8):
        assert [r.output.n for r in results[i]] == [100 * i + 1, 100 * i + 2]  # type: ignore[union-attr]
        assert [r.tag for r in results[i]] == [(i, 1), (i, 2)]


async def test_a_full_stream_drops_its_oldest_pending_frame(batching_app: BatchingApp) -> None:
    engine = LocalEngine(AppRegistry([batching_app]))
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    got: list[FrameResult] = []
    stream = engine.open_stream(ep, 1, got.append)
    engine.submit(stream, SlowIn(n=0, delay_ms=150), tag=0)
    await asyncio.sleep(0.05)  # frame 0 is running; 1, 2, 3 compete for one slot
    dropped = [engine.submit(stream, SlowIn(n=n), tag=n) for n in (1, 2, 3)]
    assert dropped == [None, 1, 2]
    while len(got) < 2:
        await asyncio.sleep(0.01)
    await engine.stop()
    assert [r.tag for r in got] == [0, 3]
    assert stream.dropped == 2


async def test_a_failing_batch_reports_errors_and_the_worker_goes_on(batching_app: BatchingApp) -> None:
    engine = LocalEngine(AppRegistry([batching_app]))
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    bad = await engine.call(ep, SlowIn(n=-1))
    good = await engine.call(ep, SlowIn(n=5))
    await engine.stop()
    assert bad.error is not None and bad.error.code == "INTERNAL_ERROR"
    assert "RuntimeError" in bad.error.reason and "negative" not in bad.error.reason
    assert good.output is not None and good.output.n == 5  # type: ignore[attr-defined]


async def test_per_input_errors_reach_only_their_caller() -> None:
    engine = LocalEngine(AppRegistry([EchoApp()]))
    await engine.start()
    ep = engine.registry.resolve("framewire/echo")
    bad, good = await asyncio.gather(
        # Validation refuses this text; built without it, it reaches the app, which refuses it alone.
        engine.call(ep, EchoInput.model_construct(image_url="data:image/jpeg;base64,@@@")),
        engine.call(ep, EchoInput(image_url=b"abc")),
    )
    await engine.stop()
    assert bad.error is not None and bad.error.code == "INVALID_INPUT" and "base64" in bad.error.reason
    assert good.output is not None and good.output.image == b"abc"  # type: ignore[attr-defined]


async def test_stop_fails_pending_frames_as_unavailable(batching_app: BatchingApp) -> None:
    engine = LocalEngine(AppRegistry([batching_app]))
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    got: list[FrameResult] = []
    stream = engine.open_stream(ep, 4, got.append)
    engine.submit(stream, SlowIn(n=0, delay_ms=200), tag=0)
    await asyncio.sleep(0.05)
    engine.submit(stream, SlowIn(n=1), tag=1)
    await engine.stop()
    await asyncio.sleep(0.05)  # results are delivered through the loop
    by_tag = {r.tag: r for r in got}
    assert by_tag[0].output is not None  # the running batch finished
    assert isinstance(by_tag[1].error, EngineUnavailable)
    with pytest.raises(EngineUnavailable):
        engine.submit(stream, SlowIn(n=2), tag=2)


async def test_setup_failure_is_reported_by_start() -> None:
    class Broken(EchoApp):
        app_id = "test/broken"

        def setup(self) -> None:
            raise OSError("weights not found at /nowhere")

    engine = LocalEngine(AppRegistry([Broken()]))
    with pytest.raises(RuntimeError, match="setup of app 'test/broken' failed: weights not found"):
        await engine.start()


async def test_batch_observer_sees_every_batch(batching_app: BatchingApp) -> None:
    records: list[BatchRecord] = []
    engine = LocalEngine(AppRegistry([batching_app]), on_batch=records.append)
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    await engine.call(ep, SlowIn(n=1))
    await engine.stop()
    assert [(r.endpoint_key, r.size, r.failed) for r in records] == [("test/batching/realtime", 1, False)]


async def test_progress_reaches_only_callers_who_listen() -> None:
    app = SteppingApp()
    engine = LocalEngine(AppRegistry([app]))
    await engine.start()
    ep = engine.registry.resolve("test/stepping")
    seen: list[int] = []
    results = await asyncio.gather(
        engine.call(ep, StepIn(steps=3), on_progress=lambda p: seen.append(p.done)),  # type: ignore[attr-defined]
        engine.call(ep, StepIn(steps=2)),
    )
    await engine.stop()
    assert seen == [1, 2, 3]
    assert [r.output.done for r in results] == [3, 2]  # type: ignore[union-attr]
    assert sorted(app.wanted) == [False, True]  # whether the calls shared a batch or not


async def test_cancelling_a_queued_call_removes_it_and_a_running_one_is_told() -> None:
    app = SteppingApp()
    engine = LocalEngine(AppRegistry([app]))
    await engine.start()
    ep = engine.registry.resolve("test/stepping")
    running = asyncio.create_task(engine.call(ep, StepIn(steps=20, delay_ms=20)))
    await asyncio.sleep(0.1)  # now running
    queued = asyncio.create_task(engine.call(ep, StepIn(steps=1)))
    await asyncio.sleep(0.01)
    queued.cancel()
    running.cancel()
    for task in (queued, running):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await asyncio.to_thread(app.stopped_early.wait, 5)
    worker = engine.workers()[0]
    assert worker.schedulers[ep].pending == 0
    await engine.stop()


async def test_batch_size_cap_limits_batches_below_the_apps_own_maximum(batching_app: BatchingApp) -> None:
    engine = LocalEngine(AppRegistry([batching_app]), max_batch_size_cap=3)
    await engine.start()
    ep = engine.registry.resolve("test/batching", realtime=True)
    got: list[FrameResult] = []
    streams = [engine.open_stream(ep, 4, got.append) for _ in range(8)]
    engine.submit(streams[0], SlowIn(n=0, delay_ms=100), tag=0)
    await asyncio.sleep(0.03)  # the rest pile up behind the running batch
    for i, stream in enumerate(streams):
        engine.submit(stream, SlowIn(n=i + 1), tag=i + 1)
    deadline = time.monotonic() + 5
    while len(got) < 9 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await engine.stop()
    assert len(got) == 9
    assert max(len(b) for b in batching_app.batches) == 3  # 8 waiting frames, the app allows 8, the cap says 3


def test_batch_size_cap_below_one_is_refused(batching_app: BatchingApp) -> None:
    with pytest.raises(ValueError, match="max_batch_size_cap"):
        LocalEngine(AppRegistry([batching_app]), max_batch_size_cap=0)


class FaultyApp(App):
    """Fails with a fault on n < 0 (as a sticky device error would); counts setups."""

    app_id = "test/faulty"

    def __init__(self) -> None:
        self.setups = 0
        self.teardowns = 0

    def setup(self) -> None:
        self.setups += 1

    def teardown(self) -> None:
        self.teardowns += 1

    @endpoint("/", max_batch_size=4)
    def run(self, inputs: list[SlowIn]) -> list[SlowIn]:
        if any(i.n < 0 for i in inputs):
            raise EngineFault("CUDA error: an illegal memory access was encountered (simulated)")
        return [SlowIn(n=i.n + self.setups * 100) for i in inputs]


async def test_a_faulted_app_is_restarted_and_serves_again() -> None:
    app = FaultyApp()
    engine = LocalEngine(AppRegistry([app]))
    await engine.start()
    ep = engine.registry.resolve("test/faulty")
    bad = await engine.call(ep, SlowIn(n=-1))
    good = await engine.call(ep, SlowIn(n=1))
    worker = engine.workers()[0]
    await engine.stop()
    assert bad.error is not None and bad.error.code == "ENGINE_RESTARTING" and "illegal memory" in bad.error.reason
    assert good.output is not None and good.output.n == 201  # type: ignore[attr-defined]  # ran on the rebuilt app
    assert app.setups == 2 and app.teardowns == 2 and worker.restarts == 1


async def test_the_engine_is_not_ready_while_an_app_restarts() -> None:
    release = threading.Event()

    class SlowRestart(FaultyApp):
        def setup(self) -> None:
            super().setup()
            if self.setups > 1:
                release.wait(5)

    engine = LocalEngine(AppRegistry([SlowRestart()]))
    await engine.start()
    ep = engine.registry.resolve("test/faulty")
    assert engine.ready
    await engine.call(ep, SlowIn(n=-1))
    await asyncio.sleep(0.05)
    during = engine.ready
    release.set()
    after = await engine.call(ep, SlowIn(n=2))
    assert not during and engine.ready and after.output is not None
    await engine.stop()


# -- stages, overlap, unchanged frames, targets ---------------------------------------


class PicIn(BaseModel):
    image: bytes = b""
    label: str = ""
    seed: int | None = 1
    block: bool = False  # the run stage waits for the next frame's prepare; finish for the next run
    hold: bool = False  # the finish stage waits until the test lets it go


class PicOut(BaseModel):
    image: bytes
    label: str
    timings: dict[str, float] = {}


class StagedApp(App):
    """A torch-free app in three stages that records which thread ran what."""

    app_id = "test/staged"

    def __init__(self) -> None:
        self.runs = 0
        self.threads: dict[str, set[str]] = {"prepare": set(), "run": set(), "finish": set()}
        self.prepared = threading.Event()  # a later frame was prepared
        self.running = threading.Event()  # a run stage started
        self.run_started_later = threading.Event()  # a second run stage started
        self.waited: dict[str, bool] = {}
        self.let_finish = threading.Event()

    @realtime("/realtime", buffering=4, max_batch_size=4)
    def run(self, inputs: list[PicIn]) -> list[PicOut]:
        return self.finish(self.run_stage(inputs, [self.prepare(i) for i in inputs], Progress()), Progress())

    def stages(self, path: str) -> Stages:
        return Stages(self.prepare, self.run_stage, self.finish)  # type: ignore[arg-type]

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        assert isinstance(inp, PicIn)
        if inp.seed is None:
            return None
        return FrameIdentity(f"{inp.label}|{inp.seed}".encode(), inp.image)

    def prepare(self, inp: PicIn) -> bytes:
        self.threads["prepare"].add(threading.current_thread().name)
        if self.running.is_set():
            self.prepared.set()
        return inp.image[::-1]

    def run_stage(self, inputs: list[PicIn], prepared: list[bytes], progress: Progress) -> list[tuple[PicIn, bytes]]:
        self.threads["run"].add(threading.current_thread().name)
        self.runs += 1
        if self.running.is_set():
            self.run_started_later.set()
        self.running.set()
        if any(i.block for i in inputs):
            self.waited["prepare"] = self.prepared.wait(5)
        return list(zip(inputs, prepared, strict=True))

    def finish(self, ran: list[tuple[PicIn, bytes]], progress: Progress) -> list[PicOut]:
        self.threads["finish"].add(threading.current_thread().name)
        if any(i.block for i, _ in ran):
            self.waited["run"] = self.run_started_later.wait(5)
        if any(i.hold for i, _ in ran):
            self.waited["finish"] = self.let_finish.wait(5)
        return [PicOut(image=data[::-1], label=i.label) for i, data in ran]


async def _results(got: list[FrameResult], count: int) -> None:
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert len(got) >= count, f"{len(got)} of {count} results"


async def _staged_stream(**options: Any) -> tuple[StagedApp, LocalEngine, Any, list[FrameResult]]:
    app = StagedApp()
    engine = LocalEngine(AppRegistry([app]))
    await engine.start()
    got: list[FrameResult] = []
    stream = engine.open_stream(engine.registry.resolve("test/staged", realtime=True), 4, got.append, **options)
    return app, engine, stream, got


async def _one_by_one(engine: LocalEngine, stream: Any, got: list[FrameResult], frames: list[PicIn]) -> None:
    """Send each frame once the previous one is answered, then stop the engine."""
    for i, inp in enumerate(frames):
        engine.submit(stream, inp, tag=i)
        await _results(got, i + 1)
    await engine.stop()


async def test_prepare_and_finish_run_on_the_pool_while_the_device_thread_runs_the_next_batch() -> None:
    app, engine, stream, got = await _staged_stream()
    engine.submit(stream, PicIn(image=b"first", label="a", block=True), tag=1)
    assert await asyncio.to_thread(app.running.wait, 5)
    # Batch 1 now waits in its run stage until this frame is prepared (off the device thread);
    # its finish then waits until batch 2's run stage starts (so it overlaps that run).
    engine.submit(stream, PicIn(image=b"second", label="b"), tag=2)
    await _results(got, 2)
    await engine.stop()
    assert app.waited == {"prepare": True, "run": True}
    assert [r.tag for r in got] == [1, 2]  # results in the order the batches were formed
    assert [r.output.image for r in got] == [b"first", b"second"]  # type: ignore[union-attr]
    assert app.threads["run"] == {"engine:test/staged"}
    assert all(name.startswith("engine-cpu:test/staged") for name in app.threads["prepare"] | app.threads["finish"])


async def test_an_unchanged_frame_is_answered_with_the_last_output_without_running() -> None:
    app, engine, stream, got = await _staged_stream()
    frames = [
        PicIn(image=b"canvas", label="a"),
        PicIn(image=b"canvas", label="a"),  # unchanged: skipped
        PicIn(image=b"canvas", label="b"),  # a parameter changed: runs
        PicIn(image=b"canvas", label="b"),  # unchanged again: skipped
        PicIn(image=b"canvas", label="b", seed=None),  # no identity (a random seed): runs
        PicIn(image=b"canvas", label="b", seed=None),
    ]
    await _one_by_one(engine, stream, got, frames)
    assert [r.skipped for r in got] == ["", "exact", "", "exact", "", ""]
    assert app.runs == 4
    assert got[1].output is got[0].output and got[3].output is got[2].output  # the very same output
    assert got[1].batch_size == 0 and got[1].inference_ms == 0.0 and got[1].timings["skipped"] == "exact"
    assert [r.output.label for r in got] == ["a", "a", "b", "b", "b", "b"]  # type: ignore[union-attr]


async def test_a_repeat_of_a_frame_still_finishing_waits_for_that_output_in_order() -> None:
    app, engine, stream, got = await _staged_stream()
    frame = PicIn(image=b"canvas", label="a", hold=True)
    engine.submit(stream, frame, tag=1)
    assert await asyncio.to_thread(app.running.wait, 5)
    await asyncio.sleep(0.05)  # batch 1 ran and now waits in its finish stage (encoding)
    engine.submit(stream, frame, tag=2)  # the same input: answered with batch 1's output, once it exists
    await asyncio.sleep(0.05)
    assert got == []
    app.let_finish.set()
    await _results(got, 2)
    await engine.stop()
    assert [(r.tag, r.skipped) for r in got] == [(1, ""), (2, "exact")]
    assert got[1].output is got[0].output and app.runs == 1 and app.waited["finish"]


def _jpeg_with_dot(x: int) -> bytes:
    import io

    from PIL import Image

    img = Image.new("RGB", (64, 64), (90, 120, 150))
    img.putpixel((x, 10), (255, 255, 255))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue()


@pytest.mark.parametrize(("threshold", "expected"), [(0.0, ["", "", ""]), (0.02, ["", "similar", ""])])
async def test_a_similarity_threshold_skips_nearly_unchanged_images(threshold: float, expected: list[str]) -> None:
    _, engine, stream, got = await _staged_stream(similarity_threshold=threshold)
    frames = [
        PicIn(image=_jpeg_with_dot(10), label="a"),
        PicIn(image=_jpeg_with_dot(11), label="a"),  # one pixel moved
        PicIn(image=_jpeg_with_dot(11), label="c"),  # a parameter changed: never similar
    ]
    await _one_by_one(engine, stream, got, frames)
    assert [r.skipped for r in got] == expected


async def test_frames_report_their_target_and_degradation_in_timings() -> None:
    from framewire.bench.fake_engine import LadderSteps, StepsInput
    from framewire.engine.governor import GovernorSettings

    app = LadderSteps()
    engine = LocalEngine(AppRegistry([app]), governor=GovernorSettings(min_samples=1, settle_s=0.0))
    await engine.start()
    ep = engine.registry.resolve("bench/steps", realtime=True)
    got: list[FrameResult] = []
    stream = engine.open_stream(ep, 2, got.append, target_latency_ms=1.0)  # the fill window alone misses it
    for i in range(20):  # the level is reconsidered at most every 50 ms
        engine.submit(stream, StepsInput(num_inference_steps=4), tag=i)
        await _results(got, i + 1)
        if got[-1].degraded:
            break
        await asyncio.sleep(0.06)
    await engine.stop()
    first, second = got[0], got[-1]
    assert first.timings["target_latency_ms"] == 1.0 and first.timings["target_met"] is False
    assert first.degraded == 0 and "degraded" not in first.timings
    assert second.degraded >= 1 and second.output.num_inference_steps <= 2  # type: ignore[union-attr]
    assert second.timings["degraded"] == second.degraded
    assert second.degradation.startswith("num_inference_steps 4→")


async def test_a_stream_with_an_out_of_range_target_is_refused() -> None:
    engine = LocalEngine(AppRegistry([StagedApp()]))
    await engine.start()
    ep = engine.registry.resolve("test/staged", realtime=True)
    with pytest.raises(ValueError, match="target_latency_ms"):
        engine.open_stream(ep, 2, lambda r: None, target_latency_ms=0.0)
    with pytest.raises(ValueError, match="similarity_threshold"):
        engine.open_stream(ep, 2, lambda r: None, similarity_threshold=0.9)
    await engine.stop()
