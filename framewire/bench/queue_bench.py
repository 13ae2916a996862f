"""Queue throughput and submit-to-completed latency with the echo app.

Starts ``framewire serve`` (fresh data dir, queue on its own port), then runs N
concurrent submitters in a closed loop for a fixed time: each submits a job, waits for
``COMPLETED`` on the status stream (SSE, so completion is seen when it happens, not at
the next poll) and submits the next. Reported: completed jobs per second and latency
percentiles from the submit call to the COMPLETED event. The baseline, measured in the
same run against the same server, is the sync run surface at the same concurrency.

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
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = "framewire/echo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "queue_bench.json"))
    args = parser.parse_args()

    port, queue_port = free_port(), free_port()
    data_dir = tempfile.mkdtemp(prefix="framewire-bench-")
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--queue-port", str(queue_port),
           "--data-dir", data_dir, "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_ready(port, proc)
        results = []
        for kind, target in (("sync-run", port), ("queue", queue_port)):
            before = cpu_s(proc.pid)
            result = asyncio.run(closed_loop(kind, target, args.concurrency, args.duration_s, args.warmup_s))
            after = cpu_s(proc.pid)
            if before is not None and after is not None and result["completed"]:
                # Server CPU per job: the figure that does not depend on what else the machine runs.
                total_jobs = result["completed"] * (args.duration_s + args.warmup_s) / args.duration_s
                result["server_cpu_ms_per_job"] = round(1000 * (after - before) / total_jobs, 2)
            results.append(result)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    report = {
        "app": APP,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": os.getloadavg(),
        },
        "client": "minimal asyncio HTTP/1.1 client (one keep-alive connection per submitter), same machine",
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"{'surface':<10}{'conc':>6}{'jobs/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'errors':>8}"
          f"{'cpu ms/job':>12}")  # fmt: skip
    for r in results:
        print(f"{r['kind']:<10}{r['concurrency']:>6}{r['jobs_per_s']:>10}{r['p50_ms']:>10}{r['p95_ms']:>10}"
              f"{r['p99_ms']:>10}{r['errors']:>8}{r.get('server_cpu_ms_per_job', '-'):>12}")  # fmt: skip
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
