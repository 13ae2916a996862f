"""Two gateways sharing one Redis and one data dir (each with its own in-process engine).

What a client sees when a load balancer sends its calls to either edge: jobs, keys,
Idempotency-Keys, files and signing keys are the same on both; losing Redis turns
readiness off and submits into 503s while realtime sessions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect

from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from framewire.gateway.storage.store import FileStore
from framewire.gateway.stores.shared_files import check_shared_folder
from framewire.state.connection import StateError
from tests.conftest import live_server
from tests.gateway.queue_apps import SteppingApp
from tests.gateway.stores import state
from tests.redis_server import redis_server

QUEUE = {"host": "queue.framewire.test"}
ROOT_KEY = "root:root-secret-0123456789"
ROOT = {"authorization": f"Key {ROOT_KEY}"}


@contextlib.contextmanager
def edges(url: str, data_dir: Path, count: int = 2, **changes: Any) -> Iterator[list[str]]:
    settings = Settings(redis_url=url, data_dir=str(data_dir), job_lease_s=2.0, **changes)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(live_server(settings, [EchoApp(), SteppingApp()])) for _ in range(count)]


@contextlib.asynccontextmanager
async def clients(addresses: list[str], **headers: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(httpx.AsyncClient(base_url=f"http://{a}", headers=headers, timeout=10))
            for a in addresses
        ]


def local(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def wait_status(client: httpx.AsyncClient, url: str, status: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = (await client.get(local(url))).json()
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)


async def test_a_job_queued_on_one_edge_is_polled_streamed_cancelled_and_read_on_the_other(
    redis_url: str, tmp_path: Path
) -> None:
    with edges(redis_url, tmp_path) as addresses:
        async with clients(addresses, **QUEUE) as (a, b):
            quick = (await a.post("/framewire/echo", json={"prompt": "hi"})).json()
            done = await wait_status(b, quick["status_url"], "COMPLETED")
            assert "error" not in done
            result = await b.get(local(quick["response_url"]))
            assert result.status_code == 200 and result.headers["x-fal-request-id"] == quick["request_id"]

            slow = (await a.post("/test/stepping", json={"steps": 400, "delay_ms": 25})).json()
            await wait_status(b, slow["status_url"], "IN_PROGRESS")
            events: list[dict[str, Any]] = []

            async def stream() -> None:
                async with b.stream("GET", local(slow["status_url"]) + "/stream") as sse:
                    async for line in sse.aiter_lines():
                        if line.startswith("data:"):
                            events.append(json.loads(line[5:]))

            streaming = asyncio.create_task(stream())
            while not events:
                await asyncio.sleep(0.01)
            cancelled = await b.put(local(slow["cancel_url"]))
            assert cancelled.status_code == 202 and cancelled.json() == {"status": "CANCELLATION_REQUESTED"}
            async with asyncio.timeout(10):
                await streaming
            assert events[0]["status"] == "IN_PROGRESS" and events[-1]["status"] == "COMPLETED"
            assert events[-1]["error_type"] == "request_cancelled"
            answer = await a.get(local(slow["response_url"]))
            assert answer.status_code == 499  # the run stopped wherever it ran, and one result was kept
            assert (await b.put(local(slow["cancel_url"]))).status_code == 400


async def test_a_submit_over_the_body_limit_is_refused_before_it_reaches_redis(redis_url: str, tmp_path: Path) -> None:
    with edges(redis_url, tmp_path, count=1, max_body_bytes=2048) as (address,):
        async with clients([address], **QUEUE) as (client,):
            big = {"prompt": "x" * 4096}
            sized = await client.post("/framewire/echo", json=big)

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the reader counts as it goes
                yield b'{"prompt": "'
                for _ in range(64):
                    yield b"x" * 64
                yield b'"}'

            streamed = await client.post(
                "/framewire/echo", content=chunks(), headers={"content-type": "application/json"}
            )
            for refused in (sized, streamed):
                assert refused.status_code == 413 and refused.json()["error_type"] == "body_too_large", refused.text
            async with state(redis_url) as conn:
                assert [k async for k in conn.client.scan_iter(match=conn.key("job", "*"))] == []
            accepted = await client.post("/framewire/echo", json={"prompt": "small"})
            assert accepted.status_code == 200
            await wait_status(client, accepted.json()["status_url"], "COMPLETED")


async def test_an_idempotency_key_holds_across_edges(redis_url: str, tmp_path: Path) -> None:
    with edges(redis_url, tmp_path) as addresses:
        async with clients(addresses, **QUEUE) as (a, b):
            key = {"idempotency-key": "order-42"}
            first = await a.post("/framewire/echo", json={"prompt": "x"}, headers=key)
            again = await b.post("/framewire/echo", json={"prompt": "x"}, headers=key)
            assert first.status_code == again.status_code == 200
            assert again.json()["request_id"] == first.json()["request_id"]
            assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
            other = await b.post("/framewire/echo", json={"prompt": "y"}, headers=key)
            assert other.status_code == 422 and other.headers["x-fal-error-type"] == "idempotency_conflict"
            bad = await a.post("/framewire/echo", json={}, headers={"idempotency-key": "x" * 300})
            assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["detail"]


async def test_a_key_revoked_on_one_edge_is_refused_by_the_other_within_a_second(
    redis_url: str, tmp_path: Path
) -> None:
    with edges(redis_url, tmp_path, auth=True, api_keys=(ROOT_KEY,)) as addresses:
        async with clients(addresses) as (a, b):
            created = (await a.post("/v1/keys", json={"name": "shared"}, headers=ROOT)).json()
            user = {"authorization": f"Key {created['key']}"}
            deadline = time.monotonic() + 5
            while (await b.post("/framewire/echo", json={}, headers=user)).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            async with connect(
                f"ws://{addresses[1]}/framewire/echo/realtime", additional_headers=user, compression=None
            ) as ws:
                await ws.send(msgpack.packb({"prompt": "p", "request_id": 1}))
                assert msgpack.unpackb(await ws.recv())["request_id"] == 1
                revoked_at = time.monotonic()
                assert (await a.delete(f"/v1/keys/{created['id']}", headers=ROOT)).status_code == 200
                while (await b.post("/framewire/echo", json={}, headers=user)).status_code != 401:
                    await asyncio.sleep(0.01)
                refused_after_s = time.monotonic() - revoked_at
                closing = json.loads(await asyncio.wait_for(ws.recv(), 2.0))
                assert closing["error"] == "UNAUTHORIZED"
            assert refused_after_s < 1.0, refused_after_s


async def test_apps_list_replicas_devices_health_and_queue_for_admins(redis_url: str, tmp_path: Path) -> None:
    with edges(redis_url, tmp_path, count=1, auth=True, api_keys=(ROOT_KEY,)) as addresses:
        async with clients(addresses) as (client,):
            listed = (await client.get("/v1/apps", headers=ROOT)).json()["apps"]
            echo = next(app for app in listed if app["id"] == "framewire/echo")
            assert echo["health"] == "healthy" and echo["replicas"] == echo["ready_replicas"] == 1
            assert echo["queued"] == 0 and echo["workers"][0]["worker"] == "in-process"
            one = await client.get("/v1/apps/fal-ai/stepping", headers=ROOT)  # by alias
            assert one.status_code == 200 and one.json()["id"] == "test/stepping"
            assert (await client.get("/v1/apps/no/such", headers=ROOT)).status_code == 404
            user = (await client.post("/v1/keys", json={"name": "u"}, headers=ROOT)).json()["key"]
            refused = await client.get("/v1/apps", headers={"authorization": f"Key {user}"})
            assert refused.status_code == 403


async def test_edges_sharing_a_data_dir_sign_alike_and_one_with_another_folder_is_refused(
    redis_url: str, tmp_path: Path
) -> None:
    with edges(redis_url, tmp_path / "shared") as addresses:
        async with clients(addresses) as (a, b):
            assert (await a.get("/.well-known/jwks.json")).json() == (await b.get("/.well-known/jwks.json")).json()
    async with state(redis_url) as conn:
        await check_shared_folder(conn, FileStore(tmp_path / "shared" / "files", max_bytes=1, default_ttl_s=0))
        with pytest.raises(StateError, match="not the one the other edges"):
            await check_shared_folder(conn, FileStore(tmp_path / "elsewhere", max_bytes=1, default_ttl_s=0))


async def test_without_redis_readiness_is_off_submits_are_503_and_sessions_go_on(tmp_path: Path) -> None:
    with redis_server() as server, edges(server.url, tmp_path, count=1) as (address,):
        async with clients([address]) as (client,):
            assert (await client.get("/ready")).status_code == 200
            async with connect(f"ws://{address}/framewire/echo/realtime", compression=None) as ws:
                server.kill()
                deadline = time.monotonic() + 5
                while (ready := await client.get("/ready")).status_code == 200:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert ready.json()["reason"] == "store_unavailable"
                submit = await client.post("/framewire/echo", json={}, headers=QUEUE)
                assert submit.status_code == 503 and submit.headers["retry-after"] == "1"
                assert submit.json()["error_type"] == "store_unavailable"
                for i in range(5):  # the open session does not need Redis
                    await ws.send(msgpack.packb({"prompt": "p", "request_id": i}))
                    assert msgpack.unpackb(await asyncio.wait_for(ws.recv(), 5))["request_id"] == i
                run = await client.post("/framewire/echo", json={})  # sync runs go on too
                assert run.status_code == 200
            server.start()
            deadline = time.monotonic() + 10
            while (await client.get("/ready")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            async with clients([address], **QUEUE) as (queue,):
                job = (await queue.post("/framewire/echo", json={})).json()
                await wait_status(queue, job["status_url"], "COMPLETED")
