"""The load generator: N concurrent realtime sessions over real WebSockets, on loopback.

Each session sends binary msgpack frames, numbered by ``request_id``, either

- **open loop**: at a fixed rate (a canvas app sending what it draws), whatever comes
  back; a session that falls more than one period behind skips the missed ticks and
  counts them (the generator, not the server, was too slow), or
- **closed loop**: the next frame as soon as an answer frees a slot (``inflight`` frames
  outstanding per session), which measures maximum throughput.

Every run has a warm-up, a measured window, and a bounded drain; then it closes its
sessions and returns. The whole run sits under one deadline, so it always stops by
itself. Timing uses ``time.perf_counter`` on this process's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import gc
import ipaddress
import json
import math
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from framewire.bench.stats import SessionLedger, Tally, Window, numeric_timings

clock = time.perf_counter


class Mode(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


def require_loopback(url: str) -> None:
    """Refuse any target that is not this machine: the generator is a load test."""
    host = urlsplit(url).hostname
    if host is None:
        raise ValueError(f"{url!r} has no host")
    if host == "localhost":
        return
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve {host!r}: {exc}") from None
    for address in addresses:
        if not ipaddress.ip_address(address.split("%")[0]).is_loopback:
            raise ValueError(
                f"{url!r} resolves to {address}, not a loopback address; the benchmark runs on loopback only"
            )


@dataclass(frozen=True)
class LoadSpec:
    url: str
    sessions: int
    mode: Mode = Mode.CLOSED
    fps: float = 15.0  # per session, open loop
    inflight: int = 1  # frames outstanding per session, closed loop
    warmup_s: float = 2.0
    window_s: float = 10.0
    drain_s: float = 3.0
    connect_timeout_s: float = 15.0
    connect_concurrency: int = 32
    more_urls: tuple[str, ...] = ()  # several servers (edges): session i uses the (i mod n)-th URL

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError(f"sessions must be >= 1, got {self.sessions}")
        if self.mode is Mode.OPEN and not self.fps > 0:
            raise ValueError(f"open loop needs fps > 0, got {self.fps}")
        if self.inflight < 1:
            raise ValueError(f"inflight must be >= 1, got {self.inflight}")
        if self.window_s <= 0 or self.warmup_s < 0 or self.drain_s < 0:
            raise ValueError("window_s must be > 0; warmup_s and drain_s >= 0")

    def url_for(self, session: int) -> str:
        urls = (self.url, *self.more_urls)
        return urls[session % len(urls)]

    @property
    def deadline_s(self) -> float:
        """Longest a run can take, connects included."""
        return self.connect_timeout_s + self.warmup_s + self.window_s + self.drain_s + 10.0


class Observer(Protocol):
    """Told about the run's phases (e.g. to sample the server's memory and CPU)."""

    def window_started(self) -> None: ...

    def window_ended(self) -> None: ...

    def tick(self) -> None: ...


@dataclass
class Live:
    """Running counts for a progress display; written only by the generator."""

    phase: str = "connecting"
    connected: int = 0
    sent: int = 0
    received: int = 0
    errors: int = 0
    elapsed_s: float = 0.0
    total_s: float = 0.0
    recent_ms: deque[float] = field(default_factory=lambda: deque(maxlen=512))


@dataclass
class LoadResult:
    """Everything one run measured; latencies and timings cover measured frames only."""

    spec: LoadSpec
    window_s: float
    tally: Tally
    latencies_ms: list[float]
    timings: dict[str, list[float]]
    batch_sizes: Counter[int]
    received_in_window: int
    send_lag_ms: list[float]
    skipped_ticks: int
    session_errors: Counter[str]
    error_samples: dict[str, str]
    connect_ms: list[float]
    client_cpu_s: float
    processes: int = 1

    @property
    def throughput_fps(self) -> float:
        return self.received_in_window / self.window_s

    @property
    def client_cpu_fraction(self) -> float:
        """Share of one core each generator process used during the window (on
        average): near 1.0 the generator, not the server, sets the pace."""
        return self.client_cpu_s / self.window_s / self.processes


class _Session:
    """One WebSocket session: a sender and a receiver sharing a ledger."""

    def __init__(
        self,
        index: int,
        ws: ClientConnection,
        spec: LoadSpec,
        window: Window,
        make_frame: Callable[[int], bytes],
        check: Callable[[Mapping[str, Any]], str | None] | None,
        run: _Run,
    ) -> None:
        self.index = index
        self.ws = ws
        self.spec = spec
        self.window = window
        self.make_frame = make_frame
        self.check = check
        self.run = run
        self.ledger = SessionLedger(window)
        self.slots = asyncio.Semaphore(spec.inflight)
        self.closing = False
        self.rid = 0

    async def _send(self, t_s: float) -> None:
        self.rid += 1
        data = self.make_frame(self.rid)
        self.ledger.sent(self.rid, t_s)
        self.run.live.sent += 1
        await self.ws.send(data)

    async def send_closed_loop(self) -> None:
        await asyncio.sleep(max(0.0, self.window.warmup_start_s - clock()))  # all sessions start together
        while True:
            await self.slots.acquire()
            now = clock()
            if not self.window.sending(now):
                return
            await self._send(now)

    async def send_open_loop(self, phase_s: float) -> None:
        period = 1.0 / self.spec.fps
        due = self.window.warmup_start_s + phase_s
        while due < self.window.end_s:
            now = clock()
            if due > now:
                await asyncio.sleep(due - now)
                now = clock()
            elif now - due > period:
                missed = math.floor((now - due) / period)
                if self.window.measured(due):
                    self.run.skipped_ticks += missed
                due += missed * period
                if due >= self.window.end_s:
                    return
            if self.window.measured(now):  # as the ledger decides, by the actual send time
                self.run.send_lag_ms.append((now - due) * 1000.0)
            await self._send(now)
            due += period

    def _release(self, frames: int) -> None:
        for _ in range(frames):
            self.slots.release()

    def _on_output(self, data: bytes, t_s: float) -> None:
        run = self.run
        try:
            output = msgpack.unpackb(data, raw=False)
        except (ValueError, msgpack.UnpackException) as exc:
            run.session_error("BAD_MSGPACK", str(exc))
            return
        rid = output.get("request_id") if isinstance(output, dict) else None
        if not isinstance(rid, int):
            run.session_error("NO_REQUEST_ID", "an output did not echo the request_id")
            return
        problem = self.check(output) if self.check is not None else None
        if problem is not None:
            run.error_samples.setdefault("BAD_OUTPUT", problem)
            run.live.errors += 1
        answer = self.ledger.answered(rid, t_s, valid=problem is None)
        if answer is None:
            run.session_error("UNEXPECTED_OUTPUT", f"output for request_id {rid}, which was not pending")
            return
        run.live.received += 1
        self._release(1 + answer.dropped_before)
        if self.window.measured(t_s):
            run.received_in_window += 1
        latency_ms = answer.latency_s * 1000.0
        run.live.recent_ms.append(latency_ms)
        if answer.measured and problem is None:
            run.latencies_ms.append(latency_ms)
            for key, value in numeric_timings(output).items():
                if key == "batch_size":
                    run.batch_sizes[int(value)] += 1
                else:
                    run.timings.setdefault(key, []).append(value)

    def _on_text(self, text: str) -> None:
        run = self.run
        try:
            message = json.loads(text)
        except ValueError:
            run.session_error("BAD_TEXT", text[:200])
            return
        if not isinstance(message, dict) or message.get("type") != "x-fal-error":
            return  # x-fal-message and other control messages carry no frame
        code = str(message.get("error", "UNKNOWN"))
        reason = str(message.get("reason", ""))
        run.live.errors += 1
        run.error_samples.setdefault(code, reason)
        rid = message.get("request_id")
        if isinstance(rid, int) and self.ledger.failed(rid, code):
            self._release(1)
        else:
            run.session_errors[code] += 1

    async def receive(self) -> None:
        try:
            async for message in self.ws:
                t_s = clock()
                if isinstance(message, str):
                    self._on_text(message)
                else:
                    self._on_output(bytes(message), t_s)
        except ConnectionClosed as exc:
            if not self.closing:
                code = exc.rcvd.code if exc.rcvd is not None else 1006
                self.run.session_error(f"CLOSED_{code}", exc.rcvd.reason if exc.rcvd else "connection lost")
        finally:
            self._release(self.spec.inflight)  # never leave a closed-loop sender waiting


class _Run:
    """Shared state of one run (single event loop, so no locks)."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.latencies_ms: list[float] = []
        self.timings: dict[str, list[float]] = {}
        self.batch_sizes: Counter[int] = Counter()
        self.received_in_window = 0
        self.send_lag_ms: list[float] = []
        self.skipped_ticks = 0
        self.session_errors: Counter[str] = Counter()
        self.error_samples: dict[str, str] = {}
        self.connect_ms: list[float] = []

    def session_error(self, code: str, reason: str) -> None:
        self.session_errors[code] += 1
        self.error_samples.setdefault(code, reason)
        self.live.errors += 1


