"""SIGTERM against a real ``framewire serve``: drain, close sessions with 1001, keep queued jobs."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets

from tests.conftest import ROOT, free_port, wait_ready


def start(data_dir: Path, port: int, queue_port: int, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = [
        *(sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--queue-port", str(queue_port)),
        *("--data-dir", str(data_dir), "--queue-jobs-in-flight", "1", "--shutdown-timeout-s", "20"),
        *("--log-level", "info"),
    ]
    log_file = log_path.open("a")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log_file, stderr=log_file)
    log_file.close()
    return proc


async def open_session(port: int, request_id: int) -> Any:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/framewire/echo/realtime")
    await ws.send(msgpack.packb({"prompt": f"frame {request_id}", "delay_ms": 1000, "request_id": request_id}))
    return ws


async def session_end(ws: Any) -> tuple[list[Any], int | None]:
    """Every output the session got, and its close code."""
    outputs = []
    try:
        async for message in ws:
            outputs.append(msgpack.unpackb(message) if isinstance(message, bytes) else json.loads(message))
    except websockets.ConnectionClosed:
        pass
    return outputs, ws.close_code


def test_sigterm_drains_closes_sessions_with_1001_and_loses_no_queued_job(tmp_path: Path) -> None:
    port, queue_port = free_port(), free_port()
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    proc = start(data_dir, port, queue_port, log_path)
    try:
        wait_ready(port, proc)
        job_ids = asyncio.run(drain_scenario(proc, port, queue_port))
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Like uvicorn, the process ends as killed by the signal it drained for.
    assert proc.returncode == -signal.SIGTERM, log_path.read_text()[-3000:]
    log = log_path.read_text()
    assert "drained in" in log and "Cancel" not in log  # nothing was cut off by the timeout
    with sqlite3.connect(data_dir / "framewire.db") as db:
        states = dict(db.execute("SELECT id, status FROM jobs").fetchall())
        failed = db.execute("SELECT COUNT(*) FROM jobs WHERE error IS NOT NULL").fetchone()[0]
    assert set(states) == set(job_ids) and failed == 0
    assert "IN_PROGRESS" not in states.values()  # the running job finished during the drain
    assert list(states.values()).count("IN_QUEUE") >= 2, states  # the rest waited in the store

    # The jobs still queued at shutdown run after a restart: every job completes, successfully.
    proc = start(data_dir, port, queue_port, log_path)
    try:
        wait_ready(port, proc)
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=f"http://127.0.0.1:{queue_port}") as client:
            for job_id in job_ids:
                while (status := client.get(f"/framewire/echo/requests/{job_id}/status").json())[
                    "status"
                ] != "COMPLETED":
                    assert time.monotonic() < deadline, status
                    time.sleep(0.1)
                assert "error" not in status, status
                result = client.get(f"/framewire/echo/requests/{job_id}")
                assert result.status_code == 200 and result.json()["prompt"] == f"job {job_ids.index(job_id)}"
        # A streamed run in flight at the signal ends with its output: the shutdown waits for it.
        events = asyncio.run(stream_through_sigterm(proc, port, {"prompt": "streamed", "delay_ms": 1000}))
        assert events and json.loads(events[-1])["prompt"] == "streamed", events
        proc.wait(30)
    finally:
        proc.terminate()
        proc.wait(30)


async def stream_through_sigterm(proc: subprocess.Popen[bytes], port: int, body: dict[str, Any]) -> list[str]:
    """The ``data`` of every event of a run on ``/stream`` during which the server gets SIGTERM."""
    events = []
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        client.stream("POST", "/framewire/echo/stream", json=body, timeout=30) as response,
    ):
        assert response.status_code == 200
        proc.send_signal(signal.SIGTERM)
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(line.removeprefix("data:").strip())
    return events


async def drain_scenario(proc: subprocess.Popen[bytes], port: int, queue_port: int) -> list[str]:
    """Sessions and jobs in flight, SIGTERM, then what a client sees; returns the job ids."""
    sessions = [await open_session(port, i) for i in range(2)]
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as run_host,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{queue_port}") as queue_host,
    ):
        job_ids = []
        for i in range(4):
            submitted = await queue_host.post("/framewire/echo", json={"prompt": f"job {i}", "delay_ms": 300})
            assert submitted.status_code == 200
            job_ids.append(submitted.json()["request_id"])
        await asyncio.sleep(0.3)  # the two frames are in the engine now
        proc.send_signal(signal.SIGTERM)

        # Readiness goes false while the listener still answers; new work is refused with a hint.
        deadline = time.monotonic() + 5
        while (ready := await run_host.get("/ready")).status_code == 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "draining"}
        assert ready.headers["retry-after"] == "1"
        async with websockets.connect(f"ws://127.0.0.1:{port}/framewire/echo/realtime") as late:
            refusal = json.loads(await late.recv())
            assert refusal["error"] == "ENGINE_UNAVAILABLE" and refusal["retry_after_ms"] > 0
            await late.wait_closed()
            assert late.close_code == 1013
        refused = await queue_host.post("/framewire/echo", json={"prompt": "too late"})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert (await run_host.get("/health")).status_code == 200

    # Each open session gets the output of its in-flight frame, then a 1001 close.
    for i, ws in enumerate(sessions):
        outputs, code = await asyncio.wait_for(session_end(ws), 20)
        assert [o.get("request_id") for o in outputs] == [i], outputs
        assert code == 1001
    return job_ids
