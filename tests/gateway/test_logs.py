"""Structured logs: JSON lines with request and session ids, and no credentials, ever."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path

import msgpack
import pytest
import websockets

from framewire.gateway.platform import logs
from tests.conftest import ROOT, free_port, wait_ready

KEY = "k1:supersecretvalue-0123456789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJrMSJ9.c2lnbmF0dXJlLWJ5dGVz"


def test_redact_hides_key_secrets_tokens_and_credential_parameters() -> None:
    line = (
        f"Authorization: Key {KEY} Bearer abc.def-ghi GET /x/realtime?fal_jwt_token={JWT}&max_buffering=2 "
        "PUT /storage/upload/f/a.png?content_type=image/png&signature=deadbeef whsec_c2VjcmV0 raw " + JWT
    )
    out = logs.redact(line)
    for secret in ("supersecretvalue", "abc.def-ghi", JWT, "deadbeef", "c2VjcmV0"):
        assert secret not in out
    assert "Key k1:[redacted]" in out and "max_buffering=2" in out and "content_type=image/png" in out
    assert logs.redact_query(f"fal_jwt_token={JWT}&max_buffering=2") == "fal_jwt_token=[redacted]&max_buffering=2"


def test_json_lines_carry_the_ids_of_the_request_and_session() -> None:
    formatter = logs.JsonFormatter()
    stored_key = "0b6a3c1e-2f4d-4e5a-9b8c-7d6e5f4a3b2c:Zm9vYmFyYmF6cXV4LXNlY3JldC1ieXRlcy0wMTIz"
    record = logging.LogRecord("framewire.x", logging.WARNING, __file__, 1, "frame for %s", (stored_key,), None)
    record.app = "framewire/echo"
    token = logs.request_id.set("r-1")
    session = logs.session_id.set("s-1")
    try:
        entry = json.loads(formatter.format(record))
    finally:
        logs.request_id.reset(token)
        logs.session_id.reset(session)
    assert entry["level"] == "warning" and entry["logger"] == "framewire.x"
    assert entry["request_id"] == "r-1" and entry["session_id"] == "s-1" and entry["app"] == "framewire/echo"
    assert entry["msg"] == "frame for 0b6a3c1e-2f4d-4e5a-9b8c-7d6e5f4a3b2c:[redacted]"
    try:
        raise ValueError(f"bad key {KEY}")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "supersecretvalue" not in formatter.format(record)


def test_a_real_server_logs_requests_and_sessions_without_credentials(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    cmd = [
        *(sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")),
        *("--auth", "--api-key", KEY, "--log-level", "info", "--token-secret", "s" * 40),
    ]
    with log_path.open("w") as log_file, subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=log_file) as proc:
        try:
            wait_ready(port, proc)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/tokens/",
                data=json.dumps({"allowed_apps": ["echo"]}).encode(),
                headers={"Authorization": f"Key {KEY}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request) as response:
                token = json.loads(response.read())
                run_id = response.headers["x-fal-request-id"]

            async def session() -> None:
                url = f"ws://127.0.0.1:{port}/framewire/echo/realtime?fal_jwt_token={token}"
                async with websockets.connect(url) as ws:
                    await ws.send(msgpack.packb({"prompt": "hello"}))
                    await ws.recv()

            asyncio.run(session())
        finally:
            proc.terminate()
            proc.wait(20)
    text = log_path.read_text()
    assert "supersecretvalue" not in text and token not in text and token.split(".")[2] not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "framewire.access" and e["path"] == "/tokens/"]
    assert access and access[0]["request_id"] == run_id and access[0]["key_id"] == "k1"
    opened = [e for e in entries if e["msg"].startswith("session opened")]
    closed = [e for e in entries if e["msg"].startswith("session closed")]
    assert opened and closed and opened[0]["session_id"] == closed[0]["session_id"]
    handshake = [e for e in entries if "WebSocket" in e["msg"]]  # uvicorn's own line, query redacted
    assert handshake and all("fal_jwt_token=[redacted]" in e["msg"] for e in handshake)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_configure_routes_uvicorn_loggers_through_the_redacting_formatter(fmt: str) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logs.configure("info", fmt)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.JsonFormatter if fmt == "json" else logs.TextFormatter)
        assert logging.getLogger("uvicorn.error").propagate and not logging.getLogger("uvicorn.error").handlers
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
