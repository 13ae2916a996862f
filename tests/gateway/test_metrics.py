"""/metrics: Prometheus text that the reference parser reads, and counters that move."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def client() -> Iterator[TestClient]:
    metrics = Metrics()
    engine = LocalEngine(AppRegistry([EchoApp(), BatchingApp()]), on_batch=metrics.on_batch)
    with TestClient(create_app(Settings(), engine, metrics=metrics)) as c:
        yield c


def test_metrics_parse_and_counters_move_with_traffic(client: TestClient) -> None:
    before = scrape(client)
    assert value(before, "framewire_ready") == 1.0
    assert value(before, "framewire_queue_jobs", app="framewire/echo") == 0.0
    with client.websocket_connect("/framewire/echo/realtime") as ws:
        assert value(scrape(client), "framewire_realtime_sessions_open", app="framewire/echo") == 1.0
        for i in range(3):
            ws.send_bytes(msgpack.packb({"prompt": str(i)}))
            ws.receive_bytes()
        ws.send_bytes(msgpack.packb({"delay_ms": "slow"}))
        assert ws.receive_json()["error"] == "VALIDATION_ERROR"
    assert client.post("/test/batching/realtime", json={"n": 1}).status_code == 200
    assert client.post("/nobody/here", json={}).status_code == 404
    with client.websocket_connect("/nobody/here/realtime") as refused:
        assert refused.receive_json()["error"] == "NOT_FOUND"
    after = scrape(client)
    echo = {"app": "framewire/echo"}
    assert value(after, "framewire_realtime_sessions_open", **echo) == 0.0
    assert value(after, "framewire_realtime_sessions_opened_total", **echo) == 1.0
    assert value(after, "framewire_realtime_frames_received_total", **echo) == 4.0
    assert value(after, "framewire_realtime_frames_sent_total", **echo) == 3.0
    assert value(after, "framewire_realtime_errors_total", code="VALIDATION_ERROR", **echo) == 1.0
    assert value(after, "framewire_realtime_sessions_refused_total", code="NOT_FOUND") == 1.0
    assert value(after, "framewire_requests_total", app="test/batching", surface="run", outcome="ok") == 1.0
    assert value(after, "framewire_request_duration_seconds_count", app="framewire/echo", surface="realtime") == 3.0
    assert value(after, "framewire_http_responses_total", status="404") == 1.0
    assert value(after, "framewire_http_responses_total", status="200") >= 2.0
    # The engine's batch observer (it runs just after a batch's results are handed back).
    deadline = time.monotonic() + 5
    while value(after, "framewire_engine_inference_seconds_count", endpoint="test/batching/realtime") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        after = scrape(client)
    assert value(after, "framewire_engine_batches_total", endpoint="framewire/echo", outcome="ok") == 3.0
    assert value(after, "framewire_engine_batch_size_count", endpoint="framewire/echo") == 3.0
    assert value(after, "framewire_engine_batch_size_sum", endpoint="framewire/echo") == 3.0
    assert value(after, "framewire_engine_inference_seconds_count", endpoint="test/batching/realtime") == 1.0
    # No key ids, inputs or secrets in the exposition.
    assert "prompt" not in client.get("/metrics").text


def test_queue_depth_counts_waiting_jobs() -> None:
    metrics = Metrics()
    app = BatchingApp()
    engine = LocalEngine(AppRegistry([app]), on_batch=metrics.on_batch)
    settings = Settings(queue_jobs_in_flight=1)
    with TestClient(create_app(settings, engine, metrics=metrics)) as client:
        for i in range(4):
            body = {"n": i, "delay_ms": 300}
            assert client.post("/test/batching/realtime", json=body, headers={"host": "queue.x"}).status_code == 200
        depth = value(scrape(client), "framewire_queue_jobs", app="test/batching")
        assert 2.0 <= depth <= 4.0  # one job may have been claimed by now
