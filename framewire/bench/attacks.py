"""Abuse measurements: what a hostile client costs a running ``framewire serve``.

Each scenario starts a server (loopback only), measures its resident memory and how fast
``GET /health`` answers while one unauthenticated client misbehaves, and prints one JSON
object. The numbers back the limits in the README's *Security and limits* section;
``--server-root`` runs another checkout's code with the same interpreter, to compare.

```bash
python -m framewire.bench.attacks headers --mb 256      # one connection, 256 MB of header lines
python -m framewire.bench.attacks url --mb 64           # one request line of 64 MB
python -m framewire.bench.attacks frames --frames 8     # msgpack frames of 4 MB that decode to huge structures
python -m framewire.bench.attacks sockets --count 1000  # silent and trickling sockets
python -m framewire.bench.attacks body --mb 400         # one JSON body of 400 MB
python -m framewire.bench.attacks pixels --images 8     # eight 39-megapixel PNGs arriving at once
python -m framewire.bench.attacks fetch-stall           # realtime image_url at a listener that never answers
```
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framewire.bench.servers import stop_process

ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@contextlib.contextmanager
def serve(args: Sequence[str], root: Path, *, fd_limit: int | None = None) -> Iterator[Server]:
    """``framewire serve`` from ``root`` on a free loopback port, until the block ends."""
    port = free_port()
    data_dir = tempfile.mkdtemp(prefix="framewire-attacks-")
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--data-dir", data_dir]
    cmd += ["--log-level", "error", *args]

    def limit_fds() -> None:
        if fd_limit is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_fds)
        try:
            deadline = time.monotonic() + 120
            while not _ok(port, "/ready"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the server did not start:\n{log.read().decode(errors='replace')[-3000:]}")
                time.sleep(0.2)
            yield Server(proc, port)
        finally:
            stop_process(proc, 20.0)
            shutil.rmtree(data_dir, ignore_errors=True)


def _ok(port: int, path: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as res:
            return bool(res.status == 200)
    except OSError:
        return False


@dataclass
class Probe:
    """``GET /health`` on a fresh connection, back to back, in a thread; latencies in ms."""

    port: int
    timeout_s: float = 30.0
    latencies_ms: list[float] = field(default_factory=list)
    failures: int = 0
    peak_rss_mb: float = 0.0
    pid: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(self.timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.pid is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.pid))
            started = time.perf_counter()
            if _ok(self.port, "/health", self.timeout_s):
                self.latencies_ms.append((time.perf_counter() - started) * 1000)
            else:
                self.failures += 1
            time.sleep(0.05)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "health_requests": len(lat),
            "health_failures": self.failures,
            "health_p50_ms": round(statistics.median(lat), 2) if lat else None,
            "health_max_ms": round(lat[-1], 2) if lat else None,
            "peak_rss_mb": round(self.peak_rss_mb, 1),
        }


def _send_all(
    port: int,
    head: bytes,
    filler: Callable[[int], bytes],
    total: int,
    *,
    half_close: bool = True,
    tail: bytes = b"",
    chunk: int = MB,
) -> dict[str, Any]:
    """Send ``head`` then ``total`` bytes from ``filler`` (stopping when the server closes), then read the answer."""
    sent = 0
    started = time.perf_counter()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(head)
            while sent < total:
                sock.sendall(filler(min(chunk, total - sent)))
                sent += min(chunk, total - sent)
            sock.sendall(tail)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            answer = f"<{type(exc).__name__} after {sent} bytes>".encode()
        with contextlib.suppress(OSError):
            sock.settimeout(30)
            answer = sock.recv(200) or answer
    return {
        "sent_mb": round(sent / MB, 1),
        "seconds": round(time.perf_counter() - started, 2),
        "answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
    }


def attack_headers(port: int, mb: int, shape: str, line_bytes: int = 16) -> dict[str, Any]:
    total = mb * MB
    if shape == "url":
        head = b"GET /health?q="
        return _send_all(port, head, lambda n: b"a" * n, total)
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    line = b"X-Pad: " + b"a" * max(1, line_bytes - 9) + b"\r\n"

    def lines(n: int) -> bytes:
        count = max(1, n // len(line))
        return line * count

    return _send_all(port, head, lines, total)


def attack_body(server: Server, mb: int) -> dict[str, Any]:
    total = mb * MB
    payload_head = b'{"prompt": "x", "junk": "'
    head = (
        b"POST /framewire/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {total + len(payload_head) + 2}\r\n\r\n".encode()
        + payload_head
    )
    return _send_all(server.port, head, lambda n: b"a" * n, total, half_close=False, tail=b'"}')


async def _frames(port: int, frames: int, frame_bytes: int, with_request_id: bool) -> dict[str, Any]:
    import msgpack
    import websockets

    count = frame_bytes - 32  # one byte per empty map, a few for the headers
    structure = msgpack.packb([{}] * count) if with_request_id else msgpack.packb({"junk": [{}] * count})
    frame = (b"\x81\xaarequest_id" + structure) if with_request_id else structure
    answers: list[str] = []
    started = time.perf_counter()
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/framewire/echo/realtime", max_size=None, open_timeout=30
    ) as ws:
        for _ in range(frames):
            await ws.send(frame)
        for _ in range(frames):
            try:
                reply = await asyncio.wait_for(ws.recv(), 60)
            except (TimeoutError, websockets.ConnectionClosed) as exc:
                answers.append(type(exc).__name__)
                break
            answers.append(reply[:120] if isinstance(reply, str) else f"<binary {len(reply)} bytes>")
    return {
        "frames": frames,
        "frame_bytes": len(frame),
        "seconds": round(time.perf_counter() - started, 2),
        "answers": sorted(set(answers)),
    }


def attack_sockets(server: Server, count: int, hold_s: float, trickle: bool) -> dict[str, Any]:
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        except OSError:
            refused += 1
            continue
        socks.append(s)
    opened = len(socks)
    deadline = time.monotonic() + hold_s
    step = 0
    while time.monotonic() < deadline:
        if trickle:
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b"GET / HTTP/1.1\r\n"[step % 16 : step % 16 + 1])
            step += 1
        time.sleep(1.0)
    closed_by_server = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(4096)
            if data == b"" or data.startswith(b"HTTP/1.1 408") or data.startswith(b"HTTP/1.1 503"):
                closed_by_server += 1
        except BlockingIOError:
            pass
        except OSError:
            closed_by_server += 1
        s.close()
    return {
        "sockets": count,
        "opened": opened,
        "refused_at_connect": refused,
        "held_s": hold_s,
        "closed_by_server": closed_by_server,
        "health_after": _ok(server.port, "/health"),
    }


async def _fetch_stall(port: int, duration_s: float) -> dict[str, Any]:
    """Session A sends frames whose image_url points at a listener that never answers;
    session B sends plain txt2img frames; B's round trips are measured."""
    import msgpack
    import websockets

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/image.jpg"
    base = {"prompt": "a cat", "num_inference_steps": 1, "image_size": {"width": 64, "height": 64}, "seed": 1}
    latencies: list[float] = []
    a_answers: list[str] = []

    async def session_a() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/framewire/lcm/realtime") as ws:
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                await ws.send(msgpack.packb({**base, "image_url": url, "strength": 0.5}))
                with contextlib.suppress(TimeoutError):
                    reply = await asyncio.wait_for(ws.recv(), 1.0)
                    a_answers.append(reply[:160] if isinstance(reply, str) else "<output>")

    async def session_b() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/framewire/lcm/realtime") as ws:
            end = time.monotonic() + duration_s
            seed = 0
            while time.monotonic() < end:
                started = time.perf_counter()
                seed += 1  # a new seed each time: a repeated frame would be answered without running
                await ws.send(msgpack.packb({**base, "seed": seed}))
                await ws.recv()
                latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(session_a(), session_b())
    silent.close()
    lat = sorted(latencies)
    return {
        "b_frames": len(lat),
        "b_p50_ms": round(statistics.median(lat), 1) if lat else None,
        "b_max_ms": round(lat[-1], 1) if lat else None,
        "a_answers": sorted(set(a_answers))[:3],
    }


