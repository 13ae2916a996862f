"""Keys on every surface: missing, wrong and revoked keys are refused, scoped keys accepted; limits."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.settings import Settings
from tests.conftest import BatchingApp

ROOT = {"authorization": "Key root:rootsecret-0123456789"}
SECRET = "token-secret-0123456789abcdef0123456789"
QUEUE = {"host": "queue.local"}


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(auth=True, api_keys=("root:rootsecret-0123456789",), token_secret=SECRET)
    app = create_app(settings, LocalEngine(AppRegistry([EchoApp(), BatchingApp()])))
    with TestClient(app) as c:
        yield c


def make_key(client: TestClient, **body: Any) -> tuple[str, dict[str, str]]:
    response = client.post("/v1/keys", json=body, headers=ROOT)
    assert response.status_code == 201, response.text
    key = response.json()["key"]
    return key.partition(":")[0], {"authorization": f"Key {key}"}


def ws_refusal(client: TestClient, path: str, headers: dict[str, str]) -> tuple[str, int]:
    """(x-fal-error code, close code) of a refused realtime session."""
    with client.websocket_connect(path, headers=headers) as ws:
        error = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
    return error["error"], closed.value.code


def http_calls(client: TestClient, headers: dict[str, str]) -> dict[str, int]:
    """The status of one call on each HTTP surface with ``headers``."""
    submitted = client.post("/framewire/echo", json={}, headers={**headers, **QUEUE})
    status = {
        "run": client.post("/framewire/echo", json={"prompt": "x"}, headers=headers).status_code,
        "stream": client.post("/framewire/echo/stream", json={}, headers=headers).status_code,
        "queue_submit": submitted.status_code,
        "storage": client.post(
            "/storage/upload/initiate", json={"content_type": "image/png", "file_name": "a.png"}, headers=headers
        ).status_code,
        "tokens": client.post("/tokens/", json={"allowed_apps": ["echo"]}, headers=headers).status_code,
        "catalog": client.get("/models", headers=headers).status_code,
        "usage": client.get("/v1/usage", headers=headers).status_code,
    }
    return status


def test_every_surface_refuses_missing_wrong_and_revoked_keys_and_accepts_a_scoped_one(client: TestClient) -> None:
    key_id, scoped = make_key(client, name="scoped", apps=["echo"])
    revoked_id, revoked = make_key(client, name="gone")
    assert client.delete(f"/v1/keys/{revoked_id}", headers=ROOT).json()["revoked_at"] is not None
    wrong = {"authorization": f"Key {key_id}:not-the-secret"}
    for headers in ({}, wrong, revoked):
        assert set(http_calls(client, headers).values()) == {401}, headers
        assert ws_refusal(client, "/framewire/echo/realtime", headers) == ("UNAUTHORIZED", 4401)
    assert set(http_calls(client, scoped).values()) == {200}
    with client.websocket_connect("/framewire/echo/realtime", headers=scoped) as ws:
        ws.send_bytes(msgpack.packb({"prompt": "hi", "request_id": 1}))
        assert msgpack.unpackb(ws.receive_bytes())["request_id"] == 1
    # Out of the key's scope: 403 / 4403, and no token for it either.
    assert client.post("/test/batching/realtime", json={"n": 1}, headers=scoped).status_code == 403
    assert client.post("/test/batching/realtime", json={}, headers={**scoped, **QUEUE}).status_code == 403
    assert client.post("/tokens/", json={"allowed_apps": ["batching"]}, headers=scoped).status_code == 403
    assert ws_refusal(client, "/test/batching/realtime", scoped) == ("FORBIDDEN", 4403)
    assert [m["id"] for m in client.get("/models", headers=scoped).json()["models"]] == ["framewire/echo"]
    assert client.get("/models/test/batching/openapi.json", headers=scoped).status_code == 403


def test_a_token_carries_its_key_into_realtime_and_dies_with_it(client: TestClient) -> None:
    key_id, headers = make_key(client, apps=["echo"])
    token = client.post("/tokens/", json={"allowed_apps": ["echo"]}, headers=headers).json()
    with client.websocket_connect(f"/framewire/echo/realtime?fal_jwt_token={token}") as ws:
        ws.send_bytes(msgpack.packb({"prompt": "via token"}))
        assert msgpack.unpackb(ws.receive_bytes())["prompt"] == "via token"
    client.delete(f"/v1/keys/{key_id}", headers=ROOT)
    assert ws_refusal(client, f"/framewire/echo/realtime?fal_jwt_token={token}", {}) == ("UNAUTHORIZED", 4401)


def test_admin_api_needs_an_admin_key(client: TestClient) -> None:
    _, plain = make_key(client, name="plain")
    _, admin = make_key(client, name="ops", admin=True)
    assert client.get("/v1/keys", headers=plain).status_code == 403
    assert client.post("/v1/keys", json={}, headers=plain).status_code == 403
    assert client.get("/v1/keys", headers=admin).status_code == 200
    listed = client.get("/v1/keys", headers=admin).json()["keys"]
    assert {k["name"] for k in listed} == {"plain", "ops"}
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    bad = client.post("/v1/keys", json={"apps": ["nope"], "limits": {"frames_per_s": -1}}, headers=admin)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "limits", "frames_per_s"]
    unknown_app = client.post("/v1/keys", json={"apps": ["echo", "nope"]}, headers=admin)
    assert unknown_app.status_code == 422 and unknown_app.json()["detail"][0]["loc"] == ["body", "apps", 1]
    assert client.patch("/v1/keys/missing", json={}, headers=admin).status_code == 404


def test_requests_over_the_key_limit_get_429_with_retry_after(client: TestClient) -> None:
    key_id, headers = make_key(client, limits={"requests_per_s": 1})
    assert client.post("/framewire/echo", json={}, headers=headers).status_code == 200
    limited = client.post("/framewire/echo", json={}, headers=headers)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["error_type"] == "rate_limited" and "1 requests/s" in limited.json()["detail"]
    queued = client.post("/framewire/echo", json={}, headers={**headers, **QUEUE})
    assert queued.status_code == 429 and queued.headers["x-fal-error-type"] == "rate_limited"
    # Status polls are not work: they are never limited.
    assert client.get("/v1/usage", headers=headers).status_code == 200
    # Raising the limit applies at once.
    patched = client.patch(f"/v1/keys/{key_id}", json={"limits": {"requests_per_s": 1000}}, headers=ROOT)
    assert patched.json()["limits"]["requests_per_s"] == 1000
    assert client.post("/framewire/echo", json={}, headers=headers).status_code == 200


def test_frames_over_the_limit_get_a_per_frame_error_and_the_session_goes_on(client: TestClient) -> None:
    _, headers = make_key(client, limits={"frames_per_s": 2})
    with client.websocket_connect("/framewire/echo/realtime", headers=headers) as ws:
        for i in range(4):
            ws.send_bytes(msgpack.packb({"prompt": str(i), "request_id": i}))
        outputs, errors = [], []
        while len(outputs) + len(errors) < 4:
            message = ws.receive()
            if message.get("bytes") is not None:
                outputs.append(msgpack.unpackb(message["bytes"])["request_id"])
            else:
                errors.append(json.loads(message["text"]))
        assert sorted(outputs) == [0, 1]
        assert [(e["error"], e["request_id"]) for e in errors] == [("RATE_LIMITED", 2), ("RATE_LIMITED", 3)]
        assert all(0 < e["retry_after_ms"] <= 1000 for e in errors)
        time.sleep(max(e["retry_after_ms"] for e in errors) / 1000 + 0.05)
        ws.send_bytes(msgpack.packb({"prompt": "later", "request_id": 9}))
        assert msgpack.unpackb(ws.receive_bytes())["request_id"] == 9


def test_sessions_over_the_key_maximum_are_refused_with_4429(client: TestClient) -> None:
    _, headers = make_key(client, limits={"max_sessions": 1})
    with client.websocket_connect("/framewire/echo/realtime", headers=headers) as first:
        first.send_bytes(msgpack.packb({"prompt": "a"}))
        first.receive_bytes()
        assert ws_refusal(client, "/framewire/echo/realtime", headers) == ("TOO_MANY_SESSIONS", 4429)
    with client.websocket_connect("/framewire/echo/realtime", headers=headers) as again:  # the slot is free again
        again.send_bytes(msgpack.packb({"prompt": "b"}))
        assert msgpack.unpackb(again.receive_bytes())["prompt"] == "b"


def test_revoking_a_key_closes_its_open_sessions_with_4401(client: TestClient) -> None:
    key_id, headers = make_key(client)
    _, other = make_key(client)
    with (
        client.websocket_connect("/framewire/echo/realtime", headers=headers) as ws,
        client.websocket_connect("/framewire/echo/realtime", headers=other) as bystander,
    ):
        ws.send_bytes(msgpack.packb({"prompt": "a"}))
        ws.receive_bytes()
        assert client.delete(f"/v1/keys/{key_id}", headers=ROOT).status_code == 200
        assert ws.receive_json() == {"type": "x-fal-error", "error": "UNAUTHORIZED", "reason": "API key revoked"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
        assert closed.value.code == 4401
        bystander.send_bytes(msgpack.packb({"prompt": "still here"}))
        assert msgpack.unpackb(bystander.receive_bytes())["prompt"] == "still here"


def test_narrowing_a_key_closes_its_sessions_of_apps_it_lost_with_4403(client: TestClient) -> None:
    key_id, headers = make_key(client)
    with client.websocket_connect("/framewire/echo/realtime", headers=headers) as ws:
        ws.send_bytes(msgpack.packb({"prompt": "a"}))
        ws.receive_bytes()
        assert client.patch(f"/v1/keys/{key_id}", json={"apps": ["batching"]}, headers=ROOT).status_code == 200
        assert ws.receive_json()["error"] == "FORBIDDEN"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_bytes()
        assert closed.value.code == 4403
    with client.websocket_connect("/test/batching/realtime", headers=headers) as allowed:
        allowed.send_bytes(msgpack.packb({"n": 3}))
        assert msgpack.unpackb(allowed.receive_bytes())["n"] == 3


def test_a_token_cannot_mint_tokens() -> None:
    """Else a 120 s token would buy a 3600 s one, and that one another, forever."""
    app = create_app(Settings(auth=True, api_keys=("k1:s3cret",)), LocalEngine(AppRegistry([EchoApp()])))
    with TestClient(app) as client:
        key = {"authorization": "Key k1:s3cret"}
        token = client.post("/tokens/", json={"allowed_apps": ["echo"], "token_expiration": 120}, headers=key).json()
        chained = client.post(
            "/tokens/",
            json={"allowed_apps": ["echo"], "token_expiration": 3600},
            headers={"authorization": f"Bearer {token}"},
        )
        assert chained.status_code == 403 and "API keys only" in chained.json()["detail"]
