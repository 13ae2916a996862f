"""Input URL fetching: public addresses only unless allowed, redirects checked hop by hop.

Name resolution is replaced by a table and HTTP by a mock transport, so no network is used."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from framewire.gateway.requests.addresses import not_public
from framewire.gateway.requests.inputs import FetchError, InputFetcher
from framewire.gateway.storage.store import FileStore

ADDRESSES = {
    "cdn.example": "93.184.215.14",
    "v6.example": "2606:4700::1111",
    "metadata.example": "169.254.169.254",
    "intranet.example": "10.1.2.3",
    "mapped.example": "::ffff:127.0.0.1",
    "localhost": "127.0.0.1",
}


class In(BaseModel):
    image_url: str | bytes = b""


@pytest.fixture(autouse=True)
def resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            address = ADDRESSES.get(host) or str(ipaddress.ip_address(host))
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def handler(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/image.png":
        return httpx.Response(200, content=b"\x89PNG", headers={"content-type": "image/png"})
    if request.url.path == "/to-metadata":
        return httpx.Response(302, headers={"location": "http://metadata.example/latest/meta-data/"})
    if request.url.path == "/to-image":
        return httpx.Response(301, headers={"location": "/image.png"})
    if request.url.path == "/loop":
        return httpx.Response(302, headers={"location": "/loop"})
    return httpx.Response(200, content=b"secret")


def fetcher(tmp_path: Path, *, private: bool = False) -> InputFetcher:
    files = FileStore(tmp_path, max_bytes=1 << 20, default_ttl_s=0)
    return InputFetcher(
        files, timeout_s=2, max_bytes=1 << 20, private_networks=private, transport=httpx.MockTransport(handler)
    )


async def fetch(f: InputFetcher, url: str) -> Any:
    try:
        return (await f.resolve({"image_url": url}, In, "http://gateway.example"))["image_url"]
    finally:
        await f.aclose()


@pytest.mark.parametrize("url", ["http://cdn.example/image.png", "https://v6.example:8443/image.png"])
async def test_public_addresses_are_fetched(tmp_path: Path, url: str) -> None:
    assert await fetch(fetcher(tmp_path), url) == b"\x89PNG"


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://metadata.example/latest/", "169.254.169.254"),
        ("http://intranet.example/admin", "10.1.2.3"),
        ("http://localhost:8000/keys", "127.0.0.1"),
        ("http://mapped.example/", "127.0.0.1"),
        ("http://[::1]/", "::1"),
        ("http://0.0.0.0/", "0.0.0.0"),
    ],
)
async def test_private_addresses_are_refused_naming_the_address_and_the_switch(
    tmp_path: Path, url: str, address: str
) -> None:
    with pytest.raises(FetchError) as caught:
        await fetch(fetcher(tmp_path), url)
    assert f"resolves to {address}" in caught.value.reason and "--private-networks" in caught.value.reason
    assert caught.value.loc == ["image_url"] and caught.value.error_type == "file_download_error"


async def test_a_redirect_to_a_private_address_is_refused_and_public_redirects_are_followed(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"resolves to 169\.254\.169\.254"):
        await fetch(fetcher(tmp_path), "http://cdn.example/to-metadata")
    assert await fetch(fetcher(tmp_path), "http://cdn.example/to-image") == b"\x89PNG"
    with pytest.raises(FetchError, match="more than 5 redirects"):
        await fetch(fetcher(tmp_path), "http://cdn.example/loop")


async def test_unresolvable_hosts_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="cannot resolve the host"):
        await fetch(fetcher(tmp_path), "http://no-such-host.invalid/x.png")


async def test_private_networks_can_be_allowed(tmp_path: Path) -> None:
    assert await fetch(fetcher(tmp_path, private=True), "http://intranet.example/admin") == b"secret"
    assert await fetch(fetcher(tmp_path, private=True), "http://cdn.example/to-metadata") == b"secret"


async def test_this_servers_files_are_read_from_disk_from_its_run_and_queue_hosts(tmp_path: Path) -> None:
    f = fetcher(tmp_path)
    f.files.ensure()
    stored = f.files.put_bytes(b"\x89PNG stored", "image/png", "in.png")
    for base, url in [
        ("http://localhost:8001", f"http://localhost:8000{stored.url_path}"),  # --queue-port
        ("http://queue.intranet.example", f"http://intranet.example{stored.url_path}"),  # queue.HOST
        ("http://intranet.example", f"http://intranet.example{stored.url_path}"),
    ]:
        got = await f.resolve({"image_url": url}, In, base)
        assert got["image_url"] == b"\x89PNG stored"
    # Not stored here, on a sibling host: an ordinary URL, so private addresses are refused.
    with pytest.raises(FetchError, match="not a public address"):
        await f.resolve({"image_url": "http://localhost:8000/files/abc/x.png"}, In, "http://localhost:8001")
    with pytest.raises(FetchError, match="not a stored file"):
        await f.resolve({"image_url": "http://localhost:8001/files/abc/x.png"}, In, "http://localhost:8001")
    await f.aclose()


def test_not_public_classifies_addresses() -> None:
    assert not_public("8.8.8.8") is None and not_public("2001:4860:4860::8888") is None
    for address in ("127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.1.1", "224.0.0.1"):
        assert not_public(address) == address
    assert not_public("fe80::1%eth0") == "fe80::1" and not_public("fc00::1") == "fc00::1"
    assert not_public("::ffff:10.0.0.1") == "10.0.0.1"