async def _pixels(port: int, images: int, megapixels: float) -> dict[str, Any]:
    """``images`` sessions each send one image-to-image frame whose PNG has ``megapixels``."""
    import io

    import msgpack
    import websockets
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buffer, format="PNG")  # compresses to little
    frame = {
        "prompt": "x",
        "image_url": buffer.getvalue(),
        "strength": 0.5,
        "num_inference_steps": 1,
        "image_size": {"width": 64, "height": 64},
    }
    answers: list[str] = []
    started = time.perf_counter()

    async def one(i: int) -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}/framewire/lcm/realtime", max_size=None) as ws:
            await ws.send(msgpack.packb({**frame, "request_id": i}))
            reply = await asyncio.wait_for(ws.recv(), 120)
            answers.append(reply[:120] if isinstance(reply, str) else "<output>")

    await asyncio.gather(*(one(i) for i in range(images)))
    return {
        "images": images,
        "image": f"{side}x{side} PNG, {len(buffer.getvalue())} bytes",
        "seconds": round(time.perf_counter() - started, 2),
        "answers": sorted(set(answers)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framewire.bench.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--server-root", type=Path, default=ROOT, help="checkout whose framewire to run")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `framewire serve` argument")
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("headers", help="one connection sending header lines")
    p.add_argument("--mb", type=int, default=256)
    p.add_argument("--line-bytes", type=int, default=16, help="bytes per header line")
    p = sub.add_parser("url", help="one connection sending one request line")
    p.add_argument("--mb", type=int, default=64)
    p = sub.add_parser("frames", help="realtime msgpack frames that decode to huge structures")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--no-request-id", action="store_true", help="put the structure in another field")
    p = sub.add_parser("sockets", help="silent (or trickling) sockets")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--hold-s", type=float, default=30.0)
    p.add_argument("--trickle", action="store_true")
    p.add_argument("--fd-limit", type=int, default=None, help="the server's RLIMIT_NOFILE")
    p = sub.add_parser("body", help="one large JSON body on the run surface")
    p.add_argument("--mb", type=int, default=400)
    p = sub.add_parser("pixels", help="sessions sending large PNGs at once (LCM)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--megapixels", type=float, default=39.0)
    p = sub.add_parser("fetch-stall", help="realtime image_url at a listener that never answers (LCM)")
    p.add_argument("--duration-s", type=float, default=15.0)
    args = parser.parse_args(argv)

    apps = ["--builtin-apps", "echo,lcm" if args.scenario in ("fetch-stall", "pixels") else "echo"]
    with serve([*apps, *args.server_arg], args.server_root, fd_limit=getattr(args, "fd_limit", None)) as server:
        time.sleep(1.0)
        before = rss_mb(server.pid)
        with Probe(server.port, pid=server.pid) as probe:
            time.sleep(1.0)
            if args.scenario in ("headers", "url"):
                result = attack_headers(server.port, args.mb, args.scenario, getattr(args, "line_bytes", 16))
            elif args.scenario == "frames":
                result = asyncio.run(_frames(server.port, args.frames, 4 * MB, not args.no_request_id))
            elif args.scenario == "sockets":
                result = attack_sockets(server, args.count, args.hold_s, args.trickle)
            elif args.scenario == "body":
                result = attack_body(server, args.mb)
            elif args.scenario == "pixels":
                result = asyncio.run(_pixels(server.port, args.images, args.megapixels))
            else:
                result = asyncio.run(_fetch_stall(server.port, args.duration_s))
            time.sleep(2.0)
        after = rss_mb(server.pid)
        out = {
            "scenario": args.scenario,
            "server_root": str(args.server_root),
            **result,
            "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1),
            **probe.summary(),
            "alive": server.proc.poll() is None,
        }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
