"""Two edges and two workers as separate processes on 127.0.0.1, and every fault of the link.

The worker processes serve ``tests.cluster.apps:SleepApp`` (a fake CPU engine whose
batches sleep); each output names the pid that ran it and the frames its batch held.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from framewire.cluster import wire
from framewire.engine.api import AppRegistry
from tests.cluster.apps import SleepApp
from tests.cluster.processes import (
    SECRET,
    Session,
    edge_process,
    get_json,
    metrics,
    post_json,
    ready_workers,
    two_workers_and_an_edge,
    until,
    worker_process,
)
from tests.conftest import free_port
from tests.gateway.test_live import make_self_signed_cert

pytestmark = pytest.mark.slow


async def _queue_result(
    queue_port: int, body: dict[str, object], timeout_s: float = 20.0
) -> tuple[str, dict[str, object]]:
    """Submit a job on the queue surface and wait for it: (request id, result)."""
    status, submitted = await asyncio.to_thread(post_json, queue_port, "/test/sleep", body)
    assert status == 200, submitted
    request_id = submitted["request_id"]
    deadline = time.monotonic() + timeout_s
    while True:
        _, state = await asyncio.to_thread(get_json, queue_port, f"/test/sleep/requests/{request_id}/status")
        if state["status"] == "COMPLETED":
            break
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    status, result = await asyncio.to_thread(get_json, queue_port, f"/test/sleep/requests/{request_id}")
    assert status == 200, result
    return request_id, dict(result)


async def test_two_edges_and_two_workers_serve_realtime_run_and_queue_batching_across_edges() -> None:
    with (
        worker_process("w1") as (w1, p1),
        worker_process("w2") as (w2, p2),
        edge_process([f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]) as (_, edge_a, queue_a),
        edge_process([f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]) as (_, edge_b, _queue_b),
    ):
        # Two sessions per edge: least-loaded placement puts one of each edge on each worker.
        sessions = [await Session.open(port) for port in (edge_a, edge_a, edge_b, edge_b)]
        origins = ["a", "a", "b", "b"]
        for rnd in range(3):
            # Edge a's frames keep each worker busy while frames of both edges gather behind them.
            for i in (0, 1):
                await sessions[i].send(100 * i + 2 * rnd, sleep_ms=300, origin="a")
            await asyncio.sleep(0.1)
            for i, session in enumerate(sessions):
                await session.send(100 * i + 2 * rnd + 1, origin=origins[i])
            for i, session in enumerate(sessions):
                await session.receive(2 * (rnd + 1) if i < 2 else rnd + 1)
        outputs = [out for s in sessions for out in s.outputs.values()]
        assert not [e for s in sessions for e in s.errors]
        assert {out["pid"] for out in outputs} == {w1.pid, w2.pid}
        mixed = [o["batch"] for o in outputs if {x.split(":")[0] for x in o["batch"]} == {"a", "b"}]
        assert mixed, "no batch held frames from both edges"
        for session in sessions:
            await session.close()

        status, body = await asyncio.to_thread(post_json, edge_a, "/test/sleep", {"n": 7})
        assert status == 200 and body["n"] == 7 and body["pid"] in (w1.pid, w2.pid)
        _, result = await _queue_result(queue_a, {"n": 8})
        assert result["n"] == 8 and result["pid"] in (w1.pid, w2.pid)

        _, ready = await asyncio.to_thread(get_json, edge_b, "/ready")
        assert ready["ready"] is True and ready["unserved_apps"] == []
        assert {w["worker"]: w["state"] for w in ready["workers"]} == {"w1": "ready", "w2": "ready"}
        _, model = await asyncio.to_thread(get_json, edge_b, "/models/test/sleep")
        assert sorted(w["worker"] for w in model["workers"]) == ["w1", "w2"]
        text = await asyncio.to_thread(metrics, edge_a)
        assert f'framewire_worker_up{{address="127.0.0.1:{p1}",worker="w1"}} 1.0' in text
        assert 'framewire_worker_batch_size{endpoint="test/sleep/realtime",worker="w1"}' in text


async def _learn_home(session: Session, n: int = 0) -> int:
    await session.send(n)
    await session.receive(len(session.outputs) + 1)
    return int(session.outputs[n]["pid"])


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
async def test_a_dead_or_frozen_worker_moves_its_sessions_within_3_s(fault: str) -> None:
    with two_workers_and_an_edge() as (w1, w2, edge, port, _):
        await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="both workers")
        session = await Session.open(port)
        home = await _learn_home(session)
        victim, survivor = (w1, w2) if home == w1.pid else (w2, w1)
        for n in (1, 2):  # in flight at the worker when it goes
            await session.send(n, sleep_ms=1500)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        victim.signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGSTOP)
        await session.receive(3, timeout_s=5.0)
        took_s = time.monotonic() - started
        assert took_s < 3.0, f"the frames in flight were answered after {took_s:.1f} s"
        assert [(e["error"], e["request_id"]) for e in session.errors] == [
            ("ENGINE_RESTARTING", 1),
            ("ENGINE_RESTARTING", 2),
        ]
        for n in (3, 4):  # the same session goes on, on the other worker
            await session.send(n)
        await session.receive(5)
        assert {session.outputs[n]["pid"] for n in (3, 4)} == {survivor.pid}
        assert session.closed is None and len(session.errors) == 2
        await session.close()
        if fault == "SIGSTOP":  # thawed, it is reached again and takes new sessions
            victim.signal(signal.SIGCONT)
            await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="the worker to come back")
            fresh = [await Session.open(port) for _ in range(2)]  # held open: the second goes to the idle one
            assert {await _learn_home(f) for f in fresh} == {victim.pid, survivor.pid}
            for f in fresh:
                await f.close()
        assert "lost" in edge.output()


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
async def test_a_queue_job_on_a_lost_worker_runs_again_and_completes_once(fault: str) -> None:
    with two_workers_and_an_edge() as (w1, w2, _, port, queue_port):
        await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="both workers")
        job = asyncio.create_task(_queue_result(queue_port, {"n": 5, "sleep_ms": 1500}))
        holder: list[str] = []

        def running_somewhere() -> bool:
            for line in metrics(port).splitlines():
                if line.startswith("framewire_worker_requests{") and not line.endswith(" 0.0"):
                    holder.append(line.split('worker="')[1].split('"')[0])
                    return True
            return False

        await until(running_somewhere, what="the job to reach a worker")
        victim, survivor = (w1, w2) if holder[0] == "w1" else (w2, w1)
        victim.signal(signal.SIGKILL if fault == "SIGKILL" else signal.SIGSTOP)
        request_id, result = await asyncio.wait_for(job, 20.0)
        assert result["n"] == 5 and result["pid"] == survivor.pid
        victim.signal(signal.SIGCONT)  # a thawed worker finishes its copy; nobody takes that answer
        await asyncio.sleep(2.0)
        _, again = await asyncio.to_thread(get_json, queue_port, f"/test/sleep/requests/{request_id}")
        assert again["pid"] == survivor.pid


async def test_a_dropped_link_moves_sessions_and_the_worker_is_reached_again() -> None:
    proxy = _Proxy()
    with worker_process("w1") as (w1, p1), worker_process("w2") as (w2, p2):
        proxy_port = await proxy.start(p1)
        try:
            with edge_process([f"127.0.0.1:{proxy_port}", f"127.0.0.1:{p2}"]) as (_, port, _):
                await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="both workers")
                sessions = [await Session.open(port) for _ in range(2)]
                behind_proxy = None
                for session in sessions:
                    if await _learn_home(session) == w1.pid:
                        behind_proxy = session
                assert behind_proxy is not None
                await behind_proxy.send(1, sleep_ms=1000)
                await asyncio.sleep(0.2)
                proxy.drop()  # both directions reset, the processes untouched
                await behind_proxy.receive(2, timeout_s=5.0)
                assert [e["error"] for e in behind_proxy.errors] == ["ENGINE_RESTARTING"]
                await behind_proxy.send(2)
                await behind_proxy.receive(3)
                assert behind_proxy.outputs[2]["pid"] == w2.pid
                await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="the link to be made again")
                assert proxy.connections >= 2
                for session in sessions:
                    await session.close()
        finally:
            await proxy.stop()


async def test_a_worker_with_a_wrong_secret_gets_no_frames_and_the_edge_stays_up() -> None:
    with (
        worker_process("good") as (good, p1),
        worker_process("bad", secret="wrong-secret-" + "q" * 32) as (bad, p2),
        edge_process([f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"]) as (edge, port, _),
    ):
        await until(lambda: ready_workers(port).get("bad") == "refused", what="the refusal")
        assert ready_workers(port)["good"] == "ready"
        session = await Session.open(port)
        for n in range(4):
            await session.send(n)
        await session.receive(4)
        assert {o["pid"] for o in session.outputs.values()} == {good.pid}
        await session.close()
        assert "wrong worker secret" in bad.output()
        assert "AUTH_FAILED" in edge.output()


async def test_a_malformed_message_from_a_worker_moves_its_sessions_and_the_edge_stays_up() -> None:
    registry = AppRegistry([SleepApp()])
    seen: list[list[object]] = []

    async def rogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Knows the secret and serves test/sleep, then answers a frame with bytes that are not msgpack."""
        enc, dec = wire.Encoder(), wire.Decoder()
        nonce = wire.new_nonce()
        writer.write(enc.pack([wire.Kind.HELLO, wire.PROTOCOL_VERSION, "rogue", nonce]))
        while True:
            data = await reader.read(1 << 20)
            if not data:
                break
            for message in dec.feed(data):
                seen.append(message)
                if message[0] == wire.Kind.AUTH:
                    info = wire.WorkerInfo("rogue", "cpu", 0, wire.describe_apps(registry), wire.WorkerLoad())
                    info.load.state = wire.WorkerState.READY
                    proof = wire.worker_proof(SECRET.encode(), message[3], nonce)
                    writer.write(enc.pack([wire.Kind.WELCOME, proof, info.to_wire()]))
                elif message[0] == wire.Kind.PING:
                    writer.write(enc.pack([wire.Kind.PONG, message[1], info.load.to_wire()]))
                elif message[0] == wire.Kind.FRAME:
                    writer.write(b"\xc1\xc1\xc1")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(rogue, "127.0.0.1", 0)
    rogue_port = server.sockets[0].getsockname()[1]
    try:
        with (
            worker_process("w1") as (w1, p1),
            edge_process([f"127.0.0.1:{rogue_port}", f"127.0.0.1:{p1}"]) as (edge, port, _),
        ):
            await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="both workers")
            sessions = [await Session.open(port) for _ in range(2)]  # one of them lands on the rogue
            for session in sessions:
                await session.send(1)
            for session in sessions:
                await session.receive(1)
            errors = [e["error"] for s in sessions for e in s.errors]
            assert errors == ["ENGINE_RESTARTING"]
            for session in sessions:
                await session.send(2)
                await session.receive(2)
                assert session.outputs[2]["pid"] == w1.pid and session.closed is None
            status, _ = await asyncio.to_thread(get_json, port, "/health")
            assert status == 200
            assert "undecodable link data" in edge.output()
            for session in sessions:
                await session.close()
    finally:
        server.close()


