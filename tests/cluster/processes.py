"""Edges and workers as real processes on 127.0.0.1, and a realtime client for them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import ROOT, free_port, wait_ready

SECRET = "process-test-secret-" + "z" * 32
APPS = ("--builtin-apps", "echo", "--app", "tests.cluster.apps:SleepApp")
#: Short heartbeats so a frozen worker is noticed well inside the 3 s the failover may take.
FAST_LINK = ("--worker-heartbeat-s", "0.2", "--worker-timeout-s", "1.0")


class Proc:
    """A child process whose output is collected by a thread (so a full pipe never stalls it)."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # signals to the test's group never reach it
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            if self.proc.poll() is not None:
                time.sleep(0.2)  # let the reader catch the last lines
                raise RuntimeError(f"{self.cmd[3]} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no line with {text!r} within {timeout_s} s:\n{self.output()}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM (after SIGCONT, in case the test froze it), then SIGKILL past the timeout."""
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def worker_process(
    worker_id: str, *, secret: str = SECRET, port: int | None = None, extra: Sequence[str] = ()
) -> Iterator[tuple[Proc, int]]:
    """``framewire worker`` on a free port, ready; yields (process, port)."""
    port = free_port() if port is None else port
    cmd = [sys.executable, "-m", "framewire.cli", "worker", *APPS, "--port", str(port), "--worker-id", worker_id]
    cmd += ["--log-format", "text", "--shutdown-timeout-s", "5", *extra]
    proc = Proc(cmd, env={"FRAMEWIRE_WORKER_SECRET": secret})
    try:
        proc.wait_for_line(f"FrameWire worker {worker_id} serving")
        yield proc, port
    finally:
        proc.stop()


@contextlib.contextmanager
def edge_process(
    workers: Sequence[str] = (), *, secret: str = SECRET, extra: Sequence[str] = (), ready: bool = True
) -> Iterator[tuple[Proc, int, int]]:
    """``framewire serve`` in front of ``workers`` (HOST:PORT); yields (process, port, queue port)."""
    port, queue_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "framewire.cli", "serve", *APPS, "--port", str(port), "--queue-port", str(queue_port)]
    cmd += ["--data-dir", tempfile.mkdtemp(prefix="framewire-edge-"), "--log-format", "text", *FAST_LINK]
    if workers:
        cmd += ["--workers", ",".join(workers)]
    cmd += ["--shutdown-timeout-s", "5", *extra]
    proc = Proc(cmd, env={"FRAMEWIRE_WORKER_SECRET": secret})
    try:
        if ready:
            try:
                wait_ready(port, timeout_s=60.0)  # generous: a loaded 2-core machine starts slowly
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; the edge said:\n{proc.output()[-3000:]}") from None
        yield proc, port, queue_port
    finally:
        proc.stop()


@contextlib.contextmanager
def two_workers_and_an_edge() -> Iterator[tuple[Proc, Proc, Proc, int, int]]:
    """Workers ``w1`` and ``w2`` and an edge in front of both: (w1, w2, edge, port, queue port)."""
    with (
        worker_process("w1") as (w1, p1),
        worker_process("w2") as (w2, p2),
        edge_process([f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]) as (edge, port, queue_port),
    ):
        yield w1, w2, edge, port, queue_port


def get_json(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{host}:{port}{path}")
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def post_json(port: int, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def http_json(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One JSON call to 127.0.0.1:port: (status, body); (0, None) when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
    except OSError:
        return 0, None


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as res:
        return str(res.read().decode())


async def until(predicate: Any, timeout_s: float = 10.0, what: str = "a condition") -> None:
    """Poll ``predicate`` (blocking I/O is fine: it runs in a thread) without blocking the loop."""
    import asyncio

    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def ready_workers(port: int) -> dict[str, str]:
    """Worker label → state, from the edge's /ready."""
    _, body = get_json(port, "/ready")
    return {w["worker"]: w["state"] for w in (body or {}).get("workers", [])}


class Session:
    """A realtime session on ``framewire/...`` or ``test/sleep``: frames out, answers in."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.outputs: dict[int, dict[str, Any]] = {}
        self.errors: list[dict[str, Any]] = []
        self.closed: int | None = None

    @classmethod
    async def open(cls, port: int, path: str = "test/sleep") -> Session:
        ws = await connect(f"ws://127.0.0.1:{port}/{path}/realtime", compression=None, max_size=None)
        return cls(ws)

    async def send(self, n: int, **fields: Any) -> None:
        await self.ws.send(msgpack.packb({"n": n, "request_id": n, **fields}))

    async def receive(self, count: int, timeout_s: float = 10.0) -> None:
        """Read until ``count`` frames are answered (an output or an error each)."""
        import asyncio

        from websockets.exceptions import ConnectionClosed

        async with asyncio.timeout(timeout_s):
            while len(self.outputs) + len([e for e in self.errors if "request_id" in e]) < count:
                try:
                    message = await self.ws.recv()
                except ConnectionClosed as exc:
                    self.closed = exc.rcvd.code if exc.rcvd is not None else 1006
                    raise
                if isinstance(message, str):
                    self.errors.append(json.loads(message))
                else:
                    out = msgpack.unpackb(message)
                    self.outputs[out["request_id"]] = out

    async def close(self) -> None:
        await self.ws.close()
