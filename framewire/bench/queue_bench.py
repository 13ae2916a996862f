"""Queue throughput and submit-to-completed latency with the echo app, embedded SQLite against Redis.

For each store (``--stores sqlite,redis``) it starts ``framewire serve`` the same way
(fresh data dir, queue on its own port, the echo app in one local worker process,
``--devices cpu``), the Redis one with ``--redis-url`` pointing at a ``redis-server`` it
starts itself with FrameWire's durability defaults (AOF, ``appendfsync always``). Then
N concurrent submitters run a closed loop for a fixed time: each submits a job, waits
for ``COMPLETED`` on the status stream (SSE, so completion is seen when it happens, not
at the next poll) and submits the next. Reported: completed jobs per second, latency
percentiles from the submit call to the COMPLETED event, and CPU per job of the server
(edge and worker) and of Redis. The baseline, measured in the same run against the
SQLite server, is the sync run surface at the same concurrency.

It also checks that the realtime frame path never touches Redis: on the Redis server it
counts the commands Redis processes (``INFO stats``) while realtime sessions send
frames, and over an idle window of the same length, and reports frame latency for both
stores.

    python -m framewire.bench.queue_bench --concurrency 100 --duration-s 20

Client and server share the machine; the client is a minimal HTTP/1.1 one so that it
costs little CPU next to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from framewire.bench.environment import stamp
from framewire.bench.servers import ROOT, free_port, stop_process

APP = "framewire/echo"


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become ready")


def cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[index]


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost far less CPU than
    the server it measures (a general-purpose async client costs more than the server here)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _ensure(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, body: bytes = b""
    ) -> tuple[int, dict[str, str], AsyncIterator[bytes]]:
        reader, writer = await self._ensure()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers, self._body(reader, headers)

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
        if headers.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await reader.readexactly(length)

    async def read_all(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        status, _, chunks = await self.request(method, path, body)
        return status, b"".join([c async for c in chunks])


async def queue_job(conn: Connection, body: bytes) -> float:
    """Submit one job and wait for COMPLETED on its status stream; returns seconds taken."""
    started = time.perf_counter()
    status, raw = await conn.read_all("POST", f"/{APP}", body)
    if status != 200:
        raise RuntimeError(f"submit answered {status}")
    status_path = "/" + json.loads(raw)["status_url"].split("/", 3)[3]
    _, _, chunks = await conn.request("GET", status_path + "/stream")
    done = None
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if done is None and line.startswith(b"data:") and json.loads(line[5:])["status"] == "COMPLETED":
                done = time.perf_counter() - started
    if done is None:
        raise RuntimeError("status stream ended before COMPLETED")
    return done


async def sync_run(conn: Connection, body: bytes) -> float:
    started = time.perf_counter()
    status, _ = await conn.read_all("POST", f"/{APP}", body)
    if status != 200:
        raise RuntimeError(f"run answered {status}")
    return time.perf_counter() - started


async def realtime_frames(port: int, sessions: int, frames: int) -> list[float]:
    """``sessions`` realtime sessions on the echo app, each sending ``frames`` frames one at a
    time (send, await the answer); returns each frame's round trip in seconds."""
    import msgpack
    from websockets.asyncio.client import connect

    latencies: list[float] = []

    async def one(index: int) -> None:
        async with connect(f"ws://127.0.0.1:{port}/{APP}/realtime", compression=None) as ws:
            for n in range(frames):
                started = time.perf_counter()
                await ws.send(msgpack.packb({"prompt": f"s{index}", "request_id": n}))
                answer = msgpack.unpackb(await ws.recv())
                if answer.get("request_id") != n:
                    raise RuntimeError(f"frame {n} of session {index} answered with {answer!r}")
                latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(sessions)))
    return sorted(latencies)


def redis_commands(port: int) -> dict[str, int]:
    """Calls per command the Redis server has processed so far (``INFO commandstats``; this
    INFO call is counted in the next one)."""
    import redis

    client = redis.Redis(port=port)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()}


