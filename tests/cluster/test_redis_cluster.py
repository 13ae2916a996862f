"""Two edges, two workers and Debian's redis-server, all real processes on 127.0.0.1.

The workers serve the fake engine (``tests.cluster.apps:SleepApp``: each output names
the pid that ran it) and register in Redis; the edges find them there, share one data
dir, keep jobs, keys, limits and usage in Redis, and require keys (``--auth``; the tests
use an ``--api-key`` admin key unless they test keys). Timings are short (claims lapse
after 1.5 s, worker leases after 2 s, links after 1 s of silence) so faults resolve
within seconds. One cluster serves the whole module: a test that kills a member starts
it again before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.cluster.processes import APPS, FAST_LINK, SECRET, Proc, Session, http_json, until
from tests.conftest import free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

#: Claims, leases and reclaims short enough for a test, long enough for a loaded 2-core machine.
FAST_STATE = ("--job-lease-s", "1.5", "--worker-lease-s", "2")
ROOT_KEY = "root:cluster-root-secret-0123456789"
ROOT = {"authorization": f"Key {ROOT_KEY}"}


@dataclass
class Member:
    proc: Proc
    port: int
    queue_port: int = 0


@dataclass
class Cluster:
    redis: RedisServer
    data_dir: Path
    workers: dict[str, Member] = field(default_factory=dict)
    edges: dict[str, Member] = field(default_factory=dict)

    def start_worker(self, name: str, port: int | None = None) -> Member:
        port = port or free_port()
        cmd = [sys.executable, "-m", "framewire.cli", "worker", *APPS, "--port", str(port), "--worker-id", name]
        cmd += [
            "--redis-url",
            self.redis.url,
            "--worker-lease-s",
            "2",
            "--worker-timeout-s",
            "1",
            "--log-format",
            "text",
        ]
        cmd += ["--shutdown-timeout-s", "5"]
        member = self.workers[name] = Member(Proc(cmd, env={"FRAMEWIRE_WORKER_SECRET": SECRET}), port)
        return member

    def start_edge(self, name: str, port: int | None = None, queue_port: int | None = None) -> Member:
        port, queue_port = port or free_port(), queue_port or free_port()
        cmd = [sys.executable, "-m", "framewire.cli", "serve", *APPS, "--port", str(port)]
        cmd += ["--queue-port", str(queue_port), "--data-dir", str(self.data_dir), "--redis-url", self.redis.url]
        cmd += [*FAST_STATE, *FAST_LINK, "--private-networks", "--log-format", "text", "--shutdown-timeout-s", "5"]
        cmd += ["--auth", "--api-key", ROOT_KEY]
        cmd += ["--usage-flush-interval-s", "0.5", "--webhook-retry-base-s", "0.2"]
        member = self.edges[name] = Member(Proc(cmd, env={"FRAMEWIRE_WORKER_SECRET": SECRET}), port, queue_port)
        return member

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Every worker started, every edge ready and linked to every worker."""
        for member in self.workers.values():
            member.proc.wait_for_line("FrameWire worker", timeout_s)
        deadline = time.monotonic() + timeout_s
        names = set(self.workers)
        for member in self.edges.values():
            while True:
                status, body = _get(member.port, "/ready")
                seen = {w["worker"]: w["state"] for w in (body or {}).get("workers", [])}
                if status == 200 and {n for n, s in seen.items() if s == "ready"} >= names:
                    break
                if member.proc.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"edge not ready ({status} {body}):\n{member.proc.output()[-3000:]}")
                time.sleep(0.1)

    def kill(self, member: Member) -> None:
        member.proc.signal(signal.SIGKILL)
        member.proc.proc.wait(10)
        member.proc.stop()

    def pid_of(self, name: str) -> int:
        return self.workers[name].proc.pid

    def store(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, decode_responses=True)


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return http_json(port, "GET", path, headers=ROOT if headers is None else headers)


