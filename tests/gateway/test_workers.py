"""What the gateway says about engine workers: /ready, /metrics, the catalog, and a
session no worker can take. The engine here is an in-process one that reports workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

from framewire.engine.api import AppRegistry, EngineUnavailable, WorkerStatus
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_gateway
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp


class WorkerEngine(LocalEngine):
    """Runs in-process, but reports two workers, one of them lost, and can refuse streams."""

    refuse_streams = False

    def worker_status(self) -> list[WorkerStatus]:
        return [
            WorkerStatus(
                name="10.0.0.5:7100",
                label="cuda:0",
                device="cuda:0",
                state="ready",
                apps=("framewire/echo",),
                sessions=2,
                sessions_total=5,
                requests=1,
                batch_fill={"framewire/echo": 0.25},
                batch_size={"framewire/echo": 4.0},
                queue_ms={"framewire/echo": 1.5},
                rtt_ms=0.2,
                failovers=3,
            ),
            WorkerStatus(
                name="10.0.0.6:7100",
                label="cuda:1",
                device=None,
                state="lost",
                apps=(),
                sessions=0,
                sessions_total=0,
                requests=0,
                error="connection lost",
            ),
        ]

    def open_stream(self, endpoint: Any, capacity: int, on_result: Any, **options: Any) -> Any:
        if self.refuse_streams:
            raise EngineUnavailable("no worker serves framewire/echo right now; retry shortly")
        return super().open_stream(endpoint, capacity, on_result, **options)


def _client(tmp_path: Path, engine: LocalEngine) -> TestClient:
    return TestClient(create_gateway(Settings(data_dir=str(tmp_path)), engine).app)


def test_ready_lists_workers_and_the_apps_none_serves(tmp_path: Path) -> None:
    with _client(tmp_path, WorkerEngine(AppRegistry([EchoApp(), BatchingApp()]))) as client:
        body = client.get("/ready").json()
    assert body["ready"] is True
    assert body["workers"] == [
        {"worker": "cuda:0", "device": "cuda:0", "state": "ready", "apps": ["framewire/echo"], "sessions": 5},
        {"worker": "cuda:1", "device": None, "state": "lost", "apps": [], "sessions": 0},
    ]
    assert body["unserved_apps"] == ["test/batching"]
    assert "10.0.0.5" not in str(body)  # addresses stay off the unauthenticated probe


def test_metrics_carry_one_series_per_worker(tmp_path: Path) -> None:
    with _client(tmp_path, WorkerEngine(AppRegistry([EchoApp()]))) as client:
        text = client.get("/metrics").text
    for line in (
        'framewire_worker_up{address="10.0.0.5:7100",worker="cuda:0"} 1.0',
        'framewire_worker_up{address="10.0.0.6:7100",worker="cuda:1"} 0.0',
        'framewire_worker_state{state="lost",worker="cuda:1"} 1.0',
        'framewire_worker_state{state="ready",worker="cuda:1"} 0.0',
        'framewire_worker_sessions{worker="cuda:0"} 2.0',
        'framewire_worker_sessions_all{worker="cuda:0"} 5.0',
        'framewire_worker_requests{worker="cuda:0"} 1.0',
        'framewire_worker_batch_fill{endpoint="framewire/echo",worker="cuda:0"} 0.25',
        'framewire_worker_batch_size{endpoint="framewire/echo",worker="cuda:0"} 4.0',
        'framewire_worker_queue_delay_seconds{endpoint="framewire/echo",worker="cuda:0"} 0.0015',
        'framewire_worker_link_rtt_seconds{worker="cuda:0"} 0.0002',
        'framewire_worker_failovers_total{worker="cuda:0"} 3.0',
    ):
        assert line in text, line


def test_an_in_process_engine_adds_no_worker_fields(tmp_path: Path) -> None:
    with _client(tmp_path, LocalEngine(AppRegistry([EchoApp()]))) as client:
        assert client.get("/ready").json() == {"ready": True}
        assert "workers" not in client.get("/models/framewire/echo").json()
        assert "framewire_worker_up" not in client.get("/metrics").text


def test_the_catalog_shows_the_workers_serving_each_app(tmp_path: Path) -> None:
    with _client(tmp_path, WorkerEngine(AppRegistry([EchoApp(), BatchingApp()]))) as client:
        echo = client.get("/models/framewire/echo").json()
        listed = {m["id"]: m for m in client.get("/models").json()["models"]}
    assert [w["worker"] for w in echo["workers"]] == ["cuda:0"]
    assert listed["test/batching"]["workers"] == []


def test_a_session_no_worker_can_take_is_refused_with_a_retry_hint(tmp_path: Path) -> None:
    engine = WorkerEngine(AppRegistry([EchoApp()]))
    engine.refuse_streams = True
    with _client(tmp_path, engine) as client, client.websocket_connect("/framewire/echo/realtime") as ws:
        refusal = ws.receive_json()
        closed = ws.receive()
    assert refusal["error"] == "ENGINE_UNAVAILABLE" and "no worker serves" in refusal["reason"]
    assert refusal["retry_after_ms"] == 1000 and closed["code"] == 1013
