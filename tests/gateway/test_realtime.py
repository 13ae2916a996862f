"""Realtime sessions through Starlette's TestClient (no socket)."""

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

KEY = "k1:s3cret"
SECRET = "token-secret-0123456789abcdef0123456789"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def recv(ws: Any) -> Any:
    """The next message: a decoded msgpack map for binary frames, parsed JSON for text."""
    message = ws.receive()
    if message["type"] == "websocket.close":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    if message.get("bytes") is not None:
        return msgpack.unpackb(message["bytes"], raw=False)
    return json.loads(message["text"])


@pytest.fixture
def client(batching_app: BatchingApp) -> Iterator[TestClient]:
    settings = Settings(max_frame_bytes=64 * 1024)
    app = create_app(settings, LocalEngine(AppRegistry([EchoApp(), batching_app])))
    with TestClient(app) as c:
        yield c


@pytest.fixture
def auth_client() -> Iterator[TestClient]:
    settings = Settings(auth=True, api_keys=(KEY,), token_secret=SECRET)
    app = create_app(settings, LocalEngine(AppRegistry([EchoApp(), BatchingApp()])))
    with TestClient(app) as c:
        yield c


def test_echo_round_trip_returns_the_image_timings_and_request_id(client: TestClient) -> None:
    jpeg = b"\xff\xd8" + bytes(range(256)) * 100
    with client.websocket_connect("/framewire/echo/realtime") as ws:
        ws.send_bytes(pack({"image_url": jpeg, "prompt": "a cat", "request_id": "r1"}))
        out = recv(ws)
    assert out["image"] == jpeg and out["size_bytes"] == len(jpeg) and out["prompt"] == "a cat"
    assert out["request_id"] == "r1"
    assert out["timings"]["batch_size"] == 1 and out["timings"]["inference_ms"] >= 0


def test_legacy_ws_path_serves_the_same_app(client: TestClient) -> None:
    with client.websocket_connect("/framewire/echo/ws") as ws:
        ws.send_bytes(pack({"prompt": "legacy"}))
        assert recv(ws)["prompt"] == "legacy"


@pytest.mark.parametrize(
    ("send", "code", "words"),
    [
        (lambda ws: ws.send_bytes(b"\xc1\x00"), "INVALID_MSGPACK", "not valid msgpack"),
        (lambda ws: ws.send_text('{"prompt": "hi"}'), "INVALID_FRAME", "JSON text frame"),
        (lambda ws: ws.send_bytes(pack([1, 2, 3])), "INVALID_FRAME", "msgpack map"),
        (lambda ws: ws.send_bytes(pack({"delay_ms": 5000})), "VALIDATION_ERROR", "delay_ms"),
        (lambda ws: ws.send_bytes(pack({"image_url": b"x" * 70_000})), "FRAME_TOO_LARGE", "limit is 65536"),
        (
            lambda ws: ws.send_bytes(pack({"image_url": "data:image/png;base64,!!"})),
            "VALIDATION_ERROR",
            "base64 data: URI",
        ),
    ],
)
def test_bad_frame_gets_an_error_and_the_session_goes_on(client: TestClient, send: Any, code: str, words: str) -> None:
    with client.websocket_connect("/framewire/echo/realtime") as ws:
        send(ws)
        err = recv(ws)
        assert err["type"] == "x-fal-error" and err["error"] == code and words in err["reason"]
        ws.send_bytes(pack({"prompt": "still here"}))
        assert recv(ws)["prompt"] == "still here"


def test_validation_error_carries_fal_detail_and_request_id(client: TestClient) -> None:
    with client.websocket_connect("/framewire/echo/realtime") as ws:
        ws.send_bytes(pack({"prompt": 5, "request_id": 7}))
        err = recv(ws)
    assert err["error"] == "VALIDATION_ERROR" and err["request_id"] == 7
    assert err["detail"][0]["loc"] == ["body", "prompt"]


