"""Raw WebSocket app endpoints on a real socket, opened with fal's ``ws_connect()`` unmodified."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import fal_client
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.cluster.apps import RawSocketApp
from tests.conftest import live_server
from tests.gateway.test_live import point_fal_client_at

KEY = "k1:s3cret"
SECRET = "token-secret-0123456789abcdef0123456789"


@pytest.fixture
def server() -> Iterator[str]:
    settings = Settings(auth=True, api_keys=(KEY,), token_secret=SECRET, max_frame_bytes=64 * 1024)
    with live_server(settings, [RawSocketApp(), EchoApp()]) as address:
        yield address


@pytest.mark.parametrize("use_jwt", [True, False], ids=["token", "key-header"])
async def test_ws_connect_round_trip(server: str, monkeypatch: pytest.MonkeyPatch, use_jwt: bool) -> None:
    point_fal_client_at(monkeypatch, server)
    client = fal_client.AsyncClient(key=KEY)
    try:
        await _round_trip(client, use_jwt)
    finally:
        if use_jwt:  # the client fetched its token with an HTTP client it keeps open
            await (await client._client).aclose()


async def _round_trip(client: fal_client.AsyncClient, use_jwt: bool) -> None:
    async with client.ws_connect("test/rawsocket", use_jwt=use_jwt) as ws:
        hello = json.loads(await ws.recv())
        assert hello == {"pid": os.getpid(), "query": {}, "path": ""}  # the token is not the app's business
        await ws.send("hello")
        assert await ws.recv() == "HELLO"
        await ws.send(b"\x01\x02\x03")
        assert await ws.recv() == b"\x03\x02\x01"
        await ws.send("close")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
            4001,
            "asked to close",
        )


def test_sync_ws_connect_to_fals_is_websocket_spelling(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_fal_client_at(monkeypatch, server)
    client = fal_client.SyncClient(key=KEY)
    try:
        with client.ws_connect("test/rawsocket/count") as ws:
            for n in range(1, 4):
                ws.send(json.dumps({"n": n}))
                assert json.loads(ws.recv()) == {"seen": n, "got": {"n": n}}
    finally:
        client._client.close()


async def test_refusals_are_http_statuses_at_the_handshake(server: str) -> None:
    base = f"ws://{server}/test/rawsocket"
    with pytest.raises(InvalidStatus) as no_key:
        async with websockets.connect(base):
            pass
    assert no_key.value.response.status_code == 401
    assert b"missing credentials" in no_key.value.response.body
    with pytest.raises(InvalidStatus) as wrong:
        async with websockets.connect(base, additional_headers={"Authorization": "Key k1:wrong"}):
            pass
    assert wrong.value.response.status_code == 401
    token = await asyncio.to_thread(_token, server, ["echo"])
    with pytest.raises(InvalidStatus) as scoped:
        async with websockets.connect(f"{base}?fal_jwt_token={token}"):
            pass
    assert scoped.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as origin:
        async with websockets.connect(base, origin="https://elsewhere.example"):  # type: ignore[arg-type]
            pass
    assert origin.value.response.status_code == 403


async def test_the_query_reaches_the_app_and_other_paths_stay_realtime(server: str) -> None:
    headers = {"Authorization": f"Key {KEY}"}
    async with websockets.connect(f"ws://{server}/test/rawsocket?room=7", additional_headers=headers) as ws:
        assert json.loads(await ws.recv())["query"] == {"room": "7"}
    async with websockets.connect(f"ws://{server}/test/rawsocket/nothing", additional_headers=headers) as ws:
        refusal = json.loads(await ws.recv())
        assert refusal["error"] == "NOT_FOUND"
    async with websockets.connect(f"ws://{server}/framewire/echo/realtime", additional_headers=headers) as ws:
        await ws.send(b"\x81\xa6prompt\xa1x")  # msgpack {"prompt": "x"}
        assert b"prompt" in await ws.recv()


async def test_a_message_over_the_limit_closes_with_1009(server: str) -> None:
    headers = {"Authorization": f"Key {KEY}"}
    async with websockets.connect(f"ws://{server}/test/rawsocket", additional_headers=headers, max_size=None) as ws:
        await ws.recv()
        await ws.send(b"x" * (64 * 1024 + 1))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def _token(server: str, apps: list[str]) -> str:
    import httpx

    res = httpx.post(
        f"http://{server}/tokens/",
        json={"allowed_apps": apps, "token_expiration": 60},
        headers={"Authorization": f"Key {KEY}"},
    )
    res.raise_for_status()
    token: str = res.json()
    return token


def test_the_catalog_lists_socket_endpoints(server: str) -> None:
    import httpx

    headers = {"Authorization": f"Key {KEY}"}
    entry = httpx.get(f"http://{server}/models/test/rawsocket", headers=headers).json()
    assert entry["websockets"] == [
        {"path": "/", "id": "test/rawsocket", "url": "/test/rawsocket"},
        {"path": "/count", "id": "test/rawsocket/count", "url": "/test/rawsocket/count"},
    ]
    doc = httpx.get(f"http://{server}/models/test/rawsocket/openapi.json", headers=headers).json()
    assert doc["paths"]["/test/rawsocket/count"]["get"]["x-fal-protocol"]["type"] == "websocket"
