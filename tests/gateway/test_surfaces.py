"""Surface selection, auth on the HTTP surfaces, output finalising, realtime file outputs."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from starlette.testclient import TestClient

from framewire.engine.api import AppRegistry
from framewire.engine.apps.echo import EchoApp
from framewire.engine.host import LocalEngine
from framewire.gateway.app import create_app
from framewire.gateway.platform.auth import Principal
from framewire.gateway.requests.finaliser import OutputFinaliser, data_uri, sniff_content_type
from framewire.gateway.requests.surfaces import is_queue
from framewire.gateway.settings import Settings
from framewire.gateway.storage.store import FileStore
from tests.gateway.queue_apps import PNG_HEADER, ImageApp, SteppingApp


class TwoKeys:
    """Two ordinary (non-admin) callers."""

    def verify(self, key: str) -> Principal | None:
        return {"a:1": Principal("a"), "b:2": Principal("b")}.get(key)


@pytest.fixture
def client() -> Iterator[TestClient]:
    settings = Settings(auth=True, api_keys=("a:1",), queue_port=9999)
    app = create_app(settings, LocalEngine(AppRegistry([EchoApp(), SteppingApp(), ImageApp()])), keys=TwoKeys())
    with TestClient(app) as c:
        yield c


def scope(host: str, port: int) -> dict[str, Any]:
    return {"type": "http", "headers": [(b"host", host.encode())], "server": ("127.0.0.1", port)}


def test_queue_surface_is_chosen_by_host_prefix_or_listener_port() -> None:
    settings = Settings(queue_port=8001)
    assert is_queue(scope("queue.fal.run", 8000), settings)
    assert is_queue(scope("localhost:8001", 8001), settings)
    assert not is_queue(scope("fal.run", 8000), settings)
    assert not is_queue(scope("myqueue.example", 8000), Settings())


def test_every_http_surface_checks_the_key_and_jobs_belong_to_their_caller(client: TestClient) -> None:
    a, b = {"authorization": "Key a:1"}, {"authorization": "Key b:2"}
    assert client.post("/framewire/echo", json={}).status_code == 401
    assert client.post("/framewire/echo", json={}, headers={"authorization": "Key a:wrong"}).status_code == 401
    assert client.post("/framewire/echo", json={}, headers=a).status_code == 200
    submitted = client.post("/framewire/echo", json={}, headers={**a, "host": "queue.local"})
    assert submitted.status_code == 200
    status_path = "/" + submitted.json()["status_url"].split("/", 3)[3]
    assert client.get(status_path, headers={"host": "queue.local"}).status_code == 401
    assert client.get(status_path, headers={**b, "host": "queue.local"}).status_code == 404
    deadline = time.monotonic() + 5
    while client.get(status_path, headers={**a, "host": "queue.local"}).json()["status"] != "COMPLETED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancel_path = status_path.removesuffix("/status") + "/cancel"
    assert client.put(cancel_path, headers={**b, "host": "queue.local"}).status_code == 404
    assert client.get("/.well-known/jwks.json").status_code == 200  # public
    assert client.get("/health").headers["x-fal-request-id"]


def test_realtime_outputs_store_files_only_when_sync_mode_is_false(client: TestClient) -> None:
    with client.websocket_connect("/test/image/realtime", headers={"authorization": "Key a:1"}) as ws:
        ws.send_bytes(msgpack.packb({"color": 1, "sync_mode": True}))
        inline = msgpack.unpackb(ws.receive_bytes())
        ws.send_bytes(msgpack.packb({"color": 2, "sync_mode": False, "request_id": "r2"}))
        stored = msgpack.unpackb(ws.receive_bytes())
        ws.send_bytes(msgpack.packb({"color": 3, "sync_mode": True}))
        after = msgpack.unpackb(ws.receive_bytes())
        ws.send_bytes(msgpack.packb({"color": 4}))  # no sync_mode: the model's default False does not store
        unsaid = msgpack.unpackb(ws.receive_bytes())
    assert inline["images"][0]["content"] == PNG_HEADER + b"\x01" * 32 and inline["images"][0]["url"] is None
    assert unsaid["images"][0]["content"][-1] == 4 and unsaid["images"][0]["url"] is None
    image = stored["images"][0]
    assert "content" not in image and image["url"].startswith("http://testserver/files/")
    assert stored["request_id"] == "r2" and stored["raw"] == b"\x00\x01"  # other bytes stay inline in msgpack
    assert after["images"][0]["content"][-1] == 3  # order kept behind the stored output
    served = client.get("/" + image["url"].split("/", 3)[3])
    assert served.content == PNG_HEADER + b"\x02" * 32 and served.headers["content-type"] == "image/png"


async def test_finaliser_turns_nested_files_and_bytes_into_json(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_bytes=1 << 20, default_ttl_s=0)
    store.ensure()
    fin = OutputFinaliser(store)
    big = b"\xff\xd8\xff" + b"\x00" * 100_000  # over the inline limit: done in a thread
    output = {"a": [{"url": None, "content": big, "content_type": "image/jpeg", "w": 1}], "b": {"c": b"GIF89a"}}
    inline = await fin.to_json(output, sync_mode=True, base_url="http://h")
    assert inline["a"][0] == {"url": data_uri(big, "image/jpeg"), "content_type": "image/jpeg", "w": 1}
    assert inline["b"]["c"] == "data:image/gif;base64,R0lGODlh"
    stored = await fin.to_json(output, sync_mode=False, base_url="http://h")
    url = stored["a"][0]["url"]
    assert url.startswith("http://h/files/") and store.read(*url.split("/")[-2:]) == (big, "image/jpeg")
    plain = {"n": 1, "s": "x"}
    assert await fin.to_json(plain, sync_mode=False, base_url="http://h") is plain  # nothing to do
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8") == "image/webp"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WAVE") == "application/octet-stream"


async def test_finaliser_writes_other_values_as_pydantic_does(tmp_path: Path) -> None:
    fin = OutputFinaliser(FileStore(tmp_path, max_bytes=1, default_ttl_s=0))
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    ident = uuid.UUID(int=1)
    out = await fin.to_json({"at": when, "ids": [ident]}, sync_mode=False, base_url="http://h")
    assert out == {"at": "2026-01-02T03:04:05Z", "ids": ["00000000-0000-0000-0000-000000000001"]}
