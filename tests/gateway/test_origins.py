"""Which browser pages may use the server: DNS rebinding and cross-site requests (auth off)."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.platform.origins import cross_site_refusal, trusted_host
from framewire.gateway.settings import Settings

KEY = "k1:s3cret"


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("localhost:8000", (), True),
        ("queue.localhost:8000", (), True),
        ("127.0.0.1:8000", (), True),
        ("[::1]:8000", (), True),
        ("10.0.0.7", (), True),
        ("evil.example:8000", (), False),
        ("localhost.evil.example", (), False),
        ("gpu-box.lan:8000", ("gpu-box.lan",), True),
        ("anything.example", ("*",), True),
        (None, (), False),
    ],
)
def test_hosts_a_rebinding_page_cannot_produce(host: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert trusted_host(host, allowed) is ok


def test_cross_site_rules() -> None:
    same = {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}
    assert cross_site_refusal(same, ()) is None
    assert cross_site_refusal({"host": "127.0.0.1:8000"}, ()) is None  # not a browser
    other = {"host": "127.0.0.1:8000", "origin": "https://app.example"}
    assert "--allowed-origin https://app.example" in (cross_site_refusal(other, ()) or "")
    assert cross_site_refusal(other, ("https://app.example",)) is None
    assert cross_site_refusal({"host": "127.0.0.1:8000", "sec-fetch-site": "cross-site"}, ()) is not None


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), LocalEngine(AppRegistry([EchoApp()])))) as c:
        yield c


LOCAL = {"host": "127.0.0.1:8000"}


def test_a_page_on_another_site_cannot_start_work(client: TestClient) -> None:
    foreign = {**LOCAL, "origin": "https://evil.example", "sec-fetch-site": "cross-site"}
    res = client.post("/framewire/echo", json={"prompt": "x"}, headers=foreign)
    assert res.status_code == 403 and res.json()["error_type"] == "forbidden_origin"
    queued = client.post("/framewire/echo", json={"prompt": "x"}, headers={**foreign, "host": "queue.localhost"})
    assert queued.status_code == 403
    keys = client.post("/v1/keys", json={"name": "x"}, headers=foreign)
    assert keys.status_code == 403
    img_tag = client.get("/framewire/echo", params={"prompt": "x"}, headers={**LOCAL, "sec-fetch-site": "cross-site"})
    assert img_tag.status_code == 403  # a GET run from an <img> on another site
    own_page = {**LOCAL, "origin": "http://127.0.0.1:8000", "sec-fetch-site": "same-origin"}
    assert client.post("/framewire/echo", json={"prompt": "x"}, headers=own_page).status_code == 200
    assert client.post("/framewire/echo", json={"prompt": "x"}, headers=LOCAL).status_code == 200  # curl, SDKs


def test_reads_from_other_sites_stay_open(client: TestClient) -> None:
    foreign = {**LOCAL, "sec-fetch-site": "cross-site"}
    assert client.get("/health", headers=foreign).status_code == 200
    assert client.get("/models", headers=foreign).status_code == 200


def test_a_rebound_name_is_refused_on_every_surface(client: TestClient) -> None:
    """evil.example's DNS now points here: its page is 'same origin' with itself, but not trusted."""
    rebound = {"host": "evil.example:8000", "origin": "http://evil.example:8000", "sec-fetch-site": "same-origin"}
    res = client.post("/framewire/echo", json={"prompt": "x"}, headers=rebound)
    assert res.status_code == 403 and "--allowed-host evil.example" in res.json()["detail"]
    assert client.get("/v1/keys", headers={**rebound, "origin": ""}).status_code == 403
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/framewire/echo/realtime", headers=rebound):
        pass
    # The same name without a browser (a hosts-file setup for fal's SDKs) still works.
    assert client.post("/framewire/echo", json={"prompt": "x"}, headers={"host": "fal.run"}).status_code == 200


def test_listed_hosts_and_origins_are_trusted() -> None:
    settings = Settings(allowed_hosts=("gpu-box.lan",), allowed_origins=("https://app.example",))
    with TestClient(create_app(settings, LocalEngine(AppRegistry([EchoApp()])))) as client:
        lan = {"host": "gpu-box.lan:8000", "origin": "http://gpu-box.lan:8000"}
        assert client.post("/framewire/echo", json={"prompt": "x"}, headers=lan).status_code == 200
        with client.websocket_connect("/framewire/echo/realtime", headers=lan) as ws:
            ws.send_bytes(msgpack.packb({"prompt": "lan"}))
            assert msgpack.unpackb(ws.receive_bytes())["prompt"] == "lan"
        app = {**LOCAL, "origin": "https://app.example"}
        assert client.post("/framewire/echo", json={"prompt": "x"}, headers=app).status_code == 200


def test_with_auth_on_the_host_is_not_checked() -> None:
    settings = Settings(auth=True, api_keys=(KEY,))
    with TestClient(create_app(settings, LocalEngine(AppRegistry([EchoApp()])))) as client:
        headers = {"host": "api.example.com", "origin": "https://api.example.com", "authorization": f"Key {KEY}"}
        assert client.post("/framewire/echo", json={"prompt": "x"}, headers=headers).status_code == 200
