"""Storage: the local file store, signed uploads, token uploads and multipart, over HTTP."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from framewire.gateway.storage.store import FileStore, FileTooLarge, safe_name
from tests.conftest import live_server

KEY = "k1:s3cret"


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


# -- the store itself --------------------------------------------------------------------


def test_file_names_are_sanitised_and_keep_a_useful_extension() -> None:
    assert safe_name("../../etc/passwd", "text/plain") == "passwd"
    assert safe_name("my photo (1).JPG", "image/jpeg") == "my_photo_1_.JPG"
    assert safe_name(None, "image/png") == "file.png"
    assert safe_name("..", "application/octet-stream") == "file.bin"


def test_store_refuses_traversal_and_unknown_keys(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files", max_bytes=100, default_ttl_s=0)
    store.ensure()
    (tmp_path / "secret.txt").write_text("no")
    stored = store.put_bytes(b"abc", "text/plain", "a.txt")
    assert store.read(stored.id, stored.name) == (b"abc", "text/plain")
    assert store.get("..", "secret.txt") is None
    assert store.get(stored.id, "../../../secret.txt") is None
    assert store.get("A" * 22, "a.txt") is None
    with pytest.raises(FileTooLarge):
        store.put_bytes(b"x" * 101, "text/plain")


def test_expired_files_are_hidden_then_swept(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files", max_bytes=100, default_ttl_s=0)
    store.ensure()
    short = store.put_bytes(b"short", "text/plain", ttl_s=0.05)
    kept = store.put_bytes(b"kept", "text/plain")
    time.sleep(0.1)
    assert store.get(short.id, short.name) is None
    assert store.sweep() == 1
    assert not short.path.exists() and store.get(kept.id, kept.name) is not None


# -- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[str]:
    settings = Settings(auth=True, api_keys=(KEY,), max_upload_bytes=64 * 1024)
    with live_server(settings, [EchoApp()]) as address:
        yield address


@pytest.fixture
async def client(server: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{server}", timeout=10) as c:
        yield c


KEY_HEADER = {"authorization": f"Key {KEY}"}


async def test_initiate_then_put_to_the_signed_url_then_get_the_file(client: httpx.AsyncClient) -> None:
    init = await client.post(
        "/storage/upload/initiate",
        params={"storage_type": "fal-cdn-v3"},
        json={"content_type": "image/webp", "file_name": "cat.webp"},
        headers=KEY_HEADER,
    )
    assert init.status_code == 200
    urls = init.json()
    assert urls["file_url"].endswith("/cat.webp")
    missing = await client.get(path_of(urls["file_url"]))
    assert missing.status_code == 404  # not uploaded yet
    put = await client.put(path_of(urls["upload_url"]), content=b"RIFF....WEBP", headers={"content-type": "image/webp"})
    assert put.status_code == 200  # no key needed: the signature is the credential
    got = await client.get(path_of(urls["file_url"]))
    assert got.status_code == 200 and got.content == b"RIFF....WEBP"
    assert got.headers["content-security-policy"] == "sandbox" and got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-type"] == "image/webp"


async def test_storage_needs_a_key_and_signed_urls_cannot_be_forged(client: httpx.AsyncClient) -> None:
    no_key = await client.post("/storage/upload/initiate", json={})
    assert no_key.status_code == 401
    urls = (await client.post("/storage/upload/initiate", json={}, headers=KEY_HEADER)).json()
    parts = urlsplit(urls["upload_url"])
    query = parse_qs(parts.query)
    forged = dict(query, content_type=["text/html"])
    tampered = await client.put(parts.path, params={k: v[0] for k, v in forged.items()}, content=b"<script>")
    assert tampered.status_code == 403 and "signature" in tampered.json()["detail"]
    other_file = parts.path.rsplit("/", 1)[0] + "/other.bin"
    moved = await client.put(other_file, params={k: v[0] for k, v in query.items()}, content=b"x")
    assert moved.status_code == 403
    unsigned = await client.put(parts.path, content=b"x")
    assert unsigned.status_code == 403


async def test_uploads_over_the_size_limit_get_413(client: httpx.AsyncClient) -> None:
    urls = (await client.post("/storage/upload/initiate", json={}, headers=KEY_HEADER)).json()
    res = await client.put(path_of(urls["upload_url"]), content=b"z" * (64 * 1024 + 1))
    assert res.status_code == 413 and res.json()["error_type"] == "file_too_large"
    assert (await client.get(path_of(urls["file_url"]))).status_code == 404


async def test_cdn_token_and_direct_upload_like_the_python_client(client: httpx.AsyncClient) -> None:
    token = (
        await client.post("/storage/auth/token", params={"storage_type": "fal-cdn-v3"}, json={}, headers=KEY_HEADER)
    ).json()
    expires_at = datetime.datetime.fromisoformat(token["expires_at"])
    assert expires_at.tzinfo is not None and expires_at > datetime.datetime.now(datetime.UTC)
    assert token["token_type"] == "Bearer" and token["base_url"].startswith("http://")
    auth = {"authorization": f"Bearer {token['token']}"}
    res = await client.post(
        "/files/upload",
        content=b"%PDF-1.7",
        headers={**auth, "content-type": "application/pdf", "x-fal-file-name": "doc.pdf"},
    )
    assert res.status_code == 200
    url = res.json()["access_url"]
    assert url.endswith("/doc.pdf")
    got = await client.get(path_of(url))
    assert got.content == b"%PDF-1.7" and got.headers["content-type"] == "application/pdf"
    bad = await client.post("/files/upload", content=b"x", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 401


async def test_lifecycle_header_sets_the_files_expiry(client: httpx.AsyncClient) -> None:
    res = await client.post(
        "/files/upload",
        content=b"brief",
        headers={**KEY_HEADER, "x-fal-object-lifecycle": '{"expiration_duration_seconds": 1}'},
    )
    url = path_of(res.json()["access_url"])
    assert (await client.get(url)).status_code == 200
    await asyncio.sleep(1.1)
    assert (await client.get(url)).status_code == 404
    bad = await client.post("/files/upload", content=b"x", headers={**KEY_HEADER, "x-fal-object-lifecycle": "{"})
    assert bad.status_code == 400 and "x-fal-object-lifecycle" in bad.json()["detail"]


async def test_multipart_upload_the_js_way(client: httpx.AsyncClient) -> None:
    init = (
        await client.post(
            "/storage/upload/initiate-multipart",
            json={"content_type": "video/mp4", "file_name": "clip.mp4"},
            headers=KEY_HEADER,
        )
    ).json()
    parts = urlsplit(init["upload_url"])
    answers = []
    for n, chunk in ((2, b"second"), (1, b"first-")):
        res = await client.put(f"{parts.path}/{n}?{parts.query}", content=chunk)
        assert res.status_code == 200
        answers.append(res.json())
    assert {a["partNumber"] for a in answers} == {1, 2} and all(a["etag"] for a in answers)
    done = await client.post(f"{parts.path}/complete?{parts.query}", json={"parts": answers})
    assert done.status_code == 200
    got = await client.get(path_of(init["file_url"]))
    assert got.content == b"first-second" and got.headers["content-type"] == "video/mp4"


async def test_multipart_upload_the_python_way_returns_etag_headers(client: httpx.AsyncClient) -> None:
    create = (
        await client.post(
            "/files/upload/multipart",
            headers={**KEY_HEADER, "content-type": "text/plain", "x-fal-file-name": "big.txt"},
        )
    ).json()
    base = path_of(create["access_url"])
    etags = []
    for n, chunk in ((1, b"a" * 10), (2, b"b" * 5)):
        res = await client.put(f"{base}/multipart/{create['uploadId']}/{n}", content=chunk, headers=KEY_HEADER)
        assert res.status_code == 200
        etags.append({"partNumber": n, "etag": res.headers["etag"]})
    missing = await client.post(
        f"{base}/multipart/{create['uploadId']}/complete",
        headers=KEY_HEADER,
        json={"parts": [*etags, {"partNumber": 3, "etag": "x"}]},
    )
    assert missing.status_code == 400 and "part 3" in missing.json()["detail"]
    done = await client.post(
        f"{base}/multipart/{create['uploadId']}/complete", headers=KEY_HEADER, json={"parts": etags}
    )
    assert done.status_code == 200
    assert (await client.get(base)).content == b"a" * 10 + b"b" * 5


async def test_jwks_serves_the_webhook_key_without_auth(client: httpx.AsyncClient) -> None:
    res = await client.get("/.well-known/jwks.json")
    assert res.status_code == 200
    (key,) = res.json()["keys"]
    assert key["kty"] == "OKP" and key["crv"] == "Ed25519" and len(key["x"]) == 43


# -- a signed URL is a credential for one file, and refused uploads leave nothing -----------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    settings = Settings(auth=True, api_keys=(KEY,), max_upload_bytes=64 * 1024, data_dir=str(tmp_path))
    with live_server(settings, [EchoApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=10) as c:
            yield c, tmp_path


async def test_multipart_parts_count_towards_the_limit_and_a_refused_upload_is_deleted(
    keyed: tuple[httpx.AsyncClient, Path],
) -> None:
    client, data_dir = keyed
    init = (await client.post("/storage/upload/initiate-multipart", json={}, headers=KEY_HEADER)).json()
    parts = urlsplit(init["upload_url"])
    first = await client.put(f"{parts.path}/1?{parts.query}", content=b"a" * 40_000)
    assert first.status_code == 200
    assert any((data_dir / "files" / ".multipart").iterdir())
    second = await client.put(f"{parts.path}/2?{parts.query}", content=b"b" * 40_000)  # 80 kB in all: over
    assert second.status_code == 413 and "65536 bytes (--max-upload-bytes)" in second.json()["detail"]
    assert not any((data_dir / "files" / ".multipart").iterdir())  # parts gone at once, not in 24 h
    assert not any((data_dir / "files" / ".tmp").iterdir())
    again = await client.put(f"{parts.path}/3?{parts.query}", content=b"c")
    assert again.status_code == 404


@pytest.mark.parametrize("content_type", ["text/html\r\nX-Injected: 1", "image/pngé", "image/png\n", "", "png"])
async def test_content_types_a_header_cannot_carry_are_refused(
    keyed: tuple[httpx.AsyncClient, Path], content_type: str
) -> None:
    client, _ = keyed
    res = await client.post("/storage/upload/initiate", json={"content_type": content_type}, headers=KEY_HEADER)
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "content_type"]


async def test_a_direct_upload_with_a_non_ascii_content_type_is_refused(keyed: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = keyed
    headers = [(b"authorization", f"Key {KEY}".encode()), (b"content-type", "image/pngé".encode())]
    res = await client.post("/files/upload", content=b"x", headers=headers)
    assert res.status_code == 400 and "Content-Type" in res.json()["detail"]


async def test_a_signed_put_keeps_the_signed_type_and_writes_the_file_once(
    keyed: tuple[httpx.AsyncClient, Path],
) -> None:
    client, _ = keyed
    urls = (
        await client.post("/storage/upload/initiate", json={"content_type": "image/png"}, headers=KEY_HEADER)
    ).json()
    put = path_of(urls["upload_url"])
    swapped = await client.put(put, content=b"<script>", headers={"content-type": "text/html"})
    assert swapped.status_code == 403 and "image/png" in swapped.json()["detail"]
    first = await client.put(put, content=b"\x89PNG one", headers={"content-type": "image/png"})
    assert first.status_code == 200
    second = await client.put(put, content=b"\x89PNG two")
    assert second.status_code == 409 and second.json()["error_type"] == "already_uploaded"
    got = await client.get(path_of(urls["file_url"]))
    assert got.content == b"\x89PNG one" and got.headers["content-type"] == "image/png"


async def test_a_signed_url_stops_working_when_its_key_is_revoked(keyed: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = keyed
    created = (await client.post("/v1/keys", json={"name": "uploader"}, headers=KEY_HEADER)).json()
    own = {"authorization": f"Key {created['key']}"}
    urls = (await client.post("/storage/upload/initiate", json={}, headers=own)).json()
    assert (await client.delete(f"/v1/keys/{created['id']}", headers=KEY_HEADER)).status_code == 200
    res = await client.put(path_of(urls["upload_url"]), content=b"late")
    assert res.status_code == 403 and "revoked" in res.json()["detail"]


async def test_nothing_a_token_asks_for_outlives_the_token(keyed: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = keyed
    token = (
        await client.post("/tokens/", json={"allowed_apps": ["echo"], "token_expiration": 60}, headers=KEY_HEADER)
    ).json()
    bearer = {"authorization": f"Bearer {token}"}
    storage = (await client.post("/storage/auth/token", json={}, headers=bearer)).json()
    expires_at = datetime.datetime.fromisoformat(storage["expires_at"])
    assert expires_at <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=61)
    chained = (
        await client.post("/storage/auth/token", json={}, headers={"authorization": f"Bearer {storage['token']}"})
    ).json()
    assert datetime.datetime.fromisoformat(chained["expires_at"]) <= expires_at
    urls = (await client.post("/storage/upload/initiate", json={}, headers=bearer)).json()
    expires = int(parse_qs(urlsplit(urls["upload_url"]).query)["expires"][0])
    assert expires <= time.time() + 61
