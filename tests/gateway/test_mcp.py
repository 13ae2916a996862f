"""MCP against a real `framewire serve`: the SDK's own client over Streamable HTTP, and over
stdio through `framewire mcp`, in both protocol eras (the initialize handshake and 2026-07-28).

The server runs the echo app, the LCM app on tiny random weights built here, and a test app
loaded with --app (its tools appear with no MCP code for it). Keys: an admin key given on the
command line, one key limited to the echo app, one limited to a request every 20 s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import numpy as np
import pytest
from mcp import Client, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from PIL import Image

from framewire import cli
from framewire.engine.apps.lcm import LcmApp
from framewire.engine.config import DiffusionConfig
from tests.conftest import ROOT, free_port, serve_process, wait_ready
from tests.gateway.queue_apps import StepIn

ADMIN = "admin:admin-secret"
MODES = ("legacy", "2026-07-28")
GENERAL = {"list_apps", "describe_app", "get_status", "get_result", "cancel_request", "upload_file"}
LCM_64 = {"prompt": "a red square", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "seed": 7}


@dataclass(frozen=True)
class Server:
    port: int
    echo_key: str
    echo_key_id: str
    slow_key: str
    slow_key_id: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


def _create_key(data_dir: Path, *args: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["keys", "create", "--json", "--data-dir", str(data_dir), *args]) == 0
    record: dict[str, Any] = json.loads(out.getvalue())
    return record


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from framewire.engine.weights import init_weights

    weights = init_weights("tiny", tmp_path_factory.mktemp("weights") / "tiny")
    data_dir = tmp_path_factory.mktemp("data")
    echo = _create_key(data_dir, "--name", "echo only", "--app", "framewire/echo")
    slow = _create_key(data_dir, "--name", "slow", "--requests-per-s", "0.05")
    args = (
        "--auth",
        "--api-key",
        ADMIN,
        "--data-dir",
        str(data_dir),
        "--builtin-apps",
        "echo,lcm",
        "--weights",
        f"lcm={weights}",
        "--warmup-sizes",
        "64x64",
        "--app",
        "tests.gateway.queue_apps:SteppingApp",
    )
    with serve_process(*args) as port:
        yield Server(port, echo["key"], echo["id"], slow["key"], slow["id"])


@contextlib.asynccontextmanager
async def over_http(url: str, key: str, mode: str, scheme: str = "Key") -> AsyncIterator[Client]:
    headers = {"Authorization": f"{scheme} {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


@contextlib.asynccontextmanager
async def over_stdio(url: str, key: str, mode: str) -> AsyncIterator[Client]:
    command = [*("-m", "framewire.cli", "mcp", "--url", url, "--key", key)]
    params = StdioServerParameters(command=sys.executable, args=command, cwd=str(ROOT))
    async with Client(params, mode=mode, read_timeout_seconds=60) as client:
        yield client


def jpeg_bytes(width: int = 40, height: int = 24) -> bytes:
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def images_of(result: types.CallToolResult) -> list[types.ImageContent]:
    return [c for c in result.content if isinstance(c, types.ImageContent)]


async def wait_completed(client: Client, request_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = await client.call_tool("get_status", {"request_id": request_id, "logs": True})
        assert not status.is_error, text_of(status)
        assert isinstance(status.structured_content, dict)
        if status.structured_content["status"] == "COMPLETED":
            return status.structured_content
        assert time.monotonic() < deadline, f"{request_id} did not complete: {status.structured_content}"
        await asyncio.sleep(0.1)


async def exercise_every_tool(client: Client) -> None:
    """Call each tool with the echo app and the tiny LCM app (and the --app test app); check each answer."""
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    app_tools = {f"{a}_{e}" for a in ("run", "submit") for e in ("framewire_echo", "framewire_lcm", "test_stepping")}
    assert GENERAL | app_tools | {"run_framewire_lcm_image-to-image"} <= set(tools)
    # Input schemas are the apps' own pydantic models, app by app.
    lcm_input = LcmApp(DiffusionConfig()).endpoints()[""].input_model
    assert tools["run_framewire_lcm"].input_schema == lcm_input.model_json_schema()
    assert tools["submit_test_stepping"].input_schema == StepIn.model_json_schema()
    assert tools["list_apps"].annotations is not None and tools["list_apps"].annotations.read_only_hint

    listed = await client.call_tool("list_apps", {})
    assert not listed.is_error and isinstance(listed.structured_content, dict)
    apps = {app["id"]: app for app in listed.structured_content["apps"]}
    assert set(apps) == {"framewire/echo", "framewire/lcm", "test/stepping"}
    assert apps["framewire/lcm"]["endpoints"][0]["run_tool"] == "run_framewire_lcm"

    described = await client.call_tool("describe_app", {"app_id": "fal-ai/fast-lcm-diffusion"})  # an alias
    assert not described.is_error and isinstance(described.structured_content, dict)
    endpoint = described.structured_content["endpoints"][0]
    assert endpoint["input_schema"]["properties"]["num_inference_steps"]["maximum"] == 8
    assert "images" in endpoint["output_schema"]["properties"]
    assert "ImageSize" in described.structured_content["components"]["schemas"]
    echo_described = await client.call_tool("describe_app", {"app_id": "framewire/echo"})
    assert isinstance(echo_described.structured_content, dict)
    [echo_endpoint] = echo_described.structured_content["endpoints"]
    assert (
        echo_endpoint["run_tool"] == "run_framewire_echo" and "delay_ms" in echo_endpoint["input_schema"]["properties"]
    )

    # upload_file → a URL that serves the bytes and that an app input takes.
    picture = jpeg_bytes()
    uploaded = await client.call_tool(
        "upload_file", {"data": base64.b64encode(picture).decode(), "file_name": "sketch.jpg"}
    )
    assert not uploaded.is_error and isinstance(uploaded.structured_content, dict)
    url = uploaded.structured_content["url"]
    assert uploaded.structured_content["content_type"] == "image/jpeg"
    assert httpx.get(url).content == picture

    echoed = await client.call_tool("run_framewire_echo", {"image_url": url, "prompt": "back"})
    assert not echoed.is_error, text_of(echoed)
    [image] = images_of(echoed)
    assert image.mime_type == "image/jpeg" and base64.b64decode(image.data) == picture
    assert image.data not in text_of(echoed) and "base64" not in text_of(echoed)
    assert isinstance(echoed.structured_content, dict) and echoed.structured_content["prompt"] == "back"

    drawn = await client.call_tool("run_framewire_lcm", LCM_64)
    assert not drawn.is_error, text_of(drawn)
    [image] = images_of(drawn)
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (64, 64)
    assert isinstance(drawn.structured_content, dict)
    stored = drawn.structured_content["images"][0]["url"]
    assert httpx.get(stored).content == base64.b64decode(image.data)  # the same image, also as a URL

    # The uploaded picture as the input image of the tiny LCM's image-to-image endpoint.
    repainted = await client.call_tool("run_framewire_lcm_image-to-image", {**LCM_64, "image_url": url})
    assert not repainted.is_error, text_of(repainted)
    [image] = images_of(repainted)
    assert Image.open(io.BytesIO(base64.b64decode(image.data))).size == (64, 64)

    # The queue: submit, follow, fetch; cancel a long job.
    submitted = await client.call_tool("submit_framewire_lcm", {**LCM_64, "seed": 8})
    assert not submitted.is_error and isinstance(submitted.structured_content, dict)
    request_id = submitted.structured_content["request_id"]
    assert submitted.structured_content["status"] == "IN_QUEUE"
    await wait_completed(client, request_id)
    fetched = await client.call_tool("get_result", {"request_id": request_id})
    assert not fetched.is_error and len(images_of(fetched)) == 1

    queued_echo = await client.call_tool("submit_framewire_echo", {"prompt": "queued", "image_url": url})
    assert isinstance(queued_echo.structured_content, dict)
    echo_id = queued_echo.structured_content["request_id"]
    assert (await wait_completed(client, echo_id)).get("error") is None
    echo_result = await client.call_tool("get_result", {"request_id": echo_id})
    [image] = images_of(echo_result)
    assert base64.b64decode(image.data) == picture and image.data not in text_of(echo_result)

    slow_echo = await client.call_tool("submit_framewire_echo", {"delay_ms": 1000})
    assert isinstance(slow_echo.structured_content, dict)
    slow_id = slow_echo.structured_content["request_id"]
    assert (await client.call_tool("cancel_request", {"request_id": slow_id})).structured_content == {
        "status": "CANCELLATION_REQUESTED",
        "request_id": slow_id,
    }
    assert (await wait_completed(client, slow_id))["error_type"] == "request_cancelled"

    long_job = await client.call_tool("submit_test_stepping", {"steps": 1000, "delay_ms": 50})
    assert isinstance(long_job.structured_content, dict)
    long_id = long_job.structured_content["request_id"]
    early = await client.call_tool("get_result", {"request_id": long_id})
    assert early.is_error and "still" in text_of(early)
    cancelled = await client.call_tool("cancel_request", {"request_id": long_id})
    assert not cancelled.is_error and cancelled.structured_content == {
        "status": "CANCELLATION_REQUESTED",
        "request_id": long_id,
    }
    final = await wait_completed(client, long_id)
    assert final["error_type"] == "request_cancelled"
    again = await client.call_tool("cancel_request", {"request_id": long_id})
    assert again.is_error and "already completed" in text_of(again)
    gone = await client.call_tool("get_result", {"request_id": long_id})
    assert gone.is_error and "cancelled" in text_of(gone)

    # An app's own error for one field is a tool error naming it.
    failed = await client.call_tool("run_test_stepping", {"steps": 1, "fail": True})
    assert failed.is_error and text_of(failed).startswith("fail:")

    # Resources: a guide per app.
    guides = {str(r.uri) for r in (await client.list_resources()).resources}
    assert guides == {
        "framewire://apps/framewire/echo",
        "framewire://apps/framewire/lcm",
        "framewire://apps/test/stepping",
    }
    read = await client.read_resource("framewire://apps/framewire/lcm")
    [page] = read.contents
    assert isinstance(page, types.TextResourceContents) and page.mime_type == "text/markdown"
    assert "`run_framewire_lcm`" in page.text and "| `num_inference_steps` | integer | `4` | ≥ 1, ≤ 8 |" in page.text


async def check_schema_errors(client: Client) -> None:
    """Bad input comes back as a tool error naming the field, on every kind of tool."""
    too_many = await client.call_tool("run_framewire_lcm", {**LCM_64, "num_inference_steps": 99})
    assert too_many.is_error and "num_inference_steps" in text_of(too_many)
    assert isinstance(too_many.structured_content, dict)
    assert too_many.structured_content["error_type"] == "validation_error"
    assert too_many.structured_content["detail"][0]["loc"] == ["body", "num_inference_steps"]
    missing = await client.call_tool("submit_framewire_lcm", {"num_inference_steps": 1})
    assert missing.is_error and "prompt" in text_of(missing)
    wrong_type = await client.call_tool("run_framewire_echo", {"delay_ms": "soon"})
    assert wrong_type.is_error and "delay_ms" in text_of(wrong_type)
    no_id = await client.call_tool("get_status", {})
    assert no_id.is_error and "request_id" in text_of(no_id)
    extra = await client.call_tool("list_apps", {"verbose": True})
    assert extra.is_error and "verbose" in text_of(extra)
    bad_upload = await client.call_tool("upload_file", {"data": "not base64!"})
    assert bad_upload.is_error and "data" in text_of(bad_upload)
    unknown = await client.call_tool("get_status", {"request_id": "no-such-request"})
    assert unknown.is_error and "not found" in text_of(unknown)
    with pytest.raises(MCPError, match="Unknown tool"):
        await client.call_tool("run_framewire_nothing", {})


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_over_streamable_http(server: Server, mode: str) -> None:
    async with over_http(server.url, ADMIN, mode) as client:
        assert client.protocol_version == ("2025-11-25" if mode == "legacy" else mode)
        await exercise_every_tool(client)
        await check_schema_errors(client)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
async def test_every_tool_over_stdio_through_framewire_mcp(server: Server, mode: str) -> None:
    async with over_stdio(server.url, ADMIN, mode) as client:
        if mode == "legacy":  # the handshake carries who answers (a pinned 2026 version skips it)
            assert client.server_info is not None and client.server_info.name == "framewire"
            assert client.instructions and "list_apps" in client.instructions
        await exercise_every_tool(client)
        await check_schema_errors(client)


async def test_no_key_or_a_wrong_key_is_refused_before_the_protocol(server: Server) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for headers in ({}, {"Authorization": "Key admin:wrong"}, {"Authorization": "Bearer admin:wrong"}):
        answer = httpx.post(server.url, json=initialize, headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(BaseException) as refused:  # the SDK raises the failed handshake in task groups
        async with over_http(server.url, "admin:wrong", "legacy"):
            pass
    assert "Server returned an error response" in repr(refused.value)


async def test_a_key_limited_to_one_app_sees_and_runs_only_that_app(server: Server) -> None:
    async with over_http(server.url, ADMIN, "legacy") as admin:
        theirs = await admin.call_tool("submit_framewire_echo", {"prompt": "admin's"})
        assert isinstance(theirs.structured_content, dict)
    async with over_http(server.url, server.echo_key, "2026-07-28", scheme="Bearer") as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == GENERAL | {"run_framewire_echo", "submit_framewire_echo"}
        with pytest.raises(MCPError, match="Unknown tool"):
            await client.call_tool("run_framewire_lcm", LCM_64)
        forbidden = await client.call_tool("describe_app", {"app_id": "framewire/lcm"})
        assert forbidden.is_error and "not valid for 'framewire/lcm'" in text_of(forbidden)
        listed = await client.call_tool("list_apps", {})
        assert isinstance(listed.structured_content, dict)
        assert [app["id"] for app in listed.structured_content["apps"]] == ["framewire/echo"]
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["framewire://apps/framewire/echo"]
        with pytest.raises(MCPError, match="Resource not found"):
            await client.read_resource("framewire://apps/framewire/lcm")
        other = await client.call_tool("get_status", {"request_id": theirs.structured_content["request_id"]})
        assert other.is_error and "not found" in text_of(other)  # another key's request does not exist for it
        ran = await client.call_tool("run_framewire_echo", {"prompt": "mine"})
        assert not ran.is_error
    async with over_stdio(server.url, server.echo_key, "legacy") as bridged:
        names = {tool.name for tool in (await bridged.list_tools()).tools}
        assert names == GENERAL | {"run_framewire_echo", "submit_framewire_echo"}


async def test_usage_and_the_rate_limit_apply_per_key_as_on_run_and_queue(server: Server) -> None:
    async with over_http(server.url, server.echo_key, "legacy") as client:
        for _ in range(2):
            assert not (await client.call_tool("run_framewire_echo", {"prompt": "counted"})).is_error
        assert not (await client.call_tool("submit_framewire_echo", {"prompt": "queued"})).is_error
        assert (await client.call_tool("run_framewire_echo", {"delay_ms": -1})).is_error
    async with over_http(server.url, server.slow_key, "legacy") as slow:
        assert not (await slow.call_tool("run_framewire_echo", {})).is_error
        limited = await slow.call_tool("run_framewire_echo", {})
        assert limited.is_error and "requests/s" in text_of(limited)
        assert (
            isinstance(limited.structured_content, dict) and limited.structured_content["error_type"] == "rate_limited"
        )
        queued = await slow.call_tool("submit_framewire_echo", {})
        assert queued.is_error and "requests/s" in text_of(queued)

    def usage(key_id: str) -> dict[str, Any]:
        query = {"key_id": key_id, "app": "framewire/echo", "granularity": "total"}
        answer = httpx.get(
            f"http://127.0.0.1:{server.port}/v1/usage", params=query, headers={"Authorization": f"Key {ADMIN}"}
        )
        assert answer.status_code == 200, answer.text
        [row] = answer.json()["time_series"][0]["results"]
        return dict(row)

    deadline = time.monotonic() + 30
    while (echo := usage(server.echo_key_id))["surfaces"].get("queue", 0) < 1:  # the job is charged when it ends
        assert time.monotonic() < deadline, echo
        await asyncio.sleep(0.1)
    # Each run, the failed one included, and the queued job: as the HTTP surfaces count them.
    assert echo["surfaces"]["run"] >= 3 and echo["errors"] >= 1
    slow = usage(server.slow_key_id)
    assert slow["surfaces"] == {"run": 2, "queue": 1} and slow["errors"] == 2


def test_mcp_takes_post_only_from_non_browsers_or_allowed_origins(server: Server) -> None:
    auth = {"Authorization": f"Key {ADMIN}"}
    assert httpx.get(server.url, headers=auth).status_code == 405
    assert httpx.delete(server.url, headers=auth).status_code == 405
    evil = httpx.get(server.url, headers={**auth, "Origin": "http://attacker.example"})
    assert evil.status_code == 403 and "--allowed-origin" in evil.json()["detail"]
    assert httpx.get(server.url, headers={**auth, "Origin": "http://localhost:6274"}).status_code == 405


def test_mcp_bodies_are_read_with_the_limits_of_every_json_route(server: Server) -> None:
    headers = {"Authorization": f"Key {ADMIN}", "Content-Type": "application/json"}
    too_big = httpx.post(server.url, headers=headers, content=b" " * (9 << 20))
    assert too_big.status_code == 413 and "--max-body-bytes" in too_big.json()["detail"]
    deep = httpx.post(server.url, headers=headers, content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 413 and "nests deeper" in deep.json()["detail"]
    many = httpx.post(server.url, headers=headers, content=b"[" + b"0," * 300_000 + b"0]")
    assert many.status_code == 413 and "--max-input-items" in many.json()["detail"]
    form = httpx.post(server.url, headers={**headers, "Content-Type": "text/plain"}, content=b"{}")
    assert form.status_code == 415
    # The server goes on: a well-formed call after the refusals is answered.
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    ok = httpx.post(server.url, headers={**headers, "Accept": "application/json, text/event-stream"}, json=ping)
    assert ok.status_code == 200 and ok.json()["result"] == {}


def test_the_bridge_names_a_refused_key_or_a_wrong_url(server: Server) -> None:
    def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "framewire.cli", "mcp", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    refused = bridge("--url", f"http://127.0.0.1:{server.port}", "--key", "admin:wrong")  # the base URL works too
    assert refused.returncode == 1 and "refused the key (401): invalid API key" in refused.stderr
    wrong = bridge("--url", f"http://127.0.0.1:{server.port}/models", "--key", ADMIN)
    assert wrong.returncode == 1 and "not a FrameWire MCP endpoint" in wrong.stderr
    bad = bridge("--url", "ftp://example.com/mcp")
    assert bad.returncode == 1 and "--url must be an http(s) URL" in bad.stderr


@pytest.mark.slow
async def test_a_drain_refuses_new_tool_calls_and_lets_running_ones_finish(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    cmd = [
        *(sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")),
        *("--builtin-apps", "echo", "--app", "tests.gateway.queue_apps:SteppingApp"),
        *("--shutdown-timeout-s", "20", "--log-level", "info"),
    ]
    with log_path.open("a") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=log_file)
    try:
        wait_ready(port, proc)
        async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as client:
            # A queue job of 3 s holds the drain open (a drain lets running jobs finish).
            job = await client.call_tool("submit_test_stepping", {"steps": 30, "delay_ms": 100})
            assert isinstance(job.structured_content, dict)
            running = asyncio.create_task(client.call_tool("run_test_stepping", {"steps": 20, "delay_ms": 100}))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 5
            while httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            late = await client.call_tool("run_framewire_echo", {"prompt": "too late"})
            assert late.is_error and "not ready" in text_of(late)
            assert isinstance(late.structured_content, dict)
            assert late.structured_content["error_type"] == "engine_unavailable"
            finished = await asyncio.wait_for(running, 30)
        assert not finished.is_error, text_of(finished)
        assert isinstance(finished.structured_content, dict) and finished.structured_content["done"] == 20
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGTERM, log_path.read_text()[-3000:]


@pytest.mark.slow
async def test_the_bridge_outlives_a_server_restart() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    with contextlib.ExitStack() as first_server:
        first_server.enter_context(serve_process("--builtin-apps", "echo", port=port))
        async with over_stdio(url, ADMIN, "legacy") as client:  # a server without --auth ignores the key
            assert not (await client.call_tool("run_framewire_echo", {"prompt": "before"})).is_error
            first_server.close()
            with pytest.raises(MCPError, match="did not answer"):
                await client.call_tool("run_framewire_echo", {"prompt": "while down"})
            with serve_process("--builtin-apps", "echo", port=port):
                after = await client.call_tool("run_framewire_echo", {"prompt": "after"})
    assert not after.is_error and isinstance(after.structured_content, dict)
    assert after.structured_content["prompt"] == "after"
