"""Sync run, SSE streaming, output files and input URLs on the run surface (real socket)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from framewire.engine.api import App, InputError, endpoint
from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.conftest import live_server
from tests.gateway.queue_apps import PNG_HEADER, ImageApp, NanApp, SteppingApp


@pytest.fixture
def server() -> Iterator[str]:
    settings = Settings(max_fetch_bytes=4096, fetch_timeout_s=2, private_networks=True)  # URLs on 127.0.0.1
    with live_server(settings, [EchoApp(), SteppingApp(), ImageApp()]) as a:
        yield a


@pytest.fixture
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as c:
        yield c


async def sse(client: httpx.AsyncClient, path: str, body: Any) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    """POST and collect (event name, JSON data) pairs until the server ends the stream."""
    return await sse_with(client, path, body, {})


async def sse_with(
    client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str]
) -> tuple[httpx.Response, list[tuple[str, Any]]]:
    events: list[tuple[str, Any]] = []
    name = "message"
    async with client.stream("POST", path, json=body, headers={"accept": "text/event-stream", **headers}) as res:
        async for line in res.aiter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:])))
                name = "message"
    return res, events


async def test_sync_run_returns_the_output_directly(client: httpx.AsyncClient) -> None:
    res = await client.post("/framewire/echo", json={"prompt": "now", "image_url": "data:image/png;base64,AAEC"})
    assert res.status_code == 200 and res.headers["x-fal-request-id"]
    out = res.json()
    assert out["prompt"] == "now" and out["size_bytes"] == 3
    assert out["image"] == "data:application/octet-stream;base64,AAEC"  # bytes in JSON: a data URI
    assert out["timings"]["batch_size"] >= 1


async def test_sync_run_accepts_get_with_query_input(client: httpx.AsyncClient) -> None:
    res = await client.get("/framewire/echo", params={"prompt": "by query"})
    assert res.status_code == 200 and res.json()["prompt"] == "by query"


async def test_sync_run_errors_use_the_spec_shapes(client: httpx.AsyncClient) -> None:
    invalid = await client.post("/test/stepping", json={"steps": -1})
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "steps"]
    assert invalid.headers["x-fal-billable-units"] == "0"
    failed = await client.post("/test/stepping", json={"steps": 1, "fail": True})
    assert failed.status_code == 422 and failed.json()["error_type"] == "invalid_input"
    assert failed.headers["x-fal-error-type"] == "invalid_input"
    unknown = await client.post("/nobody/nothing/x", json={})
    assert unknown.status_code == 404 and unknown.json() == {"detail": "Path /nobody/nothing/x not found"}
    assert unknown.headers["x-fal-request-id"]


async def test_stream_sends_each_step_then_the_output_and_ends(client: httpx.AsyncClient) -> None:
    res, events = await sse(client, "/test/stepping/stream", {"steps": 4, "delay_ms": 20})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
    assert res.headers["x-fal-request-id"]
    datas = [data for _, data in events]
    assert [d["done"] for d in datas if d["preview"]] == [1, 2, 3, 4]
    assert datas[-1] == {"done": 4, "preview": False, "batch_size": 1}


async def test_stream_reports_a_failure_as_an_error_event(client: httpx.AsyncClient) -> None:
    _, events = await sse(client, "/test/stepping/stream", {"steps": 1, "fail": True})
    name, data = events[-1]
    assert name == "error" and data["error_type"] == "invalid_input"


async def test_stream_refuses_a_bad_input_before_streaming(client: httpx.AsyncClient) -> None:
    res = await client.post("/test/stepping/stream", json={"steps": "many"})
    assert res.status_code == 422 and res.headers["content-type"] == "application/json"


async def test_a_run_that_cannot_start_within_its_request_timeout_is_dropped_with_a_user_504(
    client: httpx.AsyncClient,
) -> None:
    busy = asyncio.create_task(client.post("/test/stepping", json={"steps": 1, "delay_ms": 1500}))
    await asyncio.sleep(0.3)  # the app is now busy with that batch; a new run waits for it
    waited = time.perf_counter()
    late = await client.post("/test/stepping", json={"steps": 1}, headers={"x-fal-request-timeout": "0.3"})
    assert late.status_code == 504 and time.perf_counter() - waited < 1.0
    assert late.headers["x-fal-request-timeout-type"] == "user"  # clients do not retry these
    assert late.headers["x-fal-error-type"] == "request_timeout" and late.headers["x-fal-request-id"]
    assert late.json()["error_type"] == "request_timeout" and "0.3 s" in late.json()["detail"]
    _, events = await sse_with(client, "/test/stepping/stream", {"steps": 1}, {"x-fal-request-timeout": "0.2"})
    assert events[-1][0] == "error" and events[-1][1]["error_type"] == "request_timeout"
    patient = await client.post("/test/stepping", json={"steps": 2}, headers={"x-fal-request-timeout": "30"})
    assert patient.status_code == 200 and patient.json()["done"] == 2  # started in time: runs to its end
    assert (await busy).status_code == 200
    assert (await client.post("/test/stepping", json={}, headers={"x-fal-request-timeout": "soon"})).status_code == 400
    assert (await client.post("/test/stepping", json={}, headers={"x-fal-request-timeout": "-1"})).status_code == 400


async def test_file_outputs_are_data_uris_in_sync_mode_and_stored_files_otherwise(client: httpx.AsyncClient) -> None:
    inline = (await client.post("/test/image", json={"color": 7, "sync_mode": True})).json()
    image = inline["images"][0]
    assert "content" not in image and image["width"] == 4
    assert image["url"].startswith("data:image/png;base64,")
    assert base64.b64decode(image["url"].split(",", 1)[1]) == PNG_HEADER + b"\x07" * 32
    stored = (await client.post("/test/image", json={"color": 9}, headers={"host": "cdn.example:1"})).json()
    url = stored["images"][0]["url"]
    assert url.startswith("http://cdn.example:1/files/")
    served = await client.get("/" + url.split("/", 3)[3])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert served.content == PNG_HEADER + b"\x09" * 32


async def test_input_urls_are_fetched_before_the_engine_sees_them(server: str, client: httpx.AsyncClient) -> None:
    upload = (await client.post("/files/upload", content=b"x" * 100, headers={"content-type": "image/jpeg"})).json()
    own = (await client.post("/test/image", json={"image_url": upload["access_url"]})).json()
    assert own["input_size"] == 100  # read from disk, as bytes (the field accepts bytes)
    # The same file through the network path: another host name for this server.
    other = upload["access_url"].replace("127.0.0.1", "localhost")
    fetched = (await client.post("/test/image", json={"image_url": other})).json()
    assert fetched["input_size"] == 100
    echo = (await client.post("/framewire/echo", json={"image_url": other})).json()
    assert echo["size_bytes"] == 100


async def test_input_url_failures_name_the_field(server: str, client: httpx.AsyncClient) -> None:
    port = server.rsplit(":", 1)[1]
    missing = await client.post("/test/image", json={"image_url": f"http://localhost:{port}/files/nothere"})
    assert missing.status_code == 422
    detail = missing.json()["detail"][0]
    assert detail["loc"] == ["body", "image_url"] and detail["type"] == "file_download_error"
    assert "HTTP 404" in detail["msg"]
    big = (await client.post("/files/upload", content=b"y" * 5000)).json()["access_url"]
    too_big = await client.post("/test/image", json={"image_url": big.replace("127.0.0.1", "localhost")})
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["type"] == "file_too_large"
    refused = await client.post("/test/image", json={"image_url": "http://127.0.0.1:9/nothing"})
    assert refused.status_code == 422 and refused.json()["error_type"] == "file_download_error"


async def test_by_default_input_urls_may_not_reach_this_machine_or_its_network() -> None:
    with live_server(Settings(), [ImageApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
            upload = (await client.post("/files/upload", content=b"x" * 10)).json()["access_url"]
            own = await client.post("/test/image", json={"image_url": upload})
            assert own.status_code == 200 and own.json()["input_size"] == 10  # this server's own files: from disk
            port = address.rsplit(":", 1)[1]
            for url in (f"http://localhost:{port}/v1/usage", "http://169.254.169.254/latest/meta-data/"):
                refused = await client.post("/test/image", json={"image_url": url})
                assert refused.status_code == 422 and refused.json()["error_type"] == "file_download_error"
                assert "not a public address" in refused.json()["detail"][0]["msg"]


async def test_a_client_leaving_the_stream_stops_the_work() -> None:
    app = SteppingApp()
    with live_server(Settings(), [app]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
            async with client.stream("POST", "/test/stepping/stream", json={"steps": 500, "delay_ms": 10}) as res:
                async for line in res.aiter_lines():
                    if line.startswith("data:"):
                        break  # one preview, then hang up
            assert await asyncio.to_thread(app.stopped_early.wait, 5)


async def test_an_unhandled_gateway_error_is_a_json_500_with_a_request_id() -> None:
    with live_server(Settings(), [NanApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as client:
            fine = await client.post("/test/nan", json={})
            broken = await client.post("/test/nan", json={"nan": True})
    assert fine.json() == {"value": 1.5}
    assert broken.status_code == 500 and broken.json() == {"detail": "Internal Server Error"}
    assert broken.headers["x-fal-request-id"] and broken.headers["x-fal-error-type"] == "internal_error"


async def test_a_sync_run_whose_client_leaves_stops_and_is_metered_as_cancelled(tmp_path: Any) -> None:
    """Nobody waits for the answer: the app is told and stops early; usage says cancelled, not ok."""
    stepping = SteppingApp()
    settings = Settings(data_dir=str(tmp_path), usage_flush_interval_s=0.1)
    with live_server(settings, [stepping]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post("/test/stepping", json={"steps": 400, "delay_ms": 50}, timeout=0.5)  # 20 s of work
            assert await asyncio.to_thread(stepping.stopped_early.wait, 5)
            started = time.monotonic()
            res = await c.post("/test/stepping", json={"steps": 1})
            assert res.status_code == 200 and time.monotonic() - started < 3  # the app is free again
            await asyncio.sleep(0.5)
            usage = (await c.get("/v1/usage", params={"granularity": "total", "app": "test/stepping"})).json()
    statuses = usage["totals"]["statuses"]
    assert statuses == {"request_cancelled": 1, "ok": 1}, usage


class _GuardedIn(BaseModel):
    cost: int = 0


class _GuardedApp(App):
    """Refuses inputs over a budget when they arrive (``admit``), as the diffusion apps do."""

    app_id = "test/guarded"

    def __init__(self) -> None:
        self.ran = 0

    def admit(self, path: str, inp: BaseModel) -> None:
        if getattr(inp, "cost", 0) > 10:
            raise InputError("this input costs too much (--limit)", code="OVER_BUDGET")

    @endpoint("/")
    def run(self, inputs: list[_GuardedIn]) -> list[_GuardedIn]:
        self.ran += len(inputs)
        return inputs


async def test_an_input_refused_on_arrival_is_its_callers_error_on_every_surface(tmp_path: Any) -> None:
    app = _GuardedApp()
    with live_server(Settings(data_dir=str(tmp_path)), [app]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as c:
            run = await c.post("/test/guarded", json={"cost": 11})
            assert run.status_code == 422 and run.json()["error_type"] == "over_budget"
            assert "--limit" in run.json()["detail"]
            _, events = await sse(c, "/test/guarded/stream", {"cost": 11})
            assert events[-1][0] == "error" and events[-1][1]["error_type"] == "over_budget"
            queue = httpx.AsyncClient(base_url=f"http://{address}", headers={"host": "queue.localhost"}, timeout=10)
            async with queue:
                job = (await queue.post("/test/guarded", json={"cost": 11})).json()
                while (status := (await queue.get(local_path(job["status_url"]))).json())["status"] != "COMPLETED":
                    await asyncio.sleep(0.05)
                assert status["error_type"] == "over_budget"
            assert (await c.post("/test/guarded", json={"cost": 1})).status_code == 200
    assert app.ran == 1


def local_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]
