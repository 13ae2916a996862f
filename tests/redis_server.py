"""A real ``redis-server`` (Debian's, installed by ``make test``) on a free loopback port.

Started with the durability settings FrameWire documents (AOF, ``appendfsync always``) in
a temporary folder, stopped by its pid. :meth:`RedisServer.kill` and :meth:`RedisServer.start`
again (same port, same folder) are a crash and a restart that replays the AOF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = os.environ.get("REDIS_SERVER", "/usr/bin/redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, folder: Path, port: int | None = None, *, aof: bool = True) -> None:
        if not Path(REDIS_SERVER).is_file():
            pytest.skip(f"{REDIS_SERVER} is missing: `make test` installs Debian's redis-server")
        self.folder = folder
        self.port = port if port is not None else _free_port()
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 15.0, config: list[str] | None = None) -> None:
        """Start it; with ``config`` (a config file, then overrides) those settings instead of the defaults."""
        if config is not None:
            cmd = [REDIS_SERVER, *config, "--dir", str(self.folder), "--daemonize", "no"]
            cmd += ["--logfile", str(self.folder / "redis.log")]
        else:
            cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            cmd += ["--save", "", "--daemonize", "no", "--logfile", str(self.folder / "redis.log")]
            if self.aof:
                cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _answers(self.port):
            if self.proc.poll() is not None:
                log = (self.folder / "redis.log").read_text() if (self.folder / "redis.log").exists() else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server at once (SIGKILL: a crash; nothing is written after the last fsync)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(64).startswith(b"+OK")


@contextlib.contextmanager
def redis_server(*, aof: bool = True) -> Iterator[RedisServer]:
    """A running server in a fresh folder; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="framewire-redis-"))
    server = RedisServer(folder, aof=aof)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
