"""Shared fixtures: apps for tests, an in-process server over a real socket."""

from __future__ import annotations

import atexit
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

# Triton decides when a kernel is defined whether it is compiled or interpreted, and the engine
# defines the kernels when it is imported: set the interpreter here, before any test module
# imports the engine, so that the kernels' tests (and the engine's kernels-on test) can run
# them on the CPU. Engines elsewhere still run the torch references on the CPU unless a test
# calls framewire.kernels.runtime.allow_cpu_interpreter(True); a GPU run sets TRITON_INTERPRET=0.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import uvicorn
from pydantic import BaseModel

from framewire.bench.servers import stop_process
from framewire.engine.api import App, AppRegistry, realtime
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.listener import server_config
from framewire.gateway.settings import Settings
from tests.redis_server import RedisServer, redis_server

# Any accidental hub lookup fails fast, and random weights built by servers that tests start
# go to a throwaway folder (subprocesses inherit all of these). Servers run the diffusion
# apps on tiny random weights unless a test says otherwise, and an empty Hugging Face cache
# keeps a developer's downloaded real weights out of the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
_CACHE_DIR = tempfile.mkdtemp(prefix="framewire-test-cache-")
os.environ["FRAMEWIRE_CACHE_DIR"] = _CACHE_DIR
os.environ["HF_HUB_CACHE"] = os.path.join(_CACHE_DIR, "hub")
os.environ.setdefault("FRAMEWIRE_WEIGHTS", "random")
atexit.register(shutil.rmtree, _CACHE_DIR, True)


@pytest.fixture(autouse=True)
def _fresh_user_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default data dir (the user data dir, from ``XDG_DATA_HOME``) is a fresh folder per
    test, for the test and the servers it starts: never a developer's own keys and jobs."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))
    monkeypatch.delenv("FRAMEWIRE_DATA_DIR", raising=False)


class SlowIn(BaseModel):
    n: int = 0
    delay_ms: float = 0.0
    fail: bool = False


class SlowOut(BaseModel):
    n: int
    batch: list[int]
    timings: dict[str, float] = {}


class BatchingApp(App):
    """Records every batch it runs; each batch sleeps for the largest delay in it."""

    app_id = "test/batching"
    aliases = ("fal-ai/batching-alias",)

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @realtime("/realtime", buffering=4, session_timeout=0.5, max_batch_size=8)
    def run(self, inputs: list[SlowIn]) -> list[SlowOut]:
        ns = [i.n for i in inputs]
        self.batches.append(ns)
        delay = max(i.delay_ms for i in inputs)
        if delay:
            time.sleep(delay / 1000)
        if any(i.n < 0 for i in inputs):
            raise RuntimeError("negative n")
        return [SlowOut(n=i.n, batch=ns) for i in inputs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def live_server(settings: Settings, apps: Sequence[App]) -> Iterator[str]:
    """Run the real app on uvicorn in a thread; yields ``host:port``."""
    with live_surfaces(settings, apps, queue=False) as (address, _):
        yield address


@contextlib.contextmanager
def live_surfaces(settings: Settings, apps: Sequence[App], *, queue: bool = True) -> Iterator[tuple[str, str]]:
    """Run the real app on uvicorn in a thread; yields the run listener's ``host:port`` and, with
    ``queue``, the queue listener's (``--queue-port``; else the run listener's again)."""
    sockets = [_listening_socket() for _ in range(2 if queue else 1)]
    ports = [sock.getsockname()[1] for sock in sockets]
    if queue:
        settings = settings.with_changes(queue_port=ports[1])
    if settings.data_dir == Settings().data_dir:  # a folder of its own, not the test's default
        settings = settings.with_changes(data_dir=tempfile.mkdtemp(prefix="framewire-test-"))
    app = create_app(settings, LocalEngine(AppRegistry(apps)))
    config = server_config(app, settings, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[-1]}"
    finally:
        server.should_exit = True
        thread.join(10)


class LocalHttp:
    """A threaded HTTP server on a free loopback port for the ``with`` block; ``url`` is ``path`` on it."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], path: str = "/") -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def echo_app() -> EchoApp:
    return EchoApp()


@pytest.fixture
def batching_app() -> BatchingApp:
    return BatchingApp()


ROOT = Path(__file__).resolve().parents[1]


def wait_ready(port: int, proc: subprocess.Popen[str] | None = None, timeout_s: float = 30.0) -> None:
    """Poll ``/ready`` until it answers 200; fail with the server's output if it dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise RuntimeError("server did not become ready")
        time.sleep(0.1)


@contextlib.contextmanager
def serve_process(*args: str, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[int]:
    """``framewire serve`` as a child process on ``port`` (default: a free one); yields the port.

    Without a ``--data-dir`` in ``args`` the server gets a fresh temporary one.
    """
    port = free_port() if port is None else port
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--log-level", "warning", *args]
    if "--data-dir" not in args:
        cmd += ["--data-dir", tempfile.mkdtemp(prefix="framewire-test-")]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        try:
            wait_ready(port, proc)
            yield port
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for the tests that only need an empty one (see ``redis_url``)."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(shared_redis: RedisServer) -> str:
    """The URL of an empty Redis database (the shared server, flushed before the test)."""
    shared_redis.flush()
    return shared_redis.url
