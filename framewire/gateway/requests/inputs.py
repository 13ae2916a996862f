"""Fetching the files an input names, before it reaches the engine.

Fields whose name ends in ``_url`` (or ``_urls``, lists) holding an ``http(s)://`` URL
are downloaded here, asynchronously, with a timeout and a size cap, so the engine's
worker never waits on the network. URLs of this server's own ``/files/…`` are read from
disk. ``data:`` URIs and non-URL values pass through untouched. A top-level field whose
type accepts ``bytes`` receives the bytes; any other field receives a ``data:`` URI.
Failures raise :class:`FetchError` naming the field (fal's ``file_download_error``).

Only public addresses are fetched unless ``--private-networks`` is on: every host, and every
redirect's target, is checked first (:mod:`framewire.gateway.requests.addresses`).
"""

from __future__ import annotations

import asyncio
import types
import typing
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel

from framewire.gateway.requests.addresses import refusal
from framewire.gateway.requests.finaliser import data_uri
from framewire.gateway.storage.store import FileStore

_MAX_REDIRECTS = 5


class FetchError(Exception):
    """A URL in the input could not be fetched; ``loc`` is the field's path."""

    def __init__(self, loc: list[str | int], reason: str, error_type: str = "file_download_error") -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason
        self.error_type = error_type

    def detail(self) -> list[dict[str, Any]]:
        return [{"loc": ["body", *self.loc], "msg": self.reason, "type": self.error_type}]


def _accepts_bytes(annotation: Any) -> bool:
    if annotation is bytes:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_accepts_bytes(arg) for arg in typing.get_args(annotation))
    return False


_URL_SUFFIXES = ("_url", "_urls")


def _is_url_field(name: Any) -> bool:
    return isinstance(name, str) and name.endswith(_URL_SUFFIXES)


def _is_http(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(("http://", "https://"))


def fetchable(data: dict[str, Any], model: type[BaseModel] | None = None) -> list[tuple[list[str | int], str, bool]]:
    """The URLs :meth:`InputFetcher.resolve` would fetch: (field path, URL, whether the field takes bytes).

    ``model`` tells which top-level fields take bytes (None: none do). Cheap when there is
    nothing to fetch: every realtime frame is looked at.
    """
    jobs: list[tuple[list[str | int], str, bool]] = []

    def collect(value: Any, loc: list[str | int], in_url_field: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, dict | list) or (isinstance(item, str) and _is_url_field(key)):
                    collect(item, [*loc, key], _is_url_field(key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict | list) or (in_url_field and isinstance(item, str)):
                    collect(item, [*loc, i], in_url_field)
        elif in_url_field and _is_http(value):
            jobs.append((loc, value, False))

    for key, value in data.items():
        if isinstance(value, str):
            if _is_url_field(key) and _is_http(value):
                field = model.model_fields.get(key) if model is not None else None
                jobs.append(([key], value, field is not None and _accepts_bytes(field.annotation)))
        elif isinstance(value, dict | list):
            collect(value, [key], _is_url_field(key))
    return jobs


class InputFetcher:
    """Downloads input URLs; one shared HTTP client, created by the lifespan."""

    def __init__(
        self,
        files: FileStore,
        *,
        timeout_s: float,
        max_bytes: int,
        private_networks: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.files = files
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.private_networks = private_networks
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # followed here, each target checked
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def resolve(self, data: dict[str, Any], model: type[BaseModel], base_url: str) -> dict[str, Any]:
        """A copy of ``data`` with every fetchable URL replaced by its content."""
        jobs = fetchable(data, model)
        if not jobs:
            return data
        own_host = urlsplit(base_url).netloc.lower()
        fetched = await asyncio.gather(*(self._fetch(loc, url, own_host) for loc, url, _ in jobs))
        out: dict[str, Any] = _copy(data)
        for (loc, _, as_bytes), (content, content_type) in zip(jobs, fetched, strict=True):
            _assign(out, loc, content if as_bytes else data_uri(content, content_type))
        return out

    async def _fetch(self, loc: list[str | int], url: str, own_host: str) -> tuple[bytes, str | None]:
        where = ".".join(str(p) for p in loc)
        parts = urlsplit(url)
        pieces = parts.path.split("/")
        if parts.path.startswith("/files/") and len(pieces) == 4:
            same_host = parts.netloc.lower() == own_host
            # The run and queue surfaces of this server: another port (--queue-port) or queue.HOST.
            sibling = (parts.hostname or "") in _hostnames(own_host)
            if same_host or sibling:
                found = await asyncio.to_thread(self.files.read, pieces[2], pieces[3])
                if found is not None:
                    return found
                if same_host:
                    raise FetchError(loc, f"{where}: {url} is not a stored file (or it expired)")
        try:
            for _ in range(_MAX_REDIRECTS + 1):
                refused = None if self.private_networks else await refusal(url)
                if refused is not None:
                    raise FetchError(loc, f"{where}: {refused}")
                async with self._client.stream("GET", url) as response:
                    location = response.headers.get("location")
                    if response.is_redirect and location:
                        url = urljoin(url, location)
                        if not _is_http(url):
                            raise FetchError(loc, f"{where}: redirected to {url}, not an http(s) URL")
                        continue
                    return await self._read(loc, url, response)
        except httpx.TimeoutException:
            raise FetchError(loc, f"{where}: fetching {url} timed out after {self.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise FetchError(loc, f"{where}: fetching {url} failed ({type(exc).__name__}: {exc})") from None
        raise FetchError(loc, f"{where}: fetching {url}: more than {_MAX_REDIRECTS} redirects")

    async def _read(self, loc: list[str | int], url: str, response: httpx.Response) -> tuple[bytes, str | None]:
        where = ".".join(str(p) for p in loc)
        if response.status_code >= 400:
            raise FetchError(loc, f"{where}: fetching {url} returned HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            limit = self.max_bytes
            raise FetchError(loc, f"{where}: {url} is {declared} bytes; the limit is {limit}", "file_too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(loc, f"{where}: {url} exceeds the limit of {self.max_bytes} bytes", "file_too_large")
            chunks.append(chunk)
        content_type = response.headers.get("content-type")
        return b"".join(chunks), (content_type.split(";")[0].strip() if content_type else None)


def _hostnames(netloc: str) -> set[str]:
    """The host names one of this server's surfaces answers as, from the ``netloc`` a request used."""
    host = urlsplit(f"//{netloc}").hostname or ""
    return {host, host.removeprefix("queue."), f"queue.{host}"}


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _assign(root: Any, loc: list[str | int], value: Any) -> None:
    target = root
    for part in loc[:-1]:
        target = target[part]
    target[loc[-1]] = value