def _send(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    return http_json(port, method, path, body, ROOT if headers is None else headers)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    folder = Path(tempfile.mkdtemp(prefix="framewire-cluster-"))
    server = RedisServer(folder / "redis")
    (folder / "redis").mkdir()
    server.start()
    found = Cluster(server, folder / "data")
    try:
        found.start_worker("w1")
        found.start_worker("w2")
        found.start_edge("a")
        found.start_edge("b")
        found.wait_ready()
        yield found
    finally:
        for member in [*found.edges.values(), *found.workers.values()]:
            member.proc.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def submit(port: int, body: dict[str, Any], **query: str) -> dict[str, Any]:
    path = "/test/sleep" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    status, submitted = _send(port, "POST", path, body)
    assert status == 200, submitted
    return dict(submitted)


def status_of(port: int, request_id: str) -> dict[str, Any]:
    _, body = _get(port, f"/test/sleep/requests/{request_id}/status?logs=1")
    return dict(body)


def result_of(port: int, request_id: str) -> dict[str, Any]:
    status, body = _get(port, f"/test/sleep/requests/{request_id}")
    assert status == 200, body
    return dict(body)


async def session(port: int) -> Session:
    """A realtime session on the fake engine, with the admin key."""
    url = f"ws://127.0.0.1:{port}/test/sleep/realtime"
    return Session(await connect(url, additional_headers=ROOT, compression=None, max_size=None))


async def completed(port: int, request_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(status_of(port, request_id))
        return found.get("status") == "COMPLETED"

    await until(done, timeout_s=timeout_s, what=f"job {request_id} to complete")
    return found


class Hooks:
    """A webhook receiver on loopback: counts deliveries per request id."""

    def __init__(self) -> None:
        self.got: dict[str, int] = {}
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                hooks.got[body["request_id"]] = hooks.got.get(body["request_id"], 0) + 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    try:
        yield receiver
    finally:
        receiver.close()


# -- across edges ----------------------------------------------------------------------------------


async def test_workers_registered_in_redis_serve_both_edges_and_apps_lists_them(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    for edge in (a, b):
        status, apps = await asyncio.to_thread(_get, edge.port, "/v1/apps/test/sleep")
        assert status == 200 and apps["health"] == "healthy" and apps["ready_replicas"] == 2
        assert sorted(w["worker"] for w in apps["workers"]) == ["w1", "w2"]
    leases = cluster.store().smembers("framewire:workers")
    assert leases == {"w1", "w2"}
    job = await asyncio.to_thread(submit, a.queue_port, {"n": 1})
    done = await completed(b.queue_port, job["request_id"])
    assert "error" not in done
    result = await asyncio.to_thread(result_of, b.queue_port, job["request_id"])
    assert result["pid"] in (cluster.pid_of("w1"), cluster.pid_of("w2"))


async def test_a_job_submitted_on_a_is_polled_streamed_and_cancelled_on_b(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    job = await asyncio.to_thread(submit, a.queue_port, {"n": 2, "sleep_ms": 4000})
    await until(lambda: status_of(b.queue_port, job["request_id"])["status"] == "IN_PROGRESS", what="the job to run")
    events: list[dict[str, Any]] = []

    def stream() -> None:
        path = f"http://127.0.0.1:{b.queue_port}/test/sleep/requests/{job['request_id']}/status/stream"
        with urllib.request.urlopen(urllib.request.Request(path, headers=ROOT), timeout=30) as res:
            for line in res:
                if line.startswith(b"data:"):
                    events.append(json.loads(line[5:]))

    streaming = asyncio.create_task(asyncio.to_thread(stream))
    await until(lambda: bool(events), what="the first status event")
    started = time.monotonic()
    status, answer = await asyncio.to_thread(
        _send, b.queue_port, "PUT", f"/test/sleep/requests/{job['request_id']}/cancel"
    )
    assert status == 202 and answer == {"status": "CANCELLATION_REQUESTED"}
    await asyncio.wait_for(streaming, 10)
    assert time.monotonic() - started < 3  # the 4 s run was not waited for, wherever it ran
    assert events[0]["status"] == "IN_PROGRESS" and events[-1]["status"] == "COMPLETED"
    assert events[-1]["error_type"] == "request_cancelled"


async def test_a_key_revoked_on_a_is_refused_on_b_within_a_second(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    _, created = await asyncio.to_thread(_send, a.port, "POST", "/v1/keys", {"name": "short-lived"})
    key = {"authorization": f"Key {created['key']}"}
    await until(lambda: _send(b.port, "POST", "/test/sleep", {"n": 0}, key)[0] == 200, what="b to take the key")
    url = f"ws://127.0.0.1:{b.port}/test/sleep/realtime"
    on_b = Session(await connect(url, additional_headers=key, compression=None, max_size=None))
    await on_b.send(1)
    await on_b.receive(1)
    revoked_at = time.monotonic()
    status, _ = await asyncio.to_thread(_send, a.port, "DELETE", f"/v1/keys/{created['id']}")
    assert status == 200
    refused_after: list[float] = []

    def b_refuses() -> bool:
        if _send(b.port, "POST", "/test/sleep", {"n": 0}, key)[0] == 401:
            refused_after.append(time.monotonic() - revoked_at)
            return True
        return False

    closing = json.loads(await asyncio.wait_for(on_b.ws.recv(), 5.0))  # b closes the key's open session
    closed_after_s = time.monotonic() - revoked_at
    await until(b_refuses, timeout_s=5.0, what="b to refuse the key")
    assert closing["error"] == "UNAUTHORIZED", closing
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(on_b.ws.recv(), 5.0)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert closed_after_s < 1.0 and refused_after[0] < 1.0, (closed_after_s, refused_after)


async def test_a_rate_limit_holds_across_both_edges(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    rate = 20.0
    _, created = await asyncio.to_thread(
        _send, a.port, "POST", "/v1/keys", {"name": "limited", "limits": {"requests_per_s": rate}}
    )
    key = {"authorization": f"Key {created['key']}"}
    counts = {200: 0, 429: 0}
    starts: list[float] = []
    duration_s = 3.0
    began = time.monotonic()

    def hammer(port: int) -> None:
        while (start := time.monotonic()) - began < duration_s:
            starts.append(start)
            status, _ = _send(port, "POST", "/test/sleep", {"n": 0}, key)
            counts[status] = counts.get(status, 0) + 1

    await asyncio.gather(*(asyncio.to_thread(hammer, port) for port in (a.port, b.port, a.port, b.port)))
    elapsed_s = max(starts) - began  # tokens were asked for until the last request left
    expected = rate * elapsed_s + rate  # the rate over the run, plus one second of burst
    assert counts[429] > counts[200], counts  # the hammer asked for far more than the limit
    assert abs(counts[200] - expected) <= 0.1 * expected, (counts, expected)


# -- faults ----------------------------------------------------------------------------------------


async def test_sigkill_of_the_worker_holding_a_job_completes_it_once(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    with hooks() as receiver:
        job = await asyncio.to_thread(submit, a.queue_port, {"n": 3, "sleep_ms": 2000}, fal_webhook=receiver.url)
        holder: list[str] = []

        def running_somewhere() -> bool:
            for edge in (a, b):
                _, app = _get(edge.port, "/v1/apps/test/sleep")
                holder.extend(w["worker"] for w in app["workers"] if w["requests"])
            return bool(holder)

        await until(running_somewhere, what="the job to reach a worker")
        victim = holder[0]
        survivor = "w2" if victim == "w1" else "w1"
        cluster.kill(cluster.workers[victim])
        try:
            done = await completed(b.queue_port, job["request_id"])
            assert "error" not in done
            result = await asyncio.to_thread(result_of, b.queue_port, job["request_id"])
            assert result["pid"] == cluster.pid_of(survivor)
            await until(lambda: receiver.got.get(job["request_id"]) == 1, what="the webhook")
            await asyncio.sleep(1.0)
            assert receiver.got == {job["request_id"]: 1}  # one result, one webhook
        finally:
            cluster.start_worker(victim)
            await asyncio.to_thread(cluster.wait_ready)


async def test_sigkill_of_an_edge_clients_go_on_at_the_other_and_its_jobs_complete_once(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    on_a = await session(a.port)
    await on_a.send(1)
    await on_a.receive(1)
    b.proc.signal(signal.SIGSTOP)  # so that a claims the jobs (b would take some)
    try:
        jobs = [await asyncio.to_thread(submit, a.queue_port, {"n": 10 + i, "sleep_ms": 2500}) for i in range(4)]
        ids = [j["request_id"] for j in jobs]
        store = cluster.store()
        await until(
            lambda: all(store.hget(f"framewire:job:{i}", "status") == "IN_PROGRESS" for i in ids),
            what="the jobs to run",
        )
    finally:
        b.proc.signal(signal.SIGCONT)
    assert all(f":{a.proc.pid}:" in str(store.hget(f"framewire:job:{i}", "consumer")) for i in ids)
    # b was stopped long enough for its links to lapse: a balancer sends clients to it once it is ready again.
    await asyncio.to_thread(cluster.wait_ready)
    cluster.kill(a)
    try:
        with pytest.raises((ConnectionClosed, OSError)):
            await on_a.send(2)
            await on_a.receive(2, timeout_s=5.0)
        on_b = await session(b.port)  # the client reconnects through the load balancer: to b
        await on_b.send(3)
        await on_b.receive(1)
        assert 3 in on_b.outputs
        await on_b.close()
        for request_id in ids:  # polled on b all along; b takes them over once a's claims lapse
            done = await completed(b.queue_port, request_id, timeout_s=30.0)
            assert "error" not in done, done
            assert any("went away" in line["message"] for line in done["logs"])
            assert store.hget(f"framewire:job:{request_id}", "attempts") == "2"
            assert (await asyncio.to_thread(result_of, b.queue_port, request_id))["n"] >= 10
    finally:
        cluster.start_edge("a", a.port, a.queue_port)
        await asyncio.to_thread(cluster.wait_ready)


async def test_a_redis_restart_from_its_aof_loses_no_acknowledged_job(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    acknowledged = []
    for i in range(20):
        job = await asyncio.to_thread(submit, (a, b)[i % 2].queue_port, {"n": 100 + i, "sleep_ms": 100})
        acknowledged.append(job["request_id"])
    cluster.redis.kill()  # SIGKILL right after the last acknowledgement
    cluster.redis.start()
    store = cluster.store()
    assert all(store.exists(f"framewire:job:{i}") for i in acknowledged)
    for request_id in acknowledged:
        done = await completed(a.queue_port, request_id, timeout_s=60.0)
        assert "error" not in done, done


async def test_a_hundred_queued_jobs_complete_across_a_redis_crash_midway(cluster: Cluster) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    jobs = await asyncio.gather(
        *(asyncio.to_thread(submit, (a, b)[i % 2].queue_port, {"n": 1000 + i, "sleep_ms": 500}) for i in range(100))
    )
    ids = [job["request_id"] for job in jobs]
    store = cluster.store()

    def finished() -> int:
        with contextlib.suppress(redis.RedisError):
            return sum(store.hget(f"framewire:job:{i}", "status") == "COMPLETED" for i in ids)
        return -1

    at_crash = [0]

    def a_fifth_done() -> bool:
        at_crash[0] = finished()
        return at_crash[0] >= 20

    await until(a_fifth_done, timeout_s=60.0, what="a fifth of the jobs")
    cluster.redis.kill()
    assert at_crash[0] < 100, "every job was done before the crash"
    await asyncio.sleep(1.0)
    cluster.redis.start()
    await until(lambda: finished() == 100, timeout_s=120.0, what="every job")
    results = [(await asyncio.to_thread(result_of, b.queue_port, request_id))["n"] for request_id in ids]
    assert results == list(range(1000, 1100))
    await asyncio.to_thread(cluster.wait_ready)


async def test_redis_lost_while_running_turns_ready_off_refuses_submits_and_open_sessions_go_on(
    cluster: Cluster,
) -> None:
    a, b = cluster.edges["a"], cluster.edges["b"]
    sessions = [await session(a.port), await session(b.port)]
    for s in sessions:
        await s.send(1)
        await s.receive(1)
    cluster.redis.kill()
    try:
        async with httpx.AsyncClient(headers=ROOT, timeout=10) as client:
            for edge in (a, b):
                deadline = time.monotonic() + 10
                while (ready := await client.get(f"http://127.0.0.1:{edge.port}/ready")).status_code == 200:
                    assert time.monotonic() < deadline, ready.json()
                    await asyncio.sleep(0.05)
                assert ready.status_code == 503 and ready.json()["reason"] == "store_unavailable"
                assert ready.json()["store"]["available"] is False
                submitted = await client.post(f"http://127.0.0.1:{edge.queue_port}/test/sleep", json={"n": 5})
                assert submitted.status_code == 503, submitted.text
                assert submitted.json()["error_type"] == "store_unavailable"
                assert submitted.headers["retry-after"] == "1"
            # Past the workers' leases (2 s), which nobody can renew: the links, not Redis, carry the frames.
            for n in range(2, 6):
                for s in sessions:
                    await s.send(n)
                    await s.receive(n)
                await asyncio.sleep(0.8)
            assert all(s.errors == [] and sorted(s.outputs) == [1, 2, 3, 4, 5] for s in sessions)
    finally:
        cluster.redis.start()
    for s in sessions:
        await s.close()
    await asyncio.to_thread(cluster.wait_ready)
    job = await asyncio.to_thread(submit, b.queue_port, {"n": 6})
    assert "error" not in await completed(a.queue_port, job["request_id"])


def test_an_unreachable_redis_is_a_start_up_error_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for command in ("serve", "worker"):
        cmd = [sys.executable, "-m", "framewire.cli", command, "--builtin-apps", "echo", "--redis-url", url]
        proc = Proc([*cmd, "--port", str(free_port())], env={"FRAMEWIRE_WORKER_SECRET": SECRET})
        code = proc.proc.wait(60)
        proc.stop()
        assert code == 2, proc.output()
        assert f"cannot reach Redis at {url}" in proc.output(), proc.output()
