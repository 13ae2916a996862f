"""Servers under test: FrameWire and the baselines as child processes of the harness
(so the load generator never shares their interpreter lock and their memory can be
measured), or a FrameWire that is already running.

A child's output goes to a log file (a pipe nobody reads would stall it); when it
fails to come up, the error quotes the end of that log.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]

#: Targets the harness can start itself.
FRAMEWIRE = "framewire"
STARLETTE = "starlette"
WEBSOCKETS = "websockets"
TARGETS = (FRAMEWIRE, STARLETTE, WEBSOCKETS)
BASELINES = (STARLETTE, WEBSOCKETS)


class ServerFailed(RuntimeError):
    """A server under test did not start or died; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerConfig:
    """What to start; equal configs can share one running server across scenarios."""

    target: str
    builtin_apps: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    extra_args: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        if self.target == FRAMEWIRE:
            cmd = [sys.executable, "-m", "framewire.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
            cmd += ["--log-level", "warning", "--builtin-apps", ",".join(self.builtin_apps)]
            for spec in self.apps:
                cmd += ["--app", spec]
            if self.max_batch_size is not None:
                cmd += ["--max-batch-size", str(self.max_batch_size)]
            if self.max_queue_delay_ms is not None:
                cmd += ["--max-queue-delay-ms", str(self.max_queue_delay_ms)]
            return cmd + list(self.extra_args)
        if self.target in BASELINES:
            return [sys.executable, "-m", "framewire.bench.baselines", self.target, "--port", str(port)]
        raise ValueError(f"unknown target {self.target!r}; choose from {', '.join(TARGETS)}")

    def settings(self) -> dict[str, object]:
        """The server-side settings worth stamping on a result."""
        out: dict[str, object] = {"target": self.target}
        if self.target == FRAMEWIRE:
            out.update(
                builtin_apps=list(self.builtin_apps),
                apps=list(self.apps),
                max_batch_size=self.max_batch_size,
                max_queue_delay_ms=self.max_queue_delay_ms,
                extra_args=list(self.extra_args),
            )
        return out


def _ready(port: int, host: str = "127.0.0.1", scheme: str = "http") -> bool:
    import ssl

    context = ssl._create_unverified_context() if scheme == "https" else None  # loopback, self-signed is fine
    try:
        with urllib.request.urlopen(f"{scheme}://{host}:{port}/ready", timeout=1.0, context=context) as res:
            return bool(res.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    """A running server under test."""

    config: ServerConfig
    base_url: str  # ws://127.0.0.1:PORT
    pid: int | None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_s: float = field(default_factory=time.monotonic)

    def settings(self) -> dict[str, object]:
        """What to stamp on a result about this server."""
        out = self.config.settings()
        out["url"] = self.base_url
        if self.proc is not None:
            out["command"] = self.config.command(int(self.base_url.rsplit(":", 1)[1]))[1:]  # without the interpreter
        else:
            out["external"] = True
        return out

    def url(self, ws_path: str, query: str = "") -> str:
        return f"{self.base_url}{ws_path}" + (f"?{query}" if query else "")

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            assert self.proc is not None
            raise ServerFailed(
                f"{self.config.target} exited with code {self.proc.returncode}; log tail:\n{_tail(self.log_path)}"
                if self.log_path
                else f"{self.config.target} exited with code {self.proc.returncode}"
            )

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout_s)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    """SIGTERM ``proc`` (a server drains on it), SIGKILL it after ``timeout_s``, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start(config: ServerConfig, log_dir: Path, *, startup_timeout_s: float = 60.0, attempts: int = 3) -> Server:
    """Start ``config`` on a free loopback port and wait until ``/ready`` answers 200."""
    log_dir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    tries = 0
    for _ in range(attempts):
        tries += 1
        port = free_port()
        log_path = log_dir / f"{config.target}-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(config.command(port), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _ready(port):
                return Server(config, f"ws://127.0.0.1:{port}", proc.pid, proc, log_path)
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise ServerFailed(
                f"{config.target} did not become ready within {startup_timeout_s:.0f} s "
                f"(raise --startup-timeout-s for slow model loads); log tail:\n{_tail(log_path)}"
            )
        last_error = _tail(log_path)
        if "cannot listen" not in last_error:  # only a lost port race is worth retrying
            break
    raise ServerFailed(f"{config.target} exited during start-up ({tries} attempts); log tail:\n{last_error}")


def external(url: str, pid: int | None = None) -> Server:
    """A FrameWire already running at ``url`` (``ws://host:port``), loopback only."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"--url {url!r}: expected ws://host:port or wss://host:port")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    if not _ready(port, parts.hostname, "https" if parts.scheme == "wss" else "http"):
        raise ServerFailed(f"no server answers GET /ready with 200 at {parts.hostname}:{port} (--url {url})")
    return Server(ServerConfig(FRAMEWIRE), f"{parts.scheme}://{parts.netloc}", pid)


class ProcessProbe:
    """Memory (RSS) and CPU time of server processes (one, or several: edges and workers)
    and their children, via psutil."""

    def __init__(self, pid: int | Sequence[int]) -> None:
        import psutil

        self._psutil = psutil
        self.processes = [psutil.Process(p) for p in ([pid] if isinstance(pid, int) else pid)]

    def _family(self) -> list[object]:
        found: list[object] = []
        for process in self.processes:
            found.append(process)
            try:
                found += process.children(recursive=True)
            except self._psutil.Error:
                pass
        return found

    def sample(self) -> tuple[int, float, int]:
        """(RSS bytes, CPU seconds user+system, context switches) summed over the
        process tree. Context switches count thread hand-offs and waits for I/O or locks:
        unlike times, they barely depend on what else the machine runs."""
        rss, cpu, switches = 0, 0.0, 0
        for proc in self._family():
            with contextlib.suppress(self._psutil.Error):
                rss += proc.memory_info().rss  # type: ignore[attr-defined]
                times = proc.cpu_times()  # type: ignore[attr-defined]
                cpu += times.user + times.system
                ctx = proc.num_ctx_switches()  # type: ignore[attr-defined]
                switches += ctx.voluntary + ctx.involuntary
        return rss, cpu, switches


class ServerObserver:
    """Samples a server at the window's edges (and its peak RSS in between), and the
    machine's CPU use, so a result says how busy the rest of the machine was."""

    def __init__(self, pid: int | Sequence[int] | None, sample_every_s: float = 1.0) -> None:
        import psutil

        self._psutil = psutil
        self.probe = ProcessProbe(pid) if pid is not None else None
        self.sample_every_s = sample_every_s
        self.rss_start = self.rss_end = self.rss_peak = 0
        self.cpu_start = self.cpu_end = 0.0
        self.ctx_start = self.ctx_end = 0
        self.machine_cpu_pct: float | None = None
        self._last_sample = 0.0
        self._in_window = False

    def window_started(self) -> None:
        psutil = self._psutil
        psutil.cpu_percent(None)  # starts the machine-wide interval
        if self.probe is not None:
            self.rss_start, self.cpu_start, self.ctx_start = self.probe.sample()
            self.rss_peak = self.rss_start
        self._in_window = True
        self._last_sample = time.monotonic()

    def window_ended(self) -> None:
        self.machine_cpu_pct = self._psutil.cpu_percent(None) * self._psutil.cpu_count()
        if self.probe is not None:
            self.rss_end, self.cpu_end, self.ctx_end = self.probe.sample()
            self.rss_peak = max(self.rss_peak, self.rss_end)
        self._in_window = False

    def tick(self) -> None:
        # A psutil sample costs tens of microseconds: cheap enough for the generator's
        # loop once a second, and a thread hop would cost more.
        if self.probe is None or not self._in_window:
            return
        now = time.monotonic()
        if now - self._last_sample >= self.sample_every_s:
            self._last_sample = now
            rss, _, _ = self.probe.sample()
            self.rss_peak = max(self.rss_peak, rss)

    def results(self, window_s: float) -> dict[str, float | None]:
        out: dict[str, float | None] = {"machine_cpu_pct": self.machine_cpu_pct}
        if self.probe is None:
            return {
                **out,
                "rss_start_mb": None,
                "rss_end_mb": None,
                "rss_peak_mb": None,
                "server_cpu_s": None,
                "ctx_switches": None,
            }
        mb = 1024 * 1024
        return {
            **out,
            "rss_start_mb": self.rss_start / mb,
            "rss_end_mb": self.rss_end / mb,
            "rss_peak_mb": self.rss_peak / mb,
            "rss_growth_mb": (self.rss_end - self.rss_start) / mb,
            "server_cpu_s": self.cpu_end - self.cpu_start,
            "server_cpu_pct": 100.0 * (self.cpu_end - self.cpu_start) / window_s,
            "ctx_switches": float(self.ctx_end - self.ctx_start),
        }


def stop_all(servers: Sequence[Server]) -> None:
    for server in servers:
        server.stop()