async def _connect(url: str, spec: LoadSpec, gate: asyncio.Semaphore, run: _Run) -> ClientConnection | None:
    async with gate:
        started = clock()
        try:
            ws = await connect(
                url,
                compression=None,  # as browsers and the server: JPEG does not compress
                max_size=None,
                ping_interval=None,  # keepalive pings would add frames the server must answer
                open_timeout=spec.connect_timeout_s,
                close_timeout=2.0,
            )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            code = f"CONNECT_{exc.response.status_code}" if isinstance(exc, InvalidStatus) else "CONNECT_FAILED"
            run.session_error(code, f"{type(exc).__name__}: {exc}")
            return None
        run.connect_ms.append((clock() - started) * 1000.0)
        run.live.connected += 1
        return ws


async def generate(
    spec: LoadSpec,
    frame_makers: Sequence[Callable[[int], bytes]],
    *,
    check: Callable[[Mapping[str, Any]], str | None] | None = None,
    observers: Sequence[Observer] = (),
    live: Live | None = None,
    seed: int = 0,
    start_at_s: float | None = None,
) -> LoadResult:
    """Run one load test against ``spec.url`` and return what it measured.

    ``frame_makers[i]`` encodes session *i*'s frame for a request id. ``check`` validates
    an output (None = every output with the right ``request_id`` is good). The warm-up
    starts once every session is connected, or at ``start_at_s`` (on :data:`clock`) when
    given, so several generator processes can start together.
    """
    for url in (spec.url, *spec.more_urls):
        require_loopback(url)
    if len(frame_makers) != spec.sessions:
        raise ValueError(f"need one frame maker per session: {len(frame_makers)} for {spec.sessions}")
    live = live if live is not None else Live()
    run = _Run(live)
    rng = random.Random(seed)
    sessions: list[_Session] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(spec.deadline_s):
            gate = asyncio.Semaphore(spec.connect_concurrency)
            conns = await asyncio.gather(*(_connect(spec.url_for(i), spec, gate, run) for i in range(spec.sessions)))
            # The generator's own garbage collector would pause every session at once;
            # freezing what exists now keeps collections short during the window.
            gc.collect()
            gc.freeze()
            t0 = clock() + 0.05
            if start_at_s is not None:
                t0 = max(t0, start_at_s)
            window = Window.after(t0, spec.warmup_s, spec.window_s)
            live.total_s = spec.warmup_s + spec.window_s
            sessions = [
                _Session(i, ws, spec, window, frame_makers[i], check, run)
                for i, ws in enumerate(conns)
                if ws is not None
            ]
            tasks = [asyncio.create_task(s.receive()) for s in sessions]
            if spec.mode is Mode.OPEN:
                period = 1.0 / spec.fps
                senders = [asyncio.create_task(s.send_open_loop(rng.uniform(0, period))) for s in sessions]
            else:
                senders = [asyncio.create_task(s.send_closed_loop()) for s in sessions]
            tasks += senders
            cpu = await _watch_phases(window, live, observers)
            # Senders are done sending now; one may still wait for a slot a stalled
            # server never frees (closed loop) or on a full socket buffer.
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            live.phase = "drain"
            drain_end = clock() + spec.drain_s
            while any(s.ledger.in_flight for s in sessions) and clock() < drain_end:
                await asyncio.sleep(0.02)
            live.phase = "closing"
            for s in sessions:
                s.closing = True
            await asyncio.gather(*(s.ws.close() for s in sessions), return_exceptions=True)
            if tasks:
                await asyncio.wait(tasks, timeout=3.0)
    except TimeoutError:
        raise TimeoutError(f"the run did not finish within its {spec.deadline_s:.0f} s deadline") from None
    finally:
        gc.unfreeze()
        for task in tasks:
            task.cancel()
        for s in sessions:
            s.closing = True
            if not s.ws.transport.is_closing():  # only after an error or a timeout
                s.ws.transport.abort()
    tally = Tally()
    for s in sessions:
        tally.add(s.ledger.finish())
    live.phase = "done"
    return LoadResult(
        spec=spec,
        window_s=window.duration_s,
        tally=tally,
        latencies_ms=run.latencies_ms,
        timings=run.timings,
        batch_sizes=run.batch_sizes,
        received_in_window=run.received_in_window,
        send_lag_ms=run.send_lag_ms,
        skipped_ticks=run.skipped_ticks,
        session_errors=run.session_errors,
        error_samples=run.error_samples,
        connect_ms=run.connect_ms,
        client_cpu_s=cpu,
    )