async def test_a_draining_worker_hands_its_sessions_over_and_exits_cleanly() -> None:
    with two_workers_and_an_edge() as (w1, w2, _, port, _):
        await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="both workers")
        session = await Session.open(port)
        home = await _learn_home(session)
        victim, survivor = (w1, w2) if home == w1.pid else (w2, w1)
        await session.send(1, sleep_ms=500)
        await asyncio.sleep(0.1)
        victim.signal(signal.SIGTERM)
        label = "w1" if victim is w1 else "w2"
        await until(lambda: ready_workers(port)[label] == "draining", what="the edge to hear of the drain")
        await session.send(2)  # waits at the edge for frame 1, then goes to the other worker
        await session.receive(3, timeout_s=10.0)
        assert not session.errors
        assert session.outputs[1]["pid"] == victim.pid  # finished where it was running
        assert session.outputs[2]["pid"] == survivor.pid
        assert await asyncio.to_thread(victim.proc.wait, 10) == 0
        await session.close()


async def test_serve_devices_starts_supervises_and_stops_its_workers() -> None:
    import psutil

    with edge_process(extra=("--devices", "cpu,cpu")) as (edge, port, _):
        await until(lambda: ready_workers(port) == {"cpu#1": "ready", "cpu#2": "ready"}, what="two local workers")
        children = psutil.Process(edge.pid).children()
        assert len(children) == 2
        session = await Session.open(port)
        home = await _learn_home(session)
        assert home in {c.pid for c in children}
        psutil.Process(home).kill()
        await asyncio.sleep(0.3)  # the reset reaches the edge
        await session.send(1)
        await session.receive(2)
        assert session.outputs[1]["pid"] != home  # moved to the other local worker
        await session.close()
        await until(lambda: len(psutil.Process(edge.pid).children()) == 2, what="the worker to be started again")
        await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="it to be ready again")
        pids = [c.pid for c in psutil.Process(edge.pid).children()]
    assert edge.proc.returncode is not None
    await until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids))


