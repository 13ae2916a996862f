"""Live video sessions against a real server on 127.0.0.1, driven by an aiortc client.

The client's camera is synthetic (:mod:`framewire.bench.video_client`): each frame carries its
number in big black and white blocks, so an output matched to its input by timestamp can be
checked against the pixels it came back with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, Field

from framewire import cli
from framewire.bench.video_client import CODE_BITS, StartRefused, VideoClient
from framewire.engine.api import App, VideoFrame, video
from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp, live_server

KEY = "k1:s3cret"
SECRET = "token-secret-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Key {KEY}"}
MASK = (1 << CODE_BITS) - 1


class TaggedIn(BaseModel):
    frame: VideoFrame
    tag: str = Field("", max_length=20)


class TaggedOut(BaseModel):
    frame: VideoFrame


class RecordingVideoApp(App):
    """Records the session tags of every batch; each batch takes 60 ms (a stand-in for a model)."""

    app_id = "test/video"

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    @video("/video", max_side=320, multiple_of=8, max_batch_size=4, max_queue_delay_ms=40)
    def run(self, inputs: list[TaggedIn]) -> list[TaggedOut]:
        self.batches.append([i.tag for i in inputs])
        time.sleep(0.06)
        return [TaggedOut(frame=i.frame) for i in inputs]


@pytest.fixture(scope="module")
def recorder() -> RecordingVideoApp:
    return RecordingVideoApp()


@pytest.fixture(scope="module")
def server(recorder: RecordingVideoApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("video-data")
    settings = Settings(auth=True, api_keys=(KEY,), token_secret=SECRET, data_dir=str(data), max_video_sessions=4)
    with live_server(settings, [EchoApp(), recorder, BatchingApp()]) as address:
        yield address, data


def client(address: str, app: str = "framewire/echo", **kw: object) -> VideoClient:
    return VideoClient(f"http://{address}", app, headers=AUTH, **kw)  # type: ignore[arg-type]


async def until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_camera_frames_come_back_matched_by_timestamp(server: tuple[str, Path]) -> None:
    address, _ = server
    session = client(address)
    answer = await session.start()
    try:
        assert answer["video_codec"] == "video/VP8" and answer["session_id"]
        await until(lambda: len(session.matched()) >= 30)
        matched = session.matched()
        assert all(m.code == m.index for m in matched), [(m.index, m.code) for m in matched if m.code != m.index]
        assert len({m.index for m in matched}) == len(matched)  # each output once, in order
        assert [m.index for m in matched] == sorted(m.index for m in matched)
        events = [m.event for m in matched if m.event is not None]
        assert events and all(e["params_version"] == 1 and e["width"] == 320 for e in events)
        assert all({"server_ms", "queue_ms", "inference_ms", "batch_size"} <= set(e) for e in events)
        latencies = sorted(m.latency_ms for m in matched)
        print(f"glass-to-glass over loopback: p50 {latencies[len(latencies) // 2]:.1f} ms, max {latencies[-1]:.1f} ms")
        assert latencies[0] > 0 and latencies[-1] < 5000  # measured, not judged: a shared machine
    finally:
        await session.close()
    await until(lambda: session.ended.is_set())
    end = session.events[-1]
    assert end["type"] == "end" and end["frames_out"] >= 30 and end["reason"]


async def test_two_sessions_share_one_handler_call(server: tuple[str, Path], recorder: RecordingVideoApp) -> None:
    address, _ = server
    recorder.batches.clear()
    a, b = client(address, "test/video", params={"tag": "a"}), client(address, "test/video", params={"tag": "b"})
    await asyncio.gather(a.start(), b.start())
    try:
        await until(lambda: len(a.received) >= 5 and len(b.received) >= 5)
    finally:
        await asyncio.gather(a.close(), b.close())
    mixed = [batch for batch in recorder.batches if {"a", "b"} <= set(batch)]
    assert mixed, recorder.batches
    assert all(len(batch) == len(set(batch)) for batch in recorder.batches)  # one frame per session per batch
    assert max(e["batch_size"] for e in a.frame_events()) == 2


async def test_a_parameter_change_applies_from_the_next_frame(server: tuple[str, Path]) -> None:
    address, _ = server
    session = client(address)
    await session.start()
    try:
        await until(lambda: len(session.matched()) >= 10)
        session.send({"delay_ms": -5})  # refused: nothing changes
        session.send({"type": "params", "invert": True})
        await until(lambda: any(m.get("type") == "params" for m in session.messages))
        refused = [m for m in session.messages if m.get("type") == "error"]
        assert refused and refused[0]["error"] == "VALIDATION_ERROR" and "delay_ms" in refused[0]["reason"]
        ack = next(m for m in session.messages if m.get("type") == "params")
        assert ack["version"] == 2 and ack["params"] == {"invert": True}
        await until(lambda: sum(1 for m in session.matched() if m.input_pts > ack["after_pts"]) >= 10)
        session.send({"type": "ping", "ts": 123})
        await until(lambda: any(m.get("type") == "pong" for m in session.messages))
    finally:
        await session.close()
    for m in session.matched():
        after = m.input_pts > ack["after_pts"]
        assert m.event is None or m.event["params_version"] == (2 if after else 1)
        assert m.code == ((~m.index & MASK) if after else m.index), (m.index, m.code, after)
    pong = next(m for m in session.messages if m.get("type") == "pong")
    assert pong["ts"] == 123 and pong["server_time_ms"] > 0


async def test_clear_refusals(server: tuple[str, Path]) -> None:
    address, _ = server
    base = f"http://{address}"

    async def refused(app: str = "framewire/echo", **kw: object) -> StartRefused:
        session = VideoClient(base, app, **kw)  # type: ignore[arg-type]
        with pytest.raises(StartRefused) as err:
            await session.start()
        await session.close()
        return err.value

    no_key = await refused()
    assert no_key.status == 401 and "missing credentials" in no_key.body["detail"]
    wrong = await refused(headers={"Authorization": "Key k1:wrong"})
    assert wrong.status == 401 and wrong.body["detail"] == "invalid API key"
    async with httpx.AsyncClient() as http:
        token = (await http.post(f"{base}/tokens/", json={"allowed_apps": ["batching"]}, headers=AUTH)).json()
        scoped = await refused(query={"fal_jwt_token": token})
        assert scoped.status == 403
        no_video = await refused("test/batching", headers=AUTH)
        assert no_video.status == 404 and no_video.body["error_type"] == "video_not_supported"
        assert "declares no @video endpoint" in no_video.body["detail"]
        bad_params = await refused(headers=AUTH, params={"invert": "sideways"})
        assert bad_params.status == 422 and bad_params.body["detail"][0]["loc"][-1] == "invert"
        url = f"{base}/framewire/echo/start-session"
        garbage = await http.post(url, json={"sdp": "hello", "type": "offer"}, headers=AUTH)
        assert garbage.status_code == 400 and garbage.json()["error_type"] == "invalid_offer"
        assert "not SDP" in garbage.json()["detail"]
        audio_only = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n"
        no_track = await http.post(url, json={"offer": {"sdp": audio_only, "type": "offer"}}, headers=AUTH)
        assert no_track.status_code == 400 and "no video track" in no_track.json()["detail"]
        answer = await http.post(url, json={"sdp": audio_only, "type": "answer"}, headers=AUTH)
        assert answer.status_code == 400 and "must be 'offer'" in answer.json()["detail"]
        huge = await http.post(url, content=b"{" + b" " * 70_000 + b"}", headers=AUTH)
        assert huge.status_code == 413
        missing = await http.post(f"{base}/nobody/nothing/start-session", json={}, headers=AUTH)
        assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


async def test_sessions_are_metered_per_frame_and_per_second(server: tuple[str, Path]) -> None:
    address, _ = server
    session = client(address)
    await session.start()
    try:
        await until(lambda: len(session.received) >= 10)
    finally:
        await session.close()
    await until(lambda: session.ended.is_set())
    end = session.events[-1]
    async with httpx.AsyncClient() as http:
        usage = (await http.get(f"http://{address}/v1/usage?granularity=total&app=framewire/echo", headers=AUTH)).json()
    row = usage["time_series"][0]["results"][0]
    assert row["surfaces"].get("video", 0) >= end["frames_in"] > 0
    assert row["session_s"] >= 0.5 and row["statuses"]["ok"] >= end["frames_out"]


def test_video_through_an_edge_process_and_a_worker_process() -> None:
    from tests.cluster.processes import edge_process, worker_process

    async def run(port: int) -> list[int]:
        session = VideoClient(f"http://127.0.0.1:{port}", "framewire/echo")
        await session.start()
        try:
            await until(lambda: len(session.matched()) >= 10)
        finally:
            await session.close()
        return [m.code - m.index for m in session.matched()]

    with worker_process("w1") as (_, worker_port), edge_process([f"127.0.0.1:{worker_port}"]) as (_, port, _):
        assert set(asyncio.run(run(port))) == {0}


def test_the_usage_cli_shows_session_seconds(server: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, data = server
    assert cli.main(["usage", "--granularity", "total", "--json", "--data-dir", str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "session_s" in report["totals"]
