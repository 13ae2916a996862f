"""Live video over WebRTC against the WebSocket path, measured in one run on one server.

One ``framewire serve`` process on loopback (the echo app by default, which returns each
frame: the transport and the server's own work are what is measured). Two phases, one
after the other, each with ``--sessions`` sessions at ``--fps``:

- **video**: aiortc clients (:class:`framewire.bench.video_client.VideoClient`) send the
  synthetic camera (a numbered moving pattern, ``--width`` x ``--height``) to
  ``POST …/start-session`` sessions; each output is matched to its input by timestamp.
  *Glass to glass* is from the moment the camera frame leaves the track (before the
  client encodes it) to the moment the client has decoded the output: both encodes, both
  decodes, the server's colour conversion, the app, and loopback. Camera capture and
  display are not in it.
- **websocket**: the realtime WebSocket path (:mod:`framewire.bench.loadgen`, open loop)
  with a JPEG of the same size per frame; its round trip is send to reply.

Per phase: p50/p99 latency of frames sent during the window, output fps per session,
frames that never came back (``lost``: replaced on the server by a newer one, or dropped
on the way), the server's own drop count, the engine's time per frame (queue and app, from
the outputs' timings), and server CPU per delivered frame.
Client and server share the machine's cores, so the numbers include that contention; each
row gives the clients' CPU too (one process: at 100 % of a core or more, the clients, not
the server, set the pace).

    framewire bench video [--sessions 1,4] [--fps 30] [--window-s 10] [--out FILE]
    framewire bench video --app framewire/lcm --server-arg=--weights=lcm=random  # the tiny LCM
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framewire.bench import loadgen, payload, servers
from framewire.bench.stats import summarize
from framewire.bench.video_client import StartRefused, VideoClient

ECHO = "framewire/echo"


@dataclass(frozen=True)
class Phase:
    """One measured phase: ``sessions`` sessions of ``app`` at ``fps`` frames of ``width`` x ``height``."""

    app: str
    sessions: int
    fps: float
    width: int
    height: int
    warmup_s: float
    window_s: float
    drain_s: float  # longest wait after the window for outputs of frames sent in it


def _window_stats(
    latencies_ms: list[float], delivered: int, sent: int, sessions: int, window_s: float
) -> dict[str, Any]:
    lat = summarize(latencies_ms)
    return {
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "frames_sent": sent,
        "frames_delivered": delivered,
        "fps_per_session": delivered / window_s / sessions,
        "lost": max(sent - delivered, 0),
    }


#: Fields of the WebSocket workload's input that a video session does not take (the frame
#: is the image, and sets the output's size; outputs are video, not files).
NOT_VIDEO_PARAMS = ("image_url", "image_size", "sync_mode")


def video_params(app: str, session: int) -> dict[str, Any]:
    """Session ``session``'s parameters: the WebSocket workload's, without the frame's fields."""
    fields = payload.workload_for(app).make_input(payload.make_jpeg(2000, 16), session)
    return {k: v for k, v in fields.items() if k not in NOT_VIDEO_PARAMS}


async def measure_video(base_url: str, phase: Phase, observer: servers.ServerObserver) -> dict[str, Any]:
    """One video phase: ``phase.sessions`` WebRTC sessions at ``phase.fps``; see the module docstring."""
    app, sessions, fps, window_s = phase.app, phase.sessions, phase.fps, phase.window_s
    clients = [
        VideoClient(base_url, app, params=video_params(app, i), width=phase.width, height=phase.height, fps=fps)
        for i in range(sessions)
    ]
    try:
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.sleep(phase.warmup_s)
        start, cpu_start = time.perf_counter(), time.process_time()
        observer.window_started()
        await asyncio.sleep(window_s)
        end, client_cpu_s = time.perf_counter(), time.process_time() - cpu_start
        observer.window_ended()
        await asyncio.sleep(phase.drain_s)  # frames sent at the window's end come back
        latencies: list[float] = []
        engine_ms: list[float] = []
        sent = delivered = server_dropped = 0
        for c in clients:
            in_window = {i for i, t in c.track.sent_s.items() if start <= t < end}
            sent += len(in_window)
            matched = [m for m in c.matched() if m.index in in_window]
            delivered += len({m.index for m in matched})
            latencies += [m.latency_ms for m in matched]
            engine_ms += [m.event["engine_ms"] for m in matched if m.event is not None and "engine_ms" in m.event]
            before = [
                e["dropped"] for e in c.frame_events() if round(e["pts"] * fps / 90_000) < min(in_window, default=0)
            ]
            during = [e["dropped"] for e in c.frame_events() if round(e["pts"] * fps / 90_000) in in_window]
            if during:
                server_dropped += max(during) - max(before, default=0)
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    out = _window_stats(latencies, delivered, sent, sessions, window_s)
    out["server_dropped"] = server_dropped
    out["engine_p50_ms"] = summarize(engine_ms).get("p50")
    out["client_cpu_pct"] = 100.0 * client_cpu_s / window_s  # the clients' encode and decode, all threads
    return out


