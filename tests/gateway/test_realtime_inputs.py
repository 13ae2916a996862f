"""Realtime input URLs go through the gateway's guarded fetcher, never the engine's batch."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import websockets
from PIL import Image

from framewire.engine.apps.echo import EchoApp
from framewire.engine.apps.lcm import LcmApp
from framewire.engine.config import DiffusionConfig
from framewire.gateway.settings import Settings
from tests.conftest import LocalHttp, live_server

BODY = b"\xff\xd8 the image \xff\xd9"


class Origin(LocalHttp):
    """A local HTTP server counting requests; ``delay_s`` before each answer."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.requests = 0
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                origin.requests += 1
                time.sleep(delay_s)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, "/img.jpg")


async def exchange(ws: Any, frames: list[dict[str, Any]], answers: int) -> list[Any]:
    for frame in frames:
        await ws.send(msgpack.packb(frame, use_bin_type=True))
    out = []
    for _ in range(answers):
        message = await asyncio.wait_for(ws.recv(), 10)
        out.append(json.loads(message) if isinstance(message, str) else msgpack.unpackb(message, raw=False))
    return out


async def test_a_private_address_is_refused_by_the_gateway_and_never_contacted() -> None:
    with Origin() as origin, live_server(Settings(), [EchoApp()]) as address:
        async with websockets.connect(f"ws://{address}/framewire/echo/realtime") as ws:
            error, after = await exchange(
                ws, [{"image_url": origin.url, "request_id": "a"}, {"prompt": "next", "request_id": "b"}], 2
            )
    assert error["error"] == "FILE_DOWNLOAD_ERROR" and error["request_id"] == "a"
    assert "not a public address" in error["reason"] and "--private-networks" in error["reason"]
    assert after["request_id"] == "b"  # the session goes on
    assert origin.requests == 0


async def test_a_url_is_fetched_before_the_app_sees_the_frame_and_order_is_kept() -> None:
    settings = Settings(private_networks=True)
    with Origin(delay_s=0.3) as origin, live_server(settings, [EchoApp()]) as address:
        async with websockets.connect(f"ws://{address}/framewire/echo/realtime?max_buffering=4") as ws:
            outs = await exchange(
                ws,
                [{"image_url": origin.url, "request_id": 1}, {"image_url": b"inline", "request_id": 2}],
                2,
            )
    assert [o["request_id"] for o in outs] == [1, 2]  # the inline frame waited for the fetched one
    assert outs[0]["image"] == BODY and outs[1]["image"] == b"inline"
    assert origin.requests == 1


async def test_frames_waiting_for_fetches_obey_latest_frame_wins() -> None:
    settings = Settings(private_networks=True)
    with Origin(delay_s=0.5) as origin, live_server(settings, [EchoApp()]) as address:
        async with websockets.connect(f"ws://{address}/framewire/echo/realtime?max_buffering=1") as ws:
            frames = [{"image_url": origin.url, "request_id": i} for i in range(3)]
            frames.append({"prompt": "last", "request_id": 3})
            outs = await exchange(ws, frames, 1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 1.5)
    assert [o["request_id"] for o in outs] == [3]


@pytest.fixture(scope="module")
def lcm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from framewire.engine.weights import init_weights

    folder = init_weights("tiny", tmp_path_factory.mktemp("weights") / "tiny")
    config = DiffusionConfig(weights=str(folder), device="cpu", warmup_sizes=((64, 64),), cache_dir=Path(folder).parent)
    settings = Settings(private_networks=True, fetch_timeout_s=4)
    with live_server(settings, [LcmApp(config)]) as address:
        yield address


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_a_url_that_never_answers_does_not_stall_other_sessions_batches(lcm_server: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/never.jpg"
    base = {"prompt": "x", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "seed": 1}
    with contextlib.closing(silent):
        async with (
            websockets.connect(f"ws://{lcm_server}/framewire/lcm/realtime") as stalled,
            websockets.connect(f"ws://{lcm_server}/framewire/lcm/realtime") as other,
        ):
            await stalled.send(msgpack.packb({**base, "image_url": url, "strength": 0.5, "request_id": "s"}))
            await asyncio.sleep(0.2)
            for i in range(3):
                started = time.monotonic()
                (out,) = await exchange(other, [{**base, "image_url": jpeg(), "strength": 0.5, "request_id": i}], 1)
                assert out["request_id"] == i and out["images"][0]["content"][:2] == b"\xff\xd8"
                assert time.monotonic() - started < 2.0  # not behind the 4 s fetch
            error = json.loads(await asyncio.wait_for(stalled.recv(), 10))
    assert error["error"] == "FILE_DOWNLOAD_ERROR" and "timed out after 4 s" in error["reason"]
