"""The gateway's composition: built whole before it starts, drained through its own handle."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_gateway
from framewire.gateway.settings import Settings
from tests.conftest import ROOT


def test_drain_turns_away_every_surface_and_stops_the_queue(tmp_path: Path) -> None:
    gateway = create_gateway(Settings(data_dir=str(tmp_path)), LocalEngine(AppRegistry([EchoApp()])))
    # The secrets are read while composing, before anything starts.
    assert (tmp_path / "storage.key").is_file() and (tmp_path / "webhook_ed25519.pem").is_file()
    with TestClient(gateway.app) as client:
        assert client.get("/ready").json() == {"ready": True}
        assert client.post("/framewire/echo", json={"prompt": "before"}).status_code == 200
        submitted = client.post("/framewire/echo", json={"prompt": "queued"}, headers={"host": "queue.local"})
        assert submitted.status_code == 200

        client.portal.call(gateway.drain, 1.0)

        assert gateway.state.draining and gateway.state.queue_stopped
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False, "reason": "draining"}
        run = client.post("/framewire/echo", json={"prompt": "late"})
        assert run.status_code == 503 and run.json()["error_type"] == "engine_unavailable"
        queued = client.post("/framewire/echo", json={"prompt": "late"}, headers={"host": "queue.local"})
        assert queued.status_code == 503 and queued.headers["retry-after"] == "1"
        with client.websocket_connect("/framewire/echo/realtime") as ws:
            refusal = ws.receive_json()
            closed = ws.receive()
        assert refusal["error"] == "ENGINE_UNAVAILABLE" and closed["code"] == 1013
        assert "framewire_draining 1.0" in client.get("/metrics").text


def test_two_gateways_in_one_process_keep_their_own_state(tmp_path: Path) -> None:
    first = create_gateway(Settings(data_dir=str(tmp_path / "a")), LocalEngine(AppRegistry([EchoApp()])))
    second = create_gateway(Settings(data_dir=str(tmp_path / "b")), LocalEngine(AppRegistry([EchoApp()])))
    with TestClient(first.app) as a, TestClient(second.app) as b:
        a.portal.call(first.drain, 0.5)
        assert a.get("/ready").status_code == 503
        assert b.get("/ready").status_code == 200
        assert b.post("/framewire/echo", json={"prompt": "still open"}).status_code == 200


def test_no_gateway_module_takes_its_collaborators_from_app_state() -> None:
    """Handlers get what they use through their class's constructor, never from a shared bag."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "framewire" / "gateway").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.app\.state\b|\bapp\.state\.", line)
    ]
    assert offenders == []
