"""Video sessions and raw app sockets under the server's common limits, on a real socket.

A key's open sessions are one count across realtime sockets, raw app sockets and video
sessions; ``start-session`` bodies go through the guarded JSON reader (type, size,
structure); data channel messages are checked against the structure budget; with auth
off, other sites' pages may start neither a video session nor a raw socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from framewire.bench.video_client import StartRefused, VideoClient
from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.cluster.apps import RawSocketApp
from tests.conftest import live_server

ROOT = "root:rootsecret-0123456789"
SECRET = "token-secret-0123456789abcdef0123456789"
ITEMS = 64


@pytest.fixture(scope="module")
def auth_on() -> Iterator[str]:
    settings = Settings(auth=True, api_keys=(ROOT,), token_secret=SECRET, max_input_items=ITEMS)
    with live_server(settings, [EchoApp(), RawSocketApp()]) as address:
        yield address


@pytest.fixture(scope="module")
def auth_off() -> Iterator[str]:
    with live_server(Settings(), [EchoApp(), RawSocketApp()]) as address:
        yield address


async def until(predicate: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def limited_key(address: str, max_sessions: int) -> dict[str, str]:
    async with httpx.AsyncClient() as http:
        made = await http.post(
            f"http://{address}/v1/keys",
            json={"limits": {"max_sessions": max_sessions}},
            headers={"Authorization": f"Key {ROOT}"},
        )
    assert made.status_code == 201, made.text
    return {"Authorization": f"Key {made.json()['key']}"}


async def test_a_keys_sessions_are_one_count_across_video_raw_sockets_and_realtime(auth_on: str) -> None:
    headers = await limited_key(auth_on, 1)
    video = VideoClient(f"http://{auth_on}", "framewire/echo", headers=headers)
    await video.start()
    try:
        with pytest.raises(InvalidStatus) as raw:
            async with websockets.connect(f"ws://{auth_on}/test/rawsocket", additional_headers=headers):
                pass
        assert raw.value.response.status_code == 429
        second = VideoClient(f"http://{auth_on}", "framewire/echo", headers=headers)
        with pytest.raises(StartRefused) as refused:
            await second.start()
        await second.close()
        assert refused.value.status == 429 and refused.value.body["error_type"] == "too_many_sessions"
    finally:
        await video.close()
    await until(video.ended.is_set)
    # The slot is free again once the video session ended; a raw socket now holds it.
    async with websockets.connect(f"ws://{auth_on}/test/rawsocket", additional_headers=headers) as ws:
        await ws.recv()  # the app's greeting
        third = VideoClient(f"http://{auth_on}", "framewire/echo", headers=headers)
        with pytest.raises(StartRefused) as refused:
            await third.start()
        await third.close()
        assert refused.value.status == 429


async def test_start_session_bodies_go_through_the_guarded_reader(auth_on: str) -> None:
    url = f"http://{auth_on}/framewire/echo/start-session"
    auth = {"Authorization": f"Key {ROOT}"}
    async with httpx.AsyncClient() as http:
        as_text = await http.post(
            url, content=b'{"sdp": "v=0", "type": "offer"}', headers={**auth, "Content-Type": "text/plain"}
        )
        assert as_text.status_code == 415 and as_text.json()["error_type"] == "unsupported_media_type"
        many = {"sdp": "v=0", "type": "offer", "session_params": {f"k{i}": i for i in range(ITEMS * 2)}}
        crowded = await http.post(url, json=many, headers=auth)
        assert crowded.status_code == 413 and "--max-input-items" in crowded.json()["detail"]
        big = await http.post(
            url, content=b"{" + b" " * 70_000 + b"}", headers={**auth, "Content-Type": "application/json"}
        )
        assert big.status_code == 413 and "SDP offer" in big.json()["detail"]
        not_json = await http.post(url, content=b"{nope", headers={**auth, "Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error_type"] == "invalid_json"


async def test_a_data_channel_message_over_the_structure_budget_is_refused_and_the_session_goes_on(
    auth_on: str,
) -> None:
    session = VideoClient(f"http://{auth_on}", "framewire/echo", headers={"Authorization": f"Key {ROOT}"})
    await session.start()
    try:
        session.send({"type": "params", "tags": list(range(ITEMS * 2))})
        await until(lambda: any(m.get("type") == "error" for m in session.messages))
        error = next(m for m in session.messages if m.get("type") == "error")
        assert error["error"] == "MESSAGE_TOO_LARGE" and "--max-input-items" in error["reason"]
        seen = len(session.received)
        await until(lambda: len(session.received) > seen + 5)  # frames keep coming
        session.send({"type": "ping", "ts": 1})
        await until(lambda: any(m.get("type") == "pong" for m in session.messages))
    finally:
        await session.close()


async def test_with_auth_off_other_sites_pages_start_no_video_and_no_raw_socket(auth_off: str) -> None:
    url = f"http://{auth_off}/framewire/echo/start-session"
    async with httpx.AsyncClient() as http:
        foreign = await http.post(url, json={}, headers={"Origin": "https://elsewhere.example"})
        assert foreign.status_code == 403 and foreign.json()["error_type"] == "forbidden_origin"
        rebound = await http.post(url, json={}, headers={"Origin": "http://rebound.example", "Host": "rebound.example"})
        assert rebound.status_code == 403 and "--allowed-host" in rebound.json()["detail"]
    with pytest.raises(InvalidStatus) as raw:
        async with websockets.connect(f"ws://{auth_off}/test/rawsocket", origin="https://elsewhere.example"):  # type: ignore[arg-type]
            pass
    assert raw.value.response.status_code == 403
    # The server's own page (same origin) may: the video session runs.
    own = VideoClient(f"http://{auth_off}", "framewire/echo", headers={"Origin": f"http://{auth_off}"})
    await own.start()
    try:
        await until(lambda: len(own.matched()) >= 3)
    finally:
        await own.close()
