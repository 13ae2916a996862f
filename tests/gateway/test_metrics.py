"""/metrics: Prometheus text that the reference parser reads, and counters that move."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel
from starlette.testclient import TestClient

from framewire.bench.fake_engine import LadderSteps
from framewire.engine.api import AppRegistry, FrameIdentity
from framewire.engine.apps.echo import EchoApp, EchoInput
from framewire.engine.governor import GovernorSettings
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


class SeededEcho(EchoApp):
    """The echo app, with an identity: its output depends on nothing random."""

    app_id = "test/seeded-echo"

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        assert isinstance(inp, EchoInput)
        image = inp.image_url if isinstance(inp.image_url, bytes) else None
        return FrameIdentity(inp.prompt.encode(), image)


@pytest.fixture
def load_client() -> Iterator[TestClient]:
    metrics = Metrics()
    governor = GovernorSettings(min_samples=1, settle_s=0.0)  # react to the first late frame
    engine = LocalEngine(AppRegistry([SeededEcho(), LadderSteps()]), on_batch=metrics.on_batch, governor=governor)
    with TestClient(create_app(Settings(), engine, metrics=metrics)) as c:
        yield c


def test_targets_degradation_and_skips_show_in_timings_and_metrics(load_client: TestClient) -> None:
    with load_client.websocket_connect("/test/seeded-echo/realtime?target_latency_ms=5000") as ws:
        outs = []
        for _ in range(2):
            ws.send_bytes(msgpack.packb({"image_url": b"canvas", "prompt": "same"}))
            outs.append(msgpack.unpackb(ws.receive_bytes()))
    assert outs[0]["timings"]["target_latency_ms"] == 5000 and outs[0]["timings"]["target_met"] is True
    assert "skipped" not in outs[0]["timings"] and outs[1]["timings"]["skipped"] == "exact"
    assert outs[1]["image"] == outs[0]["image"] == b"canvas"
    # A 1 ms target is missed by the fill window alone: the ladder's first level follows.
    degraded = None
    with load_client.websocket_connect("/bench/steps/realtime?target_latency_ms=1") as ws:
        for _ in range(40):
            ws.send_bytes(msgpack.packb({"num_inference_steps": 4}))
            out = msgpack.unpackb(ws.receive_bytes())
            if out["timings"].get("degraded"):
                degraded = out
                break
            time.sleep(0.06)  # the level is reconsidered at most every 50 ms
    assert degraded is not None and degraded["num_inference_steps"] == 2
    assert degraded["timings"]["degradation"] == "num_inference_steps 4→2" and degraded["timings"]["target_met"] in (
        True,
        False,
    )
    samples = scrape(load_client)
    assert value(samples, "framewire_realtime_target_frames_total", app="test/seeded-echo", outcome="met") == 2
    assert value(samples, "framewire_realtime_skipped_frames_total", app="test/seeded-echo", kind="exact") == 1
    assert value(samples, "framewire_realtime_degraded_frames_total", app="bench/steps", level="1") == 1
    assert value(samples, "framewire_realtime_target_frames_total", app="bench/steps", outcome="missed") >= 1


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("target_latency_ms=0", "target_latency_ms must be from 1"),
        ("target_latency_ms=soon", "target_latency_ms must be a number"),
        ("target_latency_ms=nan", "target_latency_ms must be from"),
        ("similarity_threshold=0.5", "similarity_threshold must be from 0 to 0.25"),
    ],
)
def test_bad_latency_targets_and_thresholds_are_refused(load_client: TestClient, query: str, words: str) -> None:
    with load_client.websocket_connect(f"/test/seeded-echo/realtime?{query}") as ws:
        err = ws.receive_json()
        assert err["error"] == "INVALID_QUERY" and words in err["reason"]
        message = ws.receive()
        assert message["type"] == "websocket.close" and message["code"] == 4400
