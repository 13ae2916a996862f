"""The edge-worker link's transport, measured: raw TCP + msgpack against WebSocket.

Both carry the same msgpack messages between two processes on loopback (uvloop on both
ends): a request of ``payload_bytes`` (a frame) and a reply of the same size (its
output). *tcp* is the link FrameWire uses (:class:`framewire.cluster.link.Link` on both
ends); *ws* is the ``websockets`` library's client and server with binary frames and no
compression. For each, one requester in a closed loop gives the round-trip latency, then
16 concurrent requesters give round trips per second; CPU per round trip counts both
processes (server and client).

    framewire bench link [--payload-kb 48] [--duration-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from framewire.bench.servers import free_port

KINDS = ("tcp", "ws")


# -- the echo servers (run in a child process) -----------------------------------------------


class _Echo:
    """A link handler that answers every FRAME with a RESULT carrying the same payload."""

    def on_open(self, link: Any) -> None:
        link.authenticated = True  # no handshake here: the transport alone is measured

    def on_writable(self, link: Any) -> None:
        return None

    def on_lost(self, link: Any, reason: str) -> None:
        return None

    def on_message(self, link: Any, message: list[Any]) -> None:
        link.send([13, message[1], message[2], message[3], None, 0.0, 0.0, 1])


async def _serve(kind: str, port: int) -> None:
    if kind == "tcp":
        from framewire.cluster.link import Link

        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: Link(_Echo()), "127.0.0.1", port)
    else:
        from websockets.asyncio.server import ServerConnection, serve

        async def echo(ws: ServerConnection) -> None:
            import msgpack

            async for data in ws:
                message = msgpack.unpackb(data)
                await ws.send(msgpack.packb([13, message[1], message[2], message[3], None, 0.0, 0.0, 1]))

        await serve(echo, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None)
    print("ready", flush=True)
    await asyncio.Event().wait()


# -- the client ------------------------------------------------------------------------------


class _Waiter:
    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[None]] = {}

    def on_open(self, link: Any) -> None:
        link.authenticated = True

    def on_writable(self, link: Any) -> None:
        return None

    def on_lost(self, link: Any, reason: str) -> None:
        return None

    def on_message(self, link: Any, message: list[Any]) -> None:
        future = self.pending.pop(message[2], None)
        if future is not None:
            future.set_result(None)


async def _client(kind: str, port: int, payload: bytes, requesters: int, duration_s: float) -> dict[str, Any]:
    import msgpack

    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    seq = 0
    if kind == "tcp":
        from framewire.cluster.link import Link

        waiter = _Waiter()
        _, link = await loop.create_connection(lambda: Link(waiter), "127.0.0.1", port)

        async def round_trip() -> None:
            nonlocal seq
            seq += 1
            future = waiter.pending[seq] = loop.create_future()
            link.send([11, 1, seq, {"image": payload}])
            await future

    else:
        from websockets.asyncio.client import connect

        ws = await connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, ping_interval=None)
        pending: dict[int, asyncio.Future[None]] = {}

        async def reader() -> None:
            async for data in ws:
                future = pending.pop(msgpack.unpackb(data)[2], None)
                if future is not None:
                    future.set_result(None)

        reading = asyncio.create_task(reader())

        async def round_trip() -> None:
            nonlocal seq
            seq += 1
            future = pending[seq] = loop.create_future()
            await ws.send(msgpack.packb([11, 1, seq, {"image": payload}]))
            await future

    async def requester(until: float) -> None:
        while loop.time() < until:
            started = time.perf_counter()
            await round_trip()
            latencies.append((time.perf_counter() - started) * 1e6)

    for _ in range(200):  # warm-up
        await round_trip()
    latencies.clear()
    cpu0 = time.process_time()
    started = loop.time()
    await asyncio.gather(*(requester(started + duration_s) for _ in range(requesters)))
    elapsed = loop.time() - started
    cpu = time.process_time() - cpu0
    if kind == "tcp":
        link.close()
    else:
        reading.cancel()
        await ws.close()
    latencies.sort()
    return {
        "round_trips": len(latencies),
        "elapsed_s": elapsed,
        "client_cpu_s": cpu,
        "p50_us": latencies[len(latencies) // 2],
        "p99_us": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "mean_us": statistics.fmean(latencies),
    }


def _run_client(*args: Any) -> dict[str, Any]:
    coro = _client(*args)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def measure(kind: str, payload_bytes: int, requesters: int, duration_s: float) -> dict[str, Any]:
    """One kind, one requester count: a fresh server process, the client in this one."""
    import psutil

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "framewire.bench.link_bench", "--serve", kind, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {kind} echo server did not start")
        probe = psutil.Process(server.pid)
        before = sum(probe.cpu_times()[:2])
        result = _run_client(kind, port, os.urandom(payload_bytes), requesters, duration_s)
        server_cpu = sum(probe.cpu_times()[:2]) - before
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    n = result["round_trips"]
    return {
        "kind": kind,
        "requesters": requesters,
        "payload_bytes": payload_bytes,
        **result,
        "server_cpu_s": server_cpu,
        "round_trips_per_s": n / result["elapsed_s"],
        "cpu_us_per_round_trip": (server_cpu + result["client_cpu_s"]) / n * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framewire bench link", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--payload-kb", type=float, default=48.0)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--requesters", default="1,16", help="comma list of concurrent requesters")
    parser.add_argument("--repeats", type=int, default=2, help="each measurement, order alternating")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        try:
            import uvloop
        except ImportError:
            asyncio.run(_serve(args.serve, args.port))
        else:
            uvloop.run(_serve(args.serve, args.port))
        return 0
    payload = round(args.payload_kb * 1000)
    rows = []
    for requesters in (int(r) for r in args.requesters.split(",")):
        for rep in range(args.repeats):
            for kind in KINDS if rep % 2 == 0 else tuple(reversed(KINDS)):
                rows.append(measure(kind, payload, requesters, args.duration_s))
    summary = []
    print(f"{'transport':<10}{'requesters':>11}{'p50 µs':>10}{'p99 µs':>10}{'round trips/s':>15}{'CPU µs/rt':>11}")
    for requesters in sorted({r["requesters"] for r in rows}):
        for kind in KINDS:
            mine = [r for r in rows if r["kind"] == kind and r["requesters"] == requesters]
            line = {
                "kind": kind,
                "requesters": requesters,
                "p50_us": statistics.median(r["p50_us"] for r in mine),
                "p99_us": statistics.median(r["p99_us"] for r in mine),
                "round_trips_per_s": statistics.median(r["round_trips_per_s"] for r in mine),
                "cpu_us_per_round_trip": statistics.median(r["cpu_us_per_round_trip"] for r in mine),
            }
            summary.append(line)
            print(
                f"{kind:<10}{requesters:>11}{line['p50_us']:>10.0f}{line['p99_us']:>10.0f}"
                f"{line['round_trips_per_s']:>15.0f}{line['cpu_us_per_round_trip']:>11.0f}"
            )
    if args.out is not None:
        from framewire.bench.environment import stamp
        from framewire.bench.report import write_json

        command = "framewire bench link " + shlex.join(sys.argv[1:] if argv is None else argv)
        doc = {"command": command, "stamp": stamp(), "payload_bytes": payload, "summary": summary, "runs": rows}
        write_json(args.out, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