def expect_refusal(client: TestClient, url: str, code: str, close_code: int, **kw: Any) -> dict[str, Any]:
    with client.websocket_connect(url, **kw) as ws:
        err = recv(ws)
        assert err["type"] == "x-fal-error" and err["error"] == code
        with pytest.raises(WebSocketDisconnect) as closed:
            recv(ws)
        assert closed.value.code == close_code
    return err


def test_unknown_app_is_refused_with_4404(client: TestClient) -> None:
    err = expect_refusal(client, "/nobody/nothing/realtime", "NOT_FOUND", 4404)
    assert "nobody/nothing" in err["reason"]


def test_unknown_websocket_path_is_refused_with_4404(client: TestClient) -> None:
    expect_refusal(client, "/just-a-path", "NOT_FOUND", 4404)


@pytest.mark.parametrize("value", ["0", "61", "lots"])
def test_invalid_max_buffering_is_refused_with_a_reason(client: TestClient, value: str) -> None:
    err = expect_refusal(client, f"/framewire/echo/realtime?max_buffering={value}", "INVALID_QUERY", 4400)
    assert "max_buffering" in err["reason"]


def test_foreign_origin_is_refused_at_the_handshake(client: TestClient) -> None:
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/framewire/echo/realtime", headers={"origin": "https://evil.example"}),
    ):
        pass
    same = {"origin": "http://127.0.0.1:8000", "host": "127.0.0.1:8000"}
    with client.websocket_connect("/framewire/echo/realtime", headers=same) as ws:
        ws.send_bytes(pack({"prompt": "same origin"}))
        assert recv(ws)["prompt"] == "same origin"


def test_idle_session_gets_timeout_then_close_1000(client: TestClient) -> None:
    # test/batching declares session_timeout=0.5 s
    with client.websocket_connect("/test/batching/realtime") as ws:
        ws.send_bytes(pack({"n": 1, "delay_ms": 300}))
        assert recv(ws)["n"] == 1  # the output in flight at the deadline still arrives
        err = recv(ws)
        assert err == {"type": "x-fal-error", "error": "TIMEOUT", "reason": "no inputs, reconnect when needed!"}
        with pytest.raises(WebSocketDisconnect) as closed:
            recv(ws)
        assert closed.value.code == 1000


def test_frames_from_eight_sessions_are_batched_together_in_order(
    client: TestClient, batching_app: BatchingApp
) -> None:
    sessions = [client.websocket_connect("/test/batching/realtime") for _ in range(8)]
    opened = [s.__enter__() for s in sessions]
    try:
        opened[0].send_bytes(pack({"n": 0, "delay_ms": 200}))
        time.sleep(0.05)  # the engine is busy with frame 0; the others queue up
        for i, ws in enumerate(opened):
            for k in (1, 2):
                ws.send_bytes(pack({"n": 100 * i + k}))
        outputs = [[recv(ws) for _ in range(3 if i == 0 else 2)] for i, ws in enumerate(opened)]
    finally:
        for s in sessions:
            s.__exit__(None, None, None)
    assert [o["n"] for o in outputs[0]] == [0, 1, 2]
    for i in range(1, 8):
        assert [o["n"] for o in outputs[i]] == [100 * i + 1, 100 * i + 2]  # order kept per session
    assert max(o["timings"]["batch_size"] for out in outputs for o in out) > 1
    assert max(len(b) for b in batching_app.batches) > 1


def test_buffer_full_drops_the_oldest_pending_frame(client: TestClient) -> None:
    with client.websocket_connect("/test/batching/realtime?max_buffering=1") as ws:
        ws.send_bytes(pack({"n": 0, "delay_ms": 200}))
        time.sleep(0.05)
        for n in (1, 2, 3):
            ws.send_bytes(pack({"n": n}))
        got = [recv(ws)["n"], recv(ws)["n"]]
        assert got == [0, 3]  # 1 and 2 were dropped for newer frames


