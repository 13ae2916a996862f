"""The model catalog and the OpenAPI documents generated from the apps' models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp
from tests.gateway.queue_apps import SteppingApp


@pytest.fixture
def client() -> Iterator[TestClient]:
    engine = LocalEngine(AppRegistry([EchoApp(), BatchingApp(), SteppingApp()]))
    with TestClient(create_app(Settings(), engine)) as c:
        yield c


def resolve(document: dict[str, Any], node: Any) -> Any:
    """Follow every local $ref (failing on a dangling one) and return the expanded node."""
    if isinstance(node, dict):
        if "$ref" in node:
            name = node["$ref"].removeprefix("#/components/schemas/")
            assert name in document["components"]["schemas"], node["$ref"]
            return {"$ref": name}
        return {k: resolve(document, v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(document, v) for v in node]
    return node


def test_models_lists_every_app_with_its_realtime_settings(client: TestClient) -> None:
    models = {m["id"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"framewire/echo", "test/batching", "test/stepping"}
    echo = models["framewire/echo"]
    assert echo["title"] == "Echo" and echo["tags"] == ["test", "realtime"] and echo["description"]
    (endpoint,) = echo["endpoints"]
    assert endpoint["realtime"] and endpoint["buffering"] == 2 and endpoint["session_timeout_s"] == 60.0
    assert endpoint["max_batch_size"] == 16
    assert endpoint["urls"] == {
        "run": "/framewire/echo",
        "stream": "/framewire/echo/stream",
        "queue": "/framewire/echo",
        "realtime": "/framewire/echo/realtime",
    }
    (video,) = echo["video"]
    assert video["urls"] == {"start_session": "/framewire/echo/video/start-session"}
    assert (video["max_side"], video["multiple_of"], video["frame_field"]) == (1280, 2, "frame")
    assert "video" not in models["test/batching"]
    assert models["test/batching"]["aliases"] == ["fal-ai/batching-alias"]
    assert models["test/batching"]["endpoints"][0]["urls"]["realtime"] == "/test/batching/realtime"
    assert client.get("/models/fal-ai/batching-alias").json()["id"] == "test/batching"
    assert client.get("/models/nobody/here").status_code == 404


def test_openapi_document_describes_inputs_outputs_and_the_realtime_endpoint(client: TestClient) -> None:
    response = client.get("/models/framewire/echo/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] == "Echo"
    assert doc["servers"] == [{"url": "http://testserver"}]
    expanded = resolve(doc, doc["paths"])
    run = expanded["/framewire/echo"]["post"]
    assert run["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "EchoInput"}
    assert run["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "EchoOutput"}
    assert run["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "Error"}
    realtime = expanded["/framewire/echo/realtime"]
    assert set(realtime) == {"get"}  # a WebSocket upgrade, not a POST
    assert realtime["get"]["x-fal-protocol"] == {
        "type": "realtime",
        "operationId": "framewire_echo_realtime",
        "config": {"buffering": 2, "sessionTimeout": 60.0, "maxBatchSize": 16},
        "contentType": "application/msgpack",
        "realtimeMode": "unary",
    }
    echo_input = doc["components"]["schemas"]["EchoInput"]
    assert echo_input["properties"]["delay_ms"]["maximum"] == 1000.0
    assert doc["x-fal-order-paths"] == [
        "/framewire/echo",
        "/framewire/echo/realtime",
        "/framewire/echo/video/start-session",
    ]
    start = expanded["/framewire/echo/video/start-session"]["post"]
    assert "text/event-stream" in start["responses"]["200"]["content"]
    assert {"413", "415", "422"} <= set(start["responses"])  # the body's limits, as on every JSON route
    params = start["requestBody"]["content"]["application/json"]["schema"]["properties"]["session_params"]
    assert params["allOf"] == [{"$ref": "EchoVideoInput"}]
    assert "/framewire/echo/requests/{request_id}/status" not in doc["paths"]  # the queue surface's document
    queue = client.get("http://queue.testserver/models/framewire/echo/openapi.json").json()
    assert "/framewire/echo/requests/{request_id}/status" in queue["paths"]


def test_openapi_of_an_app_with_a_path_and_no_realtime(client: TestClient) -> None:
    doc = client.get("/models/test/stepping/openapi.json").json()
    marked = [p for p, item in doc["paths"].items() if "x-fal-protocol" in item.get("get", {})]
    assert marked == []
    for path in doc["x-fal-order-paths"]:
        assert "post" in doc["paths"][path]
    resolve(doc, doc["paths"])  # every $ref lands


def test_models_marks_random_weights_with_the_reason_and_the_fix(tmp_path: Any) -> None:
    from framewire.engine.apps.lcm import LcmApp
    from framewire.engine.apps.sdxl_turbo import SdxlTurboApp
    from framewire.engine.config import DiffusionConfig
    from tests.engine import hub_layouts

    real = hub_layouts.write_repo("stabilityai/sdxl-turbo", tmp_path / "turbo")
    common = {"device": "cpu", "cache_dir": tmp_path, "warmup_sizes": ((64, 64),), "image_workers": 1}
    lcm = LcmApp(DiffusionConfig(weights="random", **common))  # type: ignore[arg-type]
    turbo = SdxlTurboApp(DiffusionConfig(weights=str(real), **common))  # type: ignore[arg-type]
    assert lcm.weights_info() is None  # not set up: nothing to say yet
    engine = LocalEngine(AppRegistry([EchoApp(), lcm, turbo]))
    with TestClient(create_app(Settings(), engine)) as c:
        models = {m["id"]: m for m in c.get("/models").json()["models"]}
        single = c.get("/models/fal-ai/fast-lcm-diffusion").json()
    assert "weights" not in models["framewire/echo"]
    assert models["framewire/lcm"]["weights"] == "random" and single["weights"] == "random"
    info = models["framewire/lcm"]["weights_info"]
    assert "--weights random" in info["reason"] and info["fix"] and info["source"] == "tiny random weights"
    assert models["framewire/sdxl-turbo"]["weights"] == "real"
    assert models["framewire/sdxl-turbo"]["weights_info"] == {"source": str(real), "reason": "", "fix": "", "loras": []}