async def measure_websocket(ws_base: str, phase: Phase, observer: servers.ServerObserver) -> dict[str, Any]:
    """One WebSocket phase at the same rate with a JPEG of the camera's size."""
    app, sessions, width, height = phase.app, phase.sessions, phase.width, phase.height
    workload = payload.workload_for(app)
    jpeg = payload.make_jpeg(width * height // 5, width, height)  # about what a camera JPEG of this size weighs
    # Without a seed no two frames are the same input: every frame runs, as camera frames do.
    inputs = [{k: v for k, v in f.items() if k != "seed"} for f in payload.session_inputs(workload, jpeg, sessions)]
    spec = loadgen.LoadSpec(
        url=f"{ws_base}{workload.ws_path}",
        sessions=sessions,
        mode=loadgen.Mode.OPEN,
        fps=phase.fps,
        warmup_s=phase.warmup_s,
        window_s=phase.window_s,
        drain_s=phase.drain_s,
    )
    result = await loadgen.generate(spec, [payload.FrameMaker(f) for f in inputs], observers=[observer])
    out = _window_stats(result.latencies_ms, result.tally.ok, result.tally.sent, sessions, result.window_s)
    out["server_dropped"] = result.tally.dropped
    out["engine_p50_ms"] = summarize(result.timings.get("engine_ms", [])).get("p50")
    out["client_cpu_pct"] = 100.0 * result.client_cpu_s / result.window_s
    out["jpeg_bytes"] = len(jpeg)
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="framewire-video-bench-") as logs:
        builtin = payload.workload_for(args.app).builtin
        if builtin is None:
            raise ValueError(f"--app {args.app}: not a built-in app this benchmark knows how to start")
        config = servers.ServerConfig(servers.FRAMEWIRE, builtin_apps=(builtin,), extra_args=tuple(args.server_arg))
        server = servers.start(config, Path(logs), startup_timeout_s=args.startup_timeout_s)
        try:
            http_base = server.base_url.replace("ws://", "http://", 1)
            for sessions in args.sessions:
                for path in ("video", "websocket"):
                    observer = servers.ServerObserver(server.pid)
                    phase = Phase(
                        args.app,
                        sessions,
                        args.fps,
                        args.width,
                        args.height,
                        args.warmup_s,
                        args.window_s,
                        args.drain_s,
                    )
                    if path == "video":
                        row = asyncio.run(measure_video(http_base, phase, observer))
                    else:
                        row = asyncio.run(measure_websocket(server.base_url, phase, observer))
                    server.check_alive()
                    seen = observer.results(args.window_s)
                    cpu_s = seen.get("server_cpu_s")
                    row.update(
                        path=path,
                        sessions=sessions,
                        fps=args.fps,
                        server_cpu_pct=seen.get("server_cpu_pct"),
                        server_cpu_ms_per_frame=(
                            None
                            if cpu_s is None or not row["frames_delivered"]
                            else 1000 * cpu_s / row["frames_delivered"]
                        ),
                    )
                    rows.append(row)
                    print(_line(row), flush=True)
        finally:
            server.stop()
    return rows


def _fmt(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


HEADER = (
    f"{'path':<10}{'sessions':>9}{'p50 ms':>9}{'p99 ms':>9}{'fps/session':>12}{'sent':>7}{'lost':>6}"
    f"{'srv drops':>10}{'engine p50':>11}{'CPU ms/frame':>13}{'client CPU':>11}"
)


def _line(row: dict[str, Any]) -> str:
    return (
        f"{row['path']:<10}{row['sessions']:>9}{_fmt(row['p50_ms']):>9}{_fmt(row['p99_ms']):>9}"
        f"{_fmt(row['fps_per_session']):>12}{row['frames_sent']:>7}{row['lost']:>6}{row['server_dropped']:>10}"
        f"{_fmt(row['engine_p50_ms']):>11}"
        f"{_fmt(row['server_cpu_ms_per_frame'], 2):>13}{_fmt(row['client_cpu_pct'], 0) + ' %':>11}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framewire bench video", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--app", default=ECHO, help="an app with a video endpoint and a realtime one")
    parser.add_argument("--sessions", type=lambda t: [int(s) for s in t.split(",")], default=[1, 4])
    parser.add_argument("--fps", type=float, default=30.0, help="camera frames per second per session")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--drain-s", type=float, default=2.0, help="wait for outputs of the window's last frames")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="an extra `framewire serve` argument (repeatable), e.g. --server-arg=--weights=lcm=random",
    )
    parser.add_argument("--startup-timeout-s", type=float, default=120.0)
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.sessions) < 1 or args.fps <= 0 or args.window_s <= 0:
        parser.error("--sessions must be >= 1, --fps and --window-s > 0")
    print(HEADER, flush=True)
    try:
        rows = run(args)
    except (servers.ServerFailed, StartRefused, TimeoutError, OSError, ValueError) as exc:
        print(f"framewire bench video: {exc}", file=sys.stderr)
        return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": sys.argv, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