class _Proxy:
    """A TCP relay between an edge and a worker whose connections the test can cut."""

    def __init__(self) -> None:
        self.connections = 0
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._server: asyncio.Server | None = None

    async def start(self, target_port: int) -> int:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            self._pairs.append((writer, up_writer))

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(1 << 16):
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        self._server = await asyncio.start_server(relay, "127.0.0.1", free_port())
        return int(self._server.sockets[0].getsockname()[1])

    def drop(self) -> None:
        for a, b in self._pairs:
            for writer in (a, b):
                writer.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        self.drop()
        if self._server is not None:
            self._server.close()


async def test_links_over_tls_verify_the_workers_certificate(tmp_path: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    tls = ("--ssl-certfile", cert, "--ssl-keyfile", key)
    with worker_process("tls", extra=tls) as (worker, port):
        assert "at tls://" in worker.output()
        with edge_process([f"127.0.0.1:{port}"], extra=("--worker-cafile", cert)) as (_, edge, _):
            session = await Session.open(edge)
            assert await _learn_home(session) == worker.pid
            await session.close()
        (tmp_path / "other").mkdir()
        other, _ = make_self_signed_cert(tmp_path / "other")  # a CA that did not sign the worker's certificate
        with edge_process([f"127.0.0.1:{port}"], extra=("--worker-cafile", other), ready=False) as (edge_proc, edge, _):
            await until(lambda: "certificate verify failed" in edge_proc.output(), what="the refused certificate")
            assert ready_workers(edge) == {"127.0.0.1:" + str(port): "connecting"}
        with edge_process([f"127.0.0.1:{port}"], ready=False) as (edge_proc, edge, _):  # plain TCP to a TLS worker
            await until(
                lambda: "does it expect TLS" in edge_proc.output(), timeout_s=15.0, what="the handshake timeout"
            )
            assert set(ready_workers(edge).values()) == {"connecting"}


async def test_local_workers_stop_when_their_edge_is_killed() -> None:
    import psutil

    with edge_process(extra=("--devices", "cpu")) as (edge, port, _):
        await until(lambda: set(ready_workers(port).values()) == {"ready"}, what="the local worker")
        (child,) = psutil.Process(edge.pid).children()
        edge.signal(signal.SIGKILL)
        await until(lambda: not child.is_running() or child.status() == "zombie", what="the orphan to stop")


def test_devices_auto_without_a_gpu_names_the_fix() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--builtin-apps", "echo", "--devices", "auto"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60)
    assert done.returncode == 2
    assert "--devices auto found no GPU" in done.stderr and "--devices cpu" in done.stderr


async def test_a_worker_process_answers_bad_messages_and_keeps_serving_its_edges() -> None:
    with worker_process("w1") as (worker, port), edge_process([f"127.0.0.1:{port}"]) as (_, edge, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        enc, dec = wire.Encoder(), wire.Decoder()
        hello = dec.feed(await reader.read(65536))[0]
        nonce = wire.new_nonce()
        writer.write(
            enc.pack(
                [
                    wire.Kind.AUTH,
                    wire.PROTOCOL_VERSION,
                    "raw",
                    nonce,
                    wire.edge_proof(SECRET.encode(), hello[3], nonce),
                    {},
                ]
            )
        )
        assert dec.feed(await reader.read(65536))[0][0] == wire.Kind.WELCOME
        writer.write(enc.pack([wire.Kind.CALL, 1, "test/sleep", "high", None, False, {}]))  # priority not an int
        reply = dec.feed(await asyncio.wait_for(reader.read(65536), 5))[0]
        assert reply[0] == wire.Kind.ERROR and "priority" in reply[2]
        writer.write(b"\xc1" * 8)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        session = await Session.open(edge)
        assert await _learn_home(session) == worker.pid
        await session.close()
        assert "undecodable link data" in worker.output()