async def _watch_phases(window: Window, live: Live, observers: Sequence[Observer], tick_s: float = 0.25) -> float:
    """Mark the phases, tick the observers; returns the CPU seconds this process used
    during the window."""
    cpu_start = 0.0
    started = False
    while True:
        now = clock()
        live.elapsed_s = max(0.0, now - window.warmup_start_s)
        if not started and now >= window.start_s:
            started = True
            live.phase = "measure"
            cpu_start = time.process_time()
            for obs in observers:
                obs.window_started()
        if now >= window.end_s:
            cpu = time.process_time() - cpu_start
            for obs in observers:
                obs.window_ended()
            return cpu
        if not started:
            live.phase = "warm-up"
        for obs in observers:
            obs.tick()
        next_edge = window.start_s if not started else window.end_s
        await asyncio.sleep(max(0.0, min(tick_s, next_edge - now)))


# -- several generator processes ------------------------------------------------------

#: Per-process live counts (sent, received, errors, connected), shared with the parent.
_SHARED: Any = None
_FIELDS = 4


def _init_child(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


class _ShareLive:
    """Copies a child's live counts into its slot of the shared array on every tick."""

    def __init__(self, live: Live, slot: int) -> None:
        self.live, self.slot = live, slot

    def window_started(self) -> None:
        self.tick()

    def window_ended(self) -> None:
        self.tick()

    def tick(self) -> None:
        if _SHARED is not None:
            base = self.slot * _FIELDS
            live = self.live
            _SHARED[base : base + _FIELDS] = [live.sent, live.received, live.errors, live.connected]


def _child(
    spec: LoadSpec,
    inputs: list[dict[str, Any]],
    check: Callable[[Mapping[str, Any]], str | None] | None,
    start_wall_s: float,
    seed: int,
    slot: int,
) -> LoadResult:
    """One generator process's share of a run (executed in a child process)."""
    from framewire.bench.payload import FrameMaker

    start_at_s = clock() + (start_wall_s - time.time())
    live = Live()
    coro = generate(
        spec,
        [FrameMaker(fields) for fields in inputs],
        check=check,
        observers=[_ShareLive(live, slot)],
        live=live,
        seed=seed,
        start_at_s=start_at_s,
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def merge(results: Sequence[LoadResult], spec: LoadSpec) -> LoadResult:
    """One result from the results of processes that shared a run's sessions."""
    tally = Tally()
    out = LoadResult(
        spec=spec,
        window_s=max((r.window_s for r in results), default=spec.window_s),
        tally=tally,
        latencies_ms=[],
        timings={},
        batch_sizes=Counter(),
        received_in_window=0,
        send_lag_ms=[],
        skipped_ticks=0,
        session_errors=Counter(),
        error_samples={},
        connect_ms=[],
        client_cpu_s=0.0,
        processes=len(results),
    )
    for r in results:
        tally.add(r.tally)
        out.latencies_ms += r.latencies_ms
        for key, values in r.timings.items():
            out.timings.setdefault(key, []).extend(values)
        out.batch_sizes.update(r.batch_sizes)
        out.received_in_window += r.received_in_window
        out.send_lag_ms += r.send_lag_ms
        out.skipped_ticks += r.skipped_ticks
        out.session_errors.update(r.session_errors)
        for code, reason in r.error_samples.items():
            out.error_samples.setdefault(code, reason)
        out.connect_ms += r.connect_ms
        out.client_cpu_s += r.client_cpu_s
    return out


async def generate_in_processes(
    spec: LoadSpec,
    inputs: Sequence[dict[str, Any]],
    processes: int,
    *,
    check: Callable[[Mapping[str, Any]], str | None] | None = None,
    observers: Sequence[Observer] = (),
    live: Live | None = None,
    seed: int = 0,
) -> LoadResult:
    """Like :func:`generate`, with the sessions split over ``processes`` generator
    processes (each with its own interpreter and event loop) that start their warm-up
    at the same moment. ``inputs[i]`` is session *i*'s input map; ``check`` must be a
    module-level function (it is sent to the children by name)."""
    import concurrent.futures
    import multiprocessing

    require_loopback(spec.url)
    if not 1 <= processes <= spec.sessions:
        raise ValueError(f"processes must be within 1..sessions ({spec.sessions}), got {processes}")
    if len(inputs) != spec.sessions:
        raise ValueError(f"need one input per session: {len(inputs)} for {spec.sessions}")
    shown = live if live is not None else Live()
    ctx = multiprocessing.get_context("spawn")  # no fork of a running event loop
    shared = ctx.Array("q", processes * _FIELDS, lock=False)
    # Children import, connect and wait; the lead covers that with room to spare.
    lead_s = 2.0 + spec.sessions * 0.01
    start_wall_s = time.time() + lead_s
    t0 = clock() + lead_s
    window = Window.after(t0, spec.warmup_s, spec.window_s)
    shown.total_s = spec.warmup_s + spec.window_s
    loop = asyncio.get_running_loop()

    class _Totals:
        def window_started(self) -> None:
            self.tick()

        def window_ended(self) -> None:
            self.tick()

        def tick(self) -> None:
            counts = [sum(shared[i * _FIELDS + f] for i in range(processes)) for f in range(_FIELDS)]
            shown.sent, shown.received, shown.errors, shown.connected = counts

    with concurrent.futures.ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_init_child, initargs=(shared,)
    ) as pool:
        futures = []
        for i in range(processes):
            share = list(inputs[i::processes])
            child_spec = dataclasses.replace(spec, sessions=len(share))
            futures.append(loop.run_in_executor(pool, _child, child_spec, share, check, start_wall_s, seed + i, i))
        async with asyncio.timeout(spec.deadline_s + lead_s + 30.0):
            await asyncio.sleep(max(0.0, t0 - clock()))
            await _watch_phases(window, shown, [_Totals(), *observers])
            shown.phase = "drain"
            results = await asyncio.gather(*futures)
    shown.phase = "done"
    return merge(results, spec)