def commands_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The calls per command from ``before`` to ``after``, less the INFO call that read ``after``."""
    diff = {name: calls - before.get(name, 0) for name, calls in after.items()}
    diff["info"] = diff.get("info", 0) - 1
    return {name: calls for name, calls in sorted(diff.items()) if calls > 0}


def realtime_probe(port: int, redis_port: int | None, sessions: int, frames: int) -> dict[str, Any]:
    """Frame latency; with Redis also the commands it ran during the frames and during an idle
    window as long, by command: the same background work (claims, leases, usage flushes) in both,
    and nothing that grows with the frames."""
    before = redis_commands(redis_port) if redis_port is not None else {}
    started = time.perf_counter()
    latencies = asyncio.run(realtime_frames(port, sessions, frames))
    took_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "sessions": sessions,
        "frames": len(latencies),
        "seconds": round(took_s, 2),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }
    if redis_port is not None:
        during = commands_between(before, idle_from := redis_commands(redis_port))
        time.sleep(took_s)
        idle = commands_between(idle_from, redis_commands(redis_port))
        result.update(
            redis_commands_during_frames=sum(during.values()),
            redis_commands_idle_same_time=sum(idle.values()),
            redis_commands_per_frame=round((sum(during.values()) - sum(idle.values())) / max(1, len(latencies)), 4),
            redis_commands_during_frames_by_name=during,
            redis_commands_idle_by_name=idle,
        )
    return result


@contextlib.contextmanager
def redis_server(binary: str, appendfsync: str) -> Iterator[tuple[int, int]]:
    """``redis-server`` on a free loopback port with AOF in a fresh folder; yields (port, pid)."""
    port = free_port()
    folder = tempfile.mkdtemp(prefix="framewire-bench-redis-")
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", ""]
    cmd += ["--appendonly", "yes", "--appendfsync", appendfsync, "--logfile", os.path.join(folder, "redis.log")]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                redis_commands(port)
                break
            except OSError:
                pass
            except Exception:  # redis.ConnectionError while it starts
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        stop_process(proc, timeout_s=30)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def server(redis_url: str | None) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    """``framewire serve`` with the echo app in one local CPU worker; yields (process, port, queue port)."""
    port, queue_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="framewire-bench-")
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--queue-port", str(queue_port),
           "--data-dir", data_dir, "--log-level", "warning", "--builtin-apps", "echo", "--devices", "cpu"]  # fmt: skip
    env = {**os.environ, "FRAMEWIRE_WORKER_SECRET": "bench-worker-secret-" + "x" * 24}
    if redis_url is not None:
        cmd += ["--redis-url", redis_url]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    try:
        wait_ready(port, proc, timeout_s=60.0)
        yield proc, port, queue_port
    finally:
        stop_process(proc, timeout_s=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process and its children (the edge and its local worker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    found = [cpu_s(pid), *(cpu_s(int(c)) for c in children)]
    return None if any(v is None for v in found) else sum(v for v in found if v is not None)


def measured(kind: str, store: str, port: int, pids: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run, with CPU per job of the server (edge + worker) and of Redis."""
    before = {name: (tree_cpu_s(pid) if name == "server" else cpu_s(pid)) for name, pid in pids.items()}
    result = asyncio.run(closed_loop(kind, port, args.concurrency, args.duration_s, args.warmup_s))
    result["store"] = store
    after = {name: (tree_cpu_s(pid) if name == "server" else cpu_s(pid)) for name, pid in pids.items()}
    if result["completed"]:
        total_jobs = result["completed"] * (args.duration_s + args.warmup_s) / args.duration_s
        for name in pids:
            b, a = before[name], after[name]
            if b is not None and a is not None:
                result[f"{name}_cpu_ms_per_job"] = round(1000 * (a - b) / total_jobs, 2)
    return result


