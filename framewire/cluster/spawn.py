"""Worker processes an edge starts and supervises itself (``framewire serve --devices``).

Each worker gets a listening socket the edge binds on loopback before starting it (handed
over as an inherited file descriptor, so there is no port race and a restarted worker
keeps its address), the link secret in its environment (never on the command line), and
the edge's pid (a worker whose edge died stops by itself). A worker that exits is
started again after a back-off that grows while it keeps failing; :meth:`LocalWorkers.stop`
sends SIGTERM (the worker drains), then SIGKILL to what is left after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from framewire.cluster.directory import WorkerAddress

log = logging.getLogger("framewire.spawn")

#: The environment variable a spawned worker reads its secret from.
SECRET_ENV = "FRAMEWIRE_WORKER_SECRET"
#: A worker that ran this long before exiting restarts after the shortest back-off again.
HEALTHY_RUN_S = 30.0


@dataclass(frozen=True)
class WorkerCommand:
    """How to start one local worker; ``--fd`` and ``--parent-pid`` are added at start."""

    label: str  # its device, numbered when repeated (cpu#1)
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


def visible_gpus(env: Mapping[str, str] | None = None) -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else what nvidia-smi lists."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        done = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return len([line for line in done.stdout.splitlines() if line.strip()]) if done.returncode == 0 else 0


class _Child:
    def __init__(self, command: WorkerCommand, sock: socket.socket) -> None:
        self.command = command
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = WorkerAddress(host, port, command.label)
        self.proc: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.starts = 0


class LocalWorkers:
    """A :class:`~framewire.cluster.directory.Directory` of worker processes started here."""

    def __init__(
        self,
        commands: Sequence[WorkerCommand],
        secret: bytes,
        *,
        host: str = "127.0.0.1",
        restart_min_s: float = 0.5,
        restart_max_s: float = 10.0,
    ) -> None:
        if not commands:
            raise ValueError("no local worker to start")
        self.commands = list(commands)
        self.secret = secret
        self.host = host
        self.restart_min_s = restart_min_s
        self.restart_max_s = restart_max_s
        self._children: list[_Child] = []
        self._stopping = False
        self._watchers: list[Callable[[], None]] = []

    def addresses(self) -> list[WorkerAddress]:
        return [child.address for child in self._children]

    def watch(self, on_change: Callable[[], None]) -> None:
        self._watchers.append(on_change)

    def pids(self) -> list[int]:
        """The pids of the workers running now."""
        return [c.proc.pid for c in self._children if c.proc is not None and c.proc.returncode is None]

    async def start(self) -> None:
        for command in self.commands:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((self.host, 0))
            sock.listen(128)
            sock.set_inheritable(True)
            child = _Child(command, sock)
            self._children.append(child)
            await self._spawn(child)
            child.task = asyncio.create_task(self._supervise(child), name=f"worker-{command.label}")
        for notify in self._watchers:
            notify()

    async def _spawn(self, child: _Child) -> None:
        fd = child.sock.fileno()
        argv = [*child.command.argv, "--fd", str(fd), "--parent-pid", str(os.getpid())]
        env = {**os.environ, **child.command.env, SECRET_ENV: self.secret.decode()}
        # Its own session: a Ctrl+C or a signal to the edge's process group reaches the edge
        # only, which then stops its workers in order (and a worker whose edge died stops itself).
        child.proc = await asyncio.create_subprocess_exec(*argv, env=env, pass_fds=(fd,), start_new_session=True)
        child.starts += 1
        log.info("started worker %s (pid %d) on %s", child.command.label, child.proc.pid, child.address)

    async def _supervise(self, child: _Child) -> None:
        delay_s = self.restart_min_s
        while True:
            assert child.proc is not None
            started = time.monotonic()
            code = await child.proc.wait()
            if self._stopping:
                return
            ran_s = time.monotonic() - started
            if ran_s >= HEALTHY_RUN_S:
                delay_s = self.restart_min_s
            log.error(
                "worker %s (pid %d) exited with %s after %.1f s; starting it again in %.1f s",
                child.command.label,
                child.proc.pid,
                _describe_exit(code),
                ran_s,
                delay_s,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(2 * delay_s, self.restart_max_s)
            if self._stopping:
                return
            try:
                await self._spawn(child)
            except OSError as exc:
                log.error("could not start worker %s again: %s", child.command.label, exc)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM every worker (they drain), SIGKILL what is left after ``timeout_s``."""
        self._stopping = True
        for child in self._children:
            if child.task is not None:
                child.task.cancel()
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        procs = [c.proc for c in self._children if c.proc is not None and c.proc.returncode is None]
        if procs:
            waits = [asyncio.create_task(p.wait()) for p in procs]
            _, pending = await asyncio.wait(waits, timeout=timeout_s)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker pid %d did not stop within %.0f s; killing it", proc.pid, timeout_s)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        for child in self._children:
            child.sock.close()


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"