def test_handler_crash_is_an_error_for_that_frame_only(client: TestClient) -> None:
    with client.websocket_connect("/test/batching/realtime") as ws:
        ws.send_bytes(pack({"n": -1}))
        err = recv(ws)
        assert err["error"] == "INTERNAL_ERROR"
        ws.send_bytes(pack({"n": 4}))
        assert recv(ws)["n"] == 4


def test_auth_on_refuses_missing_and_wrong_keys(auth_client: TestClient) -> None:
    err = expect_refusal(auth_client, "/framewire/echo/realtime", "UNAUTHORIZED", 4401)
    assert "missing credentials" in err["reason"]
    expect_refusal(
        auth_client, "/framewire/echo/realtime", "UNAUTHORIZED", 4401, headers={"authorization": "Key k1:nope"}
    )


def test_auth_on_accepts_a_key_header(auth_client: TestClient) -> None:
    with auth_client.websocket_connect("/framewire/echo/realtime", headers={"authorization": f"Key {KEY}"}) as ws:
        ws.send_bytes(pack({"prompt": "keyed"}))
        assert recv(ws)["prompt"] == "keyed"


def test_token_from_tokens_endpoint_opens_its_app_only(auth_client: TestClient) -> None:
    res = auth_client.post(
        "/tokens/", json={"allowed_apps": ["echo"], "token_expiration": 60}, headers={"authorization": f"Key {KEY}"}
    )
    assert res.status_code == 200
    token = res.json()
    assert isinstance(token, str)
    with auth_client.websocket_connect(f"/framewire/echo/realtime?fal_jwt_token={token}") as ws:
        ws.send_bytes(pack({"prompt": "tokened"}))
        assert recv(ws)["prompt"] == "tokened"
    err = expect_refusal(auth_client, f"/test/batching/realtime?fal_jwt_token={token}", "FORBIDDEN", 4403)
    assert "test/batching" in err["reason"]


def test_expired_token_is_refused(auth_client: TestClient) -> None:
    res = auth_client.post(
        "/tokens/", json={"allowed_apps": ["echo"], "token_expiration": 1}, headers={"authorization": f"Key {KEY}"}
    )
    token = res.json()
    time.sleep(2.1)
    err = expect_refusal(auth_client, f"/framewire/echo/realtime?fal_jwt_token={token}", "UNAUTHORIZED", 4401)
    assert "expired" in err["reason"]


def test_tokens_endpoint_validates_its_body(auth_client: TestClient) -> None:
    headers = {"authorization": f"Key {KEY}"}
    assert auth_client.post("/tokens/", json={"allowed_apps": ["echo"]}).status_code == 401
    bad = auth_client.post("/tokens/", json={"allowed_apps": []}, headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "allowed_apps"]
    unknown = auth_client.post("/tokens/", json={"allowed_apps": ["nope"]}, headers=headers)
    assert unknown.status_code == 422 and "allowed_apps[0]" in unknown.json()["detail"]
    too_long = auth_client.post("/tokens/", json={"allowed_apps": ["echo"], "token_expiration": 10**6}, headers=headers)
    assert too_long.status_code == 422 and "at most 3600" in too_long.json()["detail"]
    not_json = auth_client.post("/tokens/", content=b"{", headers=headers)
    assert not_json.status_code == 400


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"ready": True}


def test_a_session_that_keeps_sending_outlives_its_idle_timeout(client: TestClient) -> None:
    # test/batching declares session_timeout=0.5 s; frames every 0.2 s for 1.2 s keep it open
    with client.websocket_connect("/test/batching/realtime") as ws:
        started = time.monotonic()
        for n in range(6):
            ws.send_bytes(pack({"n": n}))
            assert recv(ws)["n"] == n
            time.sleep(0.2)
        assert time.monotonic() - started > 1.0
        err = recv(ws)  # then silence: the timeout counts from the last frame
        assert err["error"] == "TIMEOUT"
        assert time.monotonic() - started < 1.2 + 0.5 + 1.0