async def closed_loop(kind: str, port: int, concurrency: int, duration_s: float, warmup_s: float) -> dict[str, Any]:
    body = json.dumps({"prompt": "benchmark"}).encode()
    call = queue_job if kind == "queue" else sync_run
    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    measure_from, stop_at = t0 + warmup_s, t0 + warmup_s + duration_s

    async def worker() -> None:
        nonlocal errors
        conn = Connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                begun = time.perf_counter()
                try:
                    took = await call(conn, body)
                except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    await conn.close()
                    continue
                if begun >= measure_from and begun + took <= stop_at:
                    latencies.append(took)
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "kind": kind,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "completed": len(latencies),
        "errors": errors,
        "jobs_per_s": round(len(latencies) / duration_s, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--stores", default="sqlite,redis", help="stores to compare, in order (sqlite, redis)")
    parser.add_argument("--redis-server", default="/usr/bin/redis-server")
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec", "no"))
    parser.add_argument("--realtime-sessions", type=int, default=16)
    parser.add_argument("--realtime-frames", type=int, default=200, help="frames per session, one at a time")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "queue_bench.json"))
    args = parser.parse_args()
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if not stores or any(s not in ("sqlite", "redis") for s in stores):
        raise SystemExit("--stores: a comma list of sqlite and redis")

    results: list[dict[str, Any]] = []
    realtime: list[dict[str, Any]] = []
    machine = stamp()
    for store in stores:
        with contextlib.ExitStack() as stack:
            redis_port = redis_pid = None
            if store == "redis":
                redis_port, redis_pid = stack.enter_context(redis_server(args.redis_server, args.appendfsync))
            url = None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"
            proc, port, queue_port = stack.enter_context(server(url))
            pids = {"server": proc.pid, **({"redis": redis_pid} if redis_pid is not None else {})}
            if store == stores[0]:
                results.append(measured("sync-run", store, port, pids, args))
            results.append(measured("queue", store, queue_port, pids, args))
            probe = realtime_probe(port, redis_port, args.realtime_sessions, args.realtime_frames)
            realtime.append({"store": store, **probe})
    report = {
        "app": APP,
        "engine": "one local CPU worker process (--devices cpu)",
        "redis": {"appendfsync": args.appendfsync, "aof": True} if "redis" in stores else None,
        "machine": machine,
        "client": "minimal asyncio HTTP/1.1 client (one keep-alive connection per submitter), same machine",
        "results": results,
        "realtime": realtime,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'surface':<10}{'store':<8}{'conc':>6}{'jobs/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'server cpu ms/job':>19}{'redis cpu ms/job':>18}")  # fmt: skip
    for r in results:
        print(f"{r['kind']:<10}{r['store']:<8}{r['concurrency']:>6}{r['jobs_per_s']:>9}{r['p50_ms']:>9}"
              f"{r['p95_ms']:>9}{r['p99_ms']:>9}{r['errors']:>8}{r.get('server_cpu_ms_per_job', '-'):>19}"
              f"{r.get('redis_cpu_ms_per_job', '-'):>18}")  # fmt: skip
    print()
    print(f"{'realtime':<10}{'store':<8}{'frames':>8}{'p50 ms':>9}{'p99 ms':>9}{'redis cmds: frames':>20}"
          f"{'idle':>7}{'per frame':>11}")  # fmt: skip
    for r in realtime:
        print(f"{'':<10}{r['store']:<8}{r['frames']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}"
              f"{r.get('redis_commands_during_frames', '-'):>20}{r.get('redis_commands_idle_same_time', '-'):>7}"
              f"{r.get('redis_commands_per_frame', '-'):>11}")  # fmt: skip
    for r in realtime:
        if "redis_commands_during_frames_by_name" in r:
            print(f"redis commands during the frames: {r['redis_commands_during_frames_by_name']}")
            print(f"redis commands idle, as long:     {r['redis_commands_idle_by_name']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
