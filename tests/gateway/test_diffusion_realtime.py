"""Realtime sessions through the real gateway, answered by the tiny LCM model."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import websockets
from PIL import Image

from framewire.engine.apps.lcm import LcmApp
from framewire.engine.config import DiffusionConfig
from framewire.gateway.settings import Settings
from tests.conftest import live_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from framewire.engine.weights import init_weights

    folder = init_weights("tiny", tmp_path_factory.mktemp("weights") / "tiny")
    config = DiffusionConfig(weights=str(folder), device="cpu", warmup_sizes=((64, 64),), cache_dir=Path(folder).parent)
    with live_server(Settings(), [LcmApp(config)]) as address:
        yield address


def sketch_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 80, 3), dtype=np.uint8)  # not the output size
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_sessions_get_real_jpegs_from_the_model_and_share_batches(server: str) -> None:
    async def session(i: int) -> list[dict[str, object]]:
        outs = []
        async with websockets.connect(f"ws://{server}/fal-ai/lcm-sd15-i2i/realtime") as ws:
            for k in range(3):
                frame = {
                    "prompt": f"a sketch {i}",
                    "image_url": sketch_jpeg(10 * i + k),
                    "strength": 0.6,
                    "num_inference_steps": 2,
                    "seed": i,
                    "image_size": {"width": 64, "height": 64},
                    "request_id": f"{i}-{k}",
                }
                await ws.send(msgpack.packb(frame, use_bin_type=True))
                outs.append(msgpack.unpackb(await ws.recv(), raw=False))
        return outs

    results = await asyncio.gather(*(session(i) for i in range(4)))
    for i, outs in enumerate(results):
        assert [o["request_id"] for o in outs] == [f"{i}-{k}" for k in range(3)]
        for out in outs:
            image = out["images"][0]
            assert image["content_type"] == "image/jpeg" and (image["width"], image["height"]) == (64, 64)
            assert Image.open(io.BytesIO(image["content"])).size == (64, 64)
            assert out["seed"] == i and out["has_nsfw_concepts"] == [False]
            assert {"queue_ms", "inference_ms", "batch_size", "generate_ms"} <= set(out["timings"])
    assert max(o["timings"]["batch_size"] for outs in results for o in outs) > 1


async def test_an_undecodable_frame_gets_an_error_and_the_session_goes_on(server: str) -> None:
    async with websockets.connect(f"ws://{server}/framewire/lcm/realtime") as ws:
        size = {"width": 64, "height": 64}
        await ws.send(msgpack.packb({"prompt": "x", "image_url": b"garbage", "image_size": size, "request_id": "bad"}))
        error = json.loads(await ws.recv())
        assert error["type"] == "x-fal-error" and error["error"] == "INVALID_INPUT" and error["request_id"] == "bad"
        assert "image_url" in error["reason"]
        await ws.send(msgpack.packb({"prompt": "x", "num_inference_steps": 1, "image_size": size, "request_id": "ok"}))
        out = msgpack.unpackb(await ws.recv(), raw=False)
        assert out["request_id"] == "ok" and out["images"][0]["content"][:2] == b"\xff\xd8"


async def test_live_image_to_image_from_a_camera(server: str) -> None:
    from framewire.bench.video_client import VideoClient

    # The warmed size: small and quick on a CPU.
    params = {
        "prompt": "a watercolour",
        "strength": 0.6,
        "num_inference_steps": 2,
        "image_size": {"width": 64, "height": 64},
    }
    session = VideoClient(f"http://{server}", "framewire/lcm", params=params, fps=10.0)
    await session.start()
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(session.frame_events()) < 3:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        session.send({"prompt": "an oil painting"})
        while not any(m.get("type") == "params" for m in session.messages):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    finally:
        await session.close()
    events = session.frame_events()
    assert all((e["width"], e["height"]) == (64, 64) and e["batch_size"] >= 1 for e in events)
    assert all({"generate_ms", "prepare_ms"} <= set(e) for e in events)
    assert session.received and (session.received[0].width, session.received[0].height) == (64, 64)
