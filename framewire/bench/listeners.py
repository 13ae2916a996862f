"""What the HTTP protocol choice costs: uvicorn's httptools, httptools with FrameWire's
guard (:mod:`framewire.gateway.listener`), and h11 with its head cap.

Each variant serves the echo app in its own process; the same client then measures sync
runs per second over keep-alive connections (HTTP parsing is where the variants differ),
one realtime session's frame latency (WebSocket framing is the same code in all three),
and one connection sending header lines (what the limits are for). One JSON object per
variant and round; rounds rotate the order so machine noise spreads evenly.

```bash
python -m framewire.bench.listeners --rounds 3 --seconds 8 --frames 1500 --attack-mb 64
python -m framewire.bench.listeners --per-request   # the protocols alone, in process: µs per request
```

End-to-end numbers on a small shared machine vary by more than the guard costs;
``--per-request`` isolates it: the same keep-alive request fed to each protocol object
through a stub transport and a no-op app, so only HTTP parsing and the guard are timed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from framewire.bench.attacks import Probe, _ok, attack_headers, free_port, rss_mb
from framewire.bench.servers import stop_process

VARIANTS = ("httptools", "guarded", "h11")


def serve(variant: str, port: int, data_dir: str) -> None:
    """Run the echo app on ``port`` with the HTTP protocol ``variant`` (blocks)."""
    import uvicorn

    from framewire.cli import build_registry
    from framewire.engine.host import LocalEngine
    from framewire.gateway.app import create_gateway
    from framewire.gateway.listener import server_config
    from framewire.gateway.settings import Settings

    settings = Settings(port=port, data_dir=data_dir, builtin_apps=("echo",), log_level="warning")
    app = create_gateway(settings, LocalEngine(build_registry(settings))).app
    if variant == "guarded":
        config = server_config(app, settings, host="127.0.0.1", port=port, log_level="warning")
    else:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            http=variant,
            h11_max_incomplete_event_size=settings.max_header_bytes,
            ws_per_message_deflate=False,
            ws_max_size=4 * settings.max_frame_bytes,
            log_level="warning",
        )
    uvicorn.Server(config).run()


async def _http_load(port: int, seconds: float, connections: int) -> dict[str, Any]:
    body = b'{"prompt": "a cat"}'
    request = (
        b"POST /framewire/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < end:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    lat = sorted(latencies)
    return {"runs_per_s": round(len(lat) / seconds), "run_p50_ms": round(statistics.median(lat), 2)}


async def _ws_load(port: int, frames: int) -> dict[str, Any]:
    import msgpack
    import websockets

    frame = msgpack.packb({"image_url": os.urandom(48 * 1024), "prompt": "a cat", "request_id": 0})
    latencies: list[float] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/framewire/echo/realtime", max_size=None) as ws:
        for i in range(frames):
            started = time.perf_counter()
            await ws.send(frame)
            await ws.recv()
            if i >= 100:  # warm-up
                latencies.append((time.perf_counter() - started) * 1000)
    lat = sorted(latencies)
    return {"frame_p50_ms": round(statistics.median(lat), 3), "frame_p99_ms": round(lat[int(len(lat) * 0.99)], 3)}


def measure(variant: str, seconds: float, frames: int, attack_mb: int, connections: int) -> dict[str, Any]:
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="framewire-listeners-")
    cmd = [sys.executable, "-m", "framewire.bench.listeners", "serve", variant, str(port), data_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not _ok(port, "/ready"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {variant} server did not start")
            time.sleep(0.2)
        out: dict[str, Any] = {"variant": variant}
        out.update(asyncio.run(_http_load(port, seconds, connections)))
        out.update(asyncio.run(_ws_load(port, frames)))
        before = rss_mb(proc.pid)
        with Probe(port, pid=proc.pid) as probe:
            attack = attack_headers(port, attack_mb, "headers")
            time.sleep(1.0)
        summary = probe.summary()
        out.update(
            attack_answer=attack["answer"] or "(none)",
            attack_sent_mb=attack["sent_mb"],
            attack_rss_growth_mb=round(summary["peak_rss_mb"] - before, 1),
            attack_health_max_ms=summary["health_max_ms"],
        )
        return out
    finally:
        stop_process(proc, 20.0)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _per_request(variant: str, requests: int) -> float:
    """Microseconds per keep-alive request through one ``variant`` protocol object."""
    import uvicorn
    from uvicorn.server import ServerState

    from framewire.gateway.listener import ListenerLimits, protocol_class

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    class Transport(asyncio.Transport):
        def write(self, data: Any) -> None:
            pass

        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    config = uvicorn.Config(app, http=variant if variant != "guarded" else "httptools", log_level="warning")
    config.load()
    cls: Any = config.http_protocol_class
    if variant == "guarded":
        cls = protocol_class(ListenerLimits(32 * 1024, 15.0, 2048))
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(Transport())
    body = b'{"prompt": "a cat"}'
    request = (
        b"POST /framewire/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    started = time.perf_counter()
    for _ in range(requests):
        protocol.data_received(request)
        await asyncio.sleep(0)  # the request's task answers
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        serve(argv[1], int(argv[2]), argv[3])
        return 0
    parser = argparse.ArgumentParser(prog="python -m framewire.bench.listeners", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of the sync-run load")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections of the sync-run load")
    parser.add_argument("--frames", type=int, default=1500, help="realtime frames (48 KB) in one session")
    parser.add_argument("--attack-mb", type=int, default=64, help="header lines sent on one connection")
    parser.add_argument("--per-request", action="store_true", help="time the protocols alone, in this process")
    args = parser.parse_args(argv)
    if args.per_request:
        for round_ in range(args.rounds):
            for variant in VARIANTS:
                us = asyncio.run(_per_request(variant, 20_000))
                print(json.dumps({"round": round_, "variant": variant, "us_per_request": round(us, 2)}), flush=True)
        return 0
    for round_ in range(args.rounds):
        order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
        for variant in order:
            result = measure(variant, args.seconds, args.frames, args.attack_mb, args.connections)
            print(json.dumps({"round": round_, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
