"""The queue surface against a real socket: shapes, states, cancel, errors, priorities."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.conftest import live_server
from tests.gateway.queue_apps import ImageApp, SteppingApp

QUEUE_HOST = "queue.framewire.test"


@pytest.fixture
def stepping() -> SteppingApp:
    return SteppingApp()


@pytest.fixture
def server(stepping: SteppingApp) -> Iterator[str]:
    with live_server(Settings(max_queue_length=50), [EchoApp(), stepping, ImageApp()]) as address:
        yield address


@pytest.fixture
async def queue(server: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose Host header selects the queue surface."""
    async with httpx.AsyncClient(base_url=f"http://{server}", headers={"host": QUEUE_HOST}, timeout=10) as c:
        yield c


@pytest.fixture
async def one_slot() -> AsyncIterator[httpx.AsyncClient]:
    """A queue that hands one job at a time to the engine, so jobs behind a slow one stay queued."""
    with live_server(Settings(queue_jobs_in_flight=1), [SteppingApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", headers={"host": QUEUE_HOST}, timeout=10) as c:
            yield c


async def blocker(client: httpx.AsyncClient) -> dict[str, Any]:
    """A slow job that holds the only slot until cancelled (it would take 20 s)."""
    job = await submit(client, "test/stepping", {"steps": 400, "delay_ms": 50})
    deadline = time.monotonic() + 5
    while (await client.get(local(job["status_url"]))).json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    return job


async def submit(client: httpx.AsyncClient, app: str, body: Any, **kwargs: Any) -> dict[str, Any]:
    res = await client.post(f"/{app}", json=body, **kwargs)
    assert res.status_code == 200, res.text
    data: dict[str, Any] = res.json()
    return data


def local(url: str) -> str:
    """The path of a returned URL (its host is the virtual queue host)."""
    return "/" + url.split("/", 3)[3]


async def wait_completed(client: httpx.AsyncClient, job: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        res = await client.get(local(job["status_url"]), params={"logs": "1"})
        body: dict[str, Any] = res.json()
        if body["status"] == "COMPLETED":
            assert res.status_code == 200
            return body
        assert res.status_code == 202, res.text
        assert time.monotonic() < deadline, f"job still {body['status']}"
        await asyncio.sleep(0.02)


async def test_submit_answers_every_field_with_urls_on_the_callers_host(queue: httpx.AsyncClient) -> None:
    res = await queue.post("/framewire/echo", json={"prompt": "hi"}, headers={"host": "queue.example.com:8443"})
    assert res.status_code == 200
    body = res.json()
    rid = body["request_id"]
    assert res.headers["x-fal-request-id"] == rid
    assert body["status"] == "IN_QUEUE" and isinstance(body["queue_position"], int)
    root = f"http://queue.example.com:8443/framewire/echo/requests/{rid}"
    assert body["response_url"] == root
    assert body["status_url"] == root + "/status"
    assert body["cancel_url"] == root + "/cancel"


async def test_status_goes_to_completed_with_logs_and_metrics(queue: httpx.AsyncClient) -> None:
    job = await submit(queue, "framewire/echo", {"prompt": "log me"})
    done = await wait_completed(queue, job)
    assert done["request_id"] == job["request_id"] and done["response_url"] == job["response_url"]
    assert "error" not in done and done["metrics"]["inference_time"] >= 0
    messages = [entry["message"] for entry in done["logs"]]
    assert any(m.startswith("Running on framewire/echo (attempt 1)") for m in messages)
    assert {"message", "level", "source", "timestamp"} <= set(done["logs"][0])
    quiet = (await queue.get(local(job["status_url"]), params={"logs": "false"})).json()
    assert quiet["logs"] is None


async def test_result_is_the_output_itself_with_the_request_id(queue: httpx.AsyncClient) -> None:
    job = await submit(queue, "framewire/echo", {"prompt": "result"})
    await wait_completed(queue, job)
    res = await queue.get(local(job["response_url"]))
    assert res.status_code == 200 and res.headers["x-fal-request-id"] == job["request_id"]
    out = res.json()
    assert out["prompt"] == "result" and out["image"] is None and "batch_size" in out["timings"]


async def test_trailing_slashes_sub_paths_and_aliases_reach_the_same_job(queue: httpx.AsyncClient) -> None:
    job = await submit(queue, "fal-ai/stepping/", {"steps": 1})
    assert job["response_url"].endswith(f"/fal-ai/stepping/requests/{job['request_id']}")
    await wait_completed(queue, job)
    by_id = await queue.get(f"/test/stepping/requests/{job['request_id']}/status/")
    assert by_id.status_code == 200 and by_id.json()["status"] == "COMPLETED"
    other_app = await queue.get(f"/framewire/echo/requests/{job['request_id']}/status")
    assert other_app.status_code == 404


async def test_a_failed_job_is_completed_with_error_and_its_result_replays_the_error(queue: httpx.AsyncClient) -> None:
    job = await submit(queue, "test/stepping", {"steps": 1, "fail": True})
    done = await wait_completed(queue, job)
    assert done["error"] == "fail: asked to fail" and done["error_type"] == "invalid_input"
    res = await queue.get(local(job["response_url"]))
    assert res.status_code == 422 and res.headers["x-fal-error-type"] == "invalid_input"
    assert res.json()["detail"][0]["loc"] == ["body", "fail"]


async def test_malformed_bodies_and_unknown_ids_get_the_spec_error_shapes(queue: httpx.AsyncClient) -> None:
    bad_json = await queue.post("/framewire/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["detail"]
    not_object = await queue.post("/framewire/echo", json=[1, 2])
    assert not_object.status_code == 400 and "JSON object" in not_object.json()["detail"]
    invalid = await queue.post("/framewire/echo", json={"delay_ms": "soon"})
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "delay_ms"]
    unknown_app = await queue.post("/nobody/nothing", json={})
    assert unknown_app.status_code == 404 and unknown_app.json() == {"detail": "Path /nobody/nothing not found"}
    for method, suffix in (("GET", "/status"), ("GET", ""), ("PUT", "/cancel")):
        res = await queue.request(method, f"/framewire/echo/requests/no-such-id{suffix}")
        assert res.status_code == 404 and "x-fal-request-id" in res.headers
    wrong_method = await queue.delete("/framewire/echo/requests/x/status")
    assert wrong_method.status_code == 405
    bad_priority = await queue.post("/framewire/echo", json={}, headers={"x-fal-queue-priority": "urgent"})
    assert bad_priority.status_code == 400 and "x-fal-queue-priority" in bad_priority.json()["detail"]
    bad_webhook = await queue.post("/framewire/echo", params={"fal_webhook": "ftp://x"}, json={})
    assert bad_webhook.status_code == 400 and "fal_webhook" in bad_webhook.json()["detail"]


async def test_result_before_completion_is_refused_with_the_status(
    queue: httpx.AsyncClient, stepping: SteppingApp
) -> None:
    job = await submit(queue, "test/stepping", {"steps": 10, "delay_ms": 30})
    res = await queue.get(local(job["response_url"]))
    assert res.status_code == 400 and res.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    await wait_completed(queue, job)


async def test_cancel_of_a_queued_job_removes_it(one_slot: httpx.AsyncClient) -> None:
    queue = one_slot
    slow = await blocker(queue)
    job = await submit(queue, "test/stepping", {"steps": 1})
    status = (await queue.get(local(job["status_url"]))).json()
    assert status["status"] == "IN_QUEUE" and status["queue_position"] >= 0
    res = await queue.put(local(job["cancel_url"]))
    assert res.status_code == 202 and res.json() == {"status": "CANCELLATION_REQUESTED"}
    done = await wait_completed(queue, job)
    assert done["error_type"] == "request_cancelled"
    result = await queue.get(local(job["response_url"]))
    assert result.status_code == 499
    again = await queue.put(local(job["cancel_url"]))
    assert again.status_code == 400 and again.json() == {"status": "ALREADY_COMPLETED"}
    assert (await queue.get(local(slow["status_url"]))).json()["status"] == "IN_PROGRESS"
    await queue.put(local(slow["cancel_url"]))


async def test_cancel_of_a_running_job_completes_it_and_tells_the_app(
    queue: httpx.AsyncClient, stepping: SteppingApp
) -> None:
    job = await submit(queue, "test/stepping", {"steps": 200, "delay_ms": 20})
    deadline = time.monotonic() + 5
    while (await queue.get(local(job["status_url"]))).json()["status"] != "IN_PROGRESS":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    res = await queue.put(local(job["cancel_url"]))
    assert res.status_code == 202
    done = await wait_completed(queue, job)
    assert done["error_type"] == "request_cancelled"
    assert time.monotonic() - started < 2.0  # not the 4 s the job would take
    assert await asyncio.to_thread(stepping.stopped_early.wait, 5)


async def test_low_priority_jobs_wait_for_normal_ones(one_slot: httpx.AsyncClient) -> None:
    queue = one_slot
    slow = await blocker(queue)
    low = await submit(queue, "test/stepping", {"steps": 1}, headers={"x-fal-queue-priority": "low"})
    normal = await submit(queue, "test/stepping", {"steps": 1})
    assert (await queue.get(local(low["status_url"]))).json()["queue_position"] == 1
    assert (await queue.get(local(normal["status_url"]))).json()["queue_position"] == 0
    await queue.put(local(slow["cancel_url"]))
    done_low, done_normal = await asyncio.gather(wait_completed(queue, low), wait_completed(queue, normal))
    assert done_normal["logs"][0]["timestamp"] <= done_low["logs"][0]["timestamp"]


async def test_queue_jobs_share_batches(queue: httpx.AsyncClient, stepping: SteppingApp) -> None:
    jobs = await asyncio.gather(*(submit(queue, "test/stepping", {"steps": 2, "delay_ms": 20}) for _ in range(12)))
    for job in jobs:
        await wait_completed(queue, job)
    assert max(stepping.batches) > 1


async def test_max_queue_length_refuses_with_429(one_slot: httpx.AsyncClient) -> None:
    queue = one_slot
    slow = await blocker(queue)
    await submit(queue, "test/stepping", {"steps": 1}, params={"fal_max_queue_length": "1"})
    full = await queue.post("/test/stepping", json={"steps": 1}, params={"fal_max_queue_length": "1"})
    assert full.status_code == 429 and "limit is 1" in full.json()["detail"]
    await queue.put(local(slow["cancel_url"]))


async def test_a_start_timeout_fails_a_job_still_queued_with_504(one_slot: httpx.AsyncClient) -> None:
    queue = one_slot
    slow = await blocker(queue)
    job = await submit(queue, "test/stepping", {"steps": 1}, headers={"x-fal-request-timeout": "0.2"})
    done = await wait_completed(queue, job)
    assert done["error_type"] == "request_timeout"
    res = await queue.get(local(job["response_url"]))
    assert res.status_code == 504 and res.headers["x-fal-request-timeout-type"] == "user"
    await queue.put(local(slow["cancel_url"]))


async def test_status_stream_sends_each_change_and_ends_with_completed(queue: httpx.AsyncClient) -> None:
    job = await submit(queue, "test/stepping", {"steps": 5, "delay_ms": 40})
    events: list[dict[str, Any]] = []
    async with queue.stream("GET", local(job["status_url"]) + "/stream", params={"logs": "1"}) as res:
        assert res.status_code == 200 and res.headers["content-type"].startswith("text/event-stream")
        assert res.headers["x-fal-request-id"] == job["request_id"]
        async for line in res.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert events[-1]["status"] == "COMPLETED" and events[-1]["logs"]
    assert [e["status"] for e in events].count("COMPLETED") == 1
    assert "IN_PROGRESS" in [e["status"] for e in events] or len(events) >= 1


async def test_the_run_surface_does_not_answer_queue_paths(server: str) -> None:
    async with httpx.AsyncClient(base_url=f"http://{server}") as run:
        res = await run.get("/framewire/echo/requests/abc/status")
    assert res.status_code == 404


async def test_a_submit_stores_only_the_fields_the_app_knows(tmp_path: Any) -> None:
    """Unknown fields (here 1 MB of junk) never reach the durable store."""
    import sqlite3

    settings = Settings(data_dir=str(tmp_path))
    with live_server(settings, [EchoApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", headers={"host": QUEUE_HOST}, timeout=10) as c:
            job = await submit(c, "framewire/echo", {"prompt": "kept", "junk": "j" * 1_000_000, "junk_url": "x"})
    with sqlite3.connect(tmp_path / "framewire.db") as db:
        (stored,) = db.execute("SELECT input FROM jobs WHERE id = ?", (job["request_id"],)).fetchone()
    assert json.loads(stored) == {"prompt": "kept"}
