"""What every wing's HTTP handlers share: fal's error shapes, JSON bodies, the client's base URL.

JSON bodies (:func:`read_json`): every route that takes a JSON body reads it here, with
its limits enforced before the work: a ``Content-Type`` that is JSON (or none; browsers'
form and ``text/plain`` types, which need no CORS preflight, are refused with 415), at
most ``max_bytes`` (413 from ``Content-Length`` before reading, or as soon as a streamed
body passes it), no pause longer than ``read_timeout_s`` (408), and a structure within
the input budget (:mod:`framewire.gateway.budget`, 413) checked before decoding.

Errors (fal protocol §11): every error body is ``{"detail": <string | list>}``; validation errors are 422 with
pydantic's ``[{loc, msg, type}]`` list; an ``error_type`` in the body (and the
``x-fal-error-type`` header) lets fal's Python client tell errors apart.

URLs handed back use the scheme and host the client used (:func:`base_url`), so they work
behind TLS terminators and proxies (uvicorn applies ``X-Forwarded-Proto`` from trusted
proxies to the scheme).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse

from framewire.engine.api import AppError
from framewire.gateway.budget import OverBudget, StructureBudget, check_json
from framewire.gateway.realtime import protocol

REQUEST_ID = "x-fal-request-id"
#: Most of a refused body read and dropped before answering, and for how long (see :func:`_discard`).
DISCARD_BYTES = 1 << 20
DISCARD_S = 1.0
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack")
_JSON_TYPES = ("application/json", "application/*", "*/*")


def prefers_msgpack(accept: str | None) -> bool:
    """Whether an ``Accept`` header ranks msgpack above JSON (RFC 9110 quality values; ties go to JSON)."""
    if not accept:
        return False
    msgpack_q = json_q = 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in _MSGPACK_TYPES:
            msgpack_q = max(msgpack_q, q)
        elif media in _JSON_TYPES:
            json_q = max(json_q, q)
    return msgpack_q > json_q


def error(
    status_code: int,
    detail: Any,
    *,
    error_type: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail, **extra}
    hdrs = dict(headers or {})
    if error_type is not None:
        body["error_type"] = error_type
        hdrs["x-fal-error-type"] = error_type
    return JSONResponse(body, status_code=status_code, headers=hdrs)


def validation_error(exc: ValidationError, where: str = "body") -> JSONResponse:
    """422 naming each failing field, under ``where`` (``body`` or ``query``)."""
    return JSONResponse(
        {"detail": protocol.validation_detail(exc, where)}, status_code=422, headers={"x-fal-billable-units": "0"}
    )


def app_error_body(exc: AppError) -> tuple[int, dict[str, Any]]:
    """The status and body an app's error is answered with (and replayed from the queue)."""
    error_type = exc.code.lower()
    if exc.field is not None:
        detail: Any = [{"loc": ["body", exc.field], "msg": exc.reason, "type": error_type}]
    else:
        detail = exc.reason
    return exc.status, {"detail": detail, "error_type": error_type}


@dataclass(frozen=True)
class BodyLimits:
    """How request bodies are read: at most ``max_bytes``, pausing at most ``read_timeout_s``
    between chunks, and (JSON) holding no more structure than ``budget``."""

    max_bytes: int
    read_timeout_s: float
    budget: StructureBudget


class BodyError(Exception):
    """A request body refused by a limit or not decodable; :meth:`response` is its answer."""

    def __init__(self, status: int, detail: str, error_type: str, *, close: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.close = close  # the rest of the body was not read: end the connection after answering

    def response(self) -> JSONResponse:
        return error(
            self.status,
            self.detail,
            error_type=self.error_type,
            headers={"Connection": "close"} if self.close else None,
        )


def is_json_type(content_type: str | None) -> bool:
    """``application/json``, ``application/*+json`` (any parameters), or no type at all."""
    if content_type is None:
        return True
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or (essence.startswith("application/") and essence.endswith("+json"))


async def read_body(
    request: Request, max_bytes: int, read_timeout_s: float, *, flag: str = "--max-body-bytes"
) -> bytes:
    """The whole body, refused (:class:`BodyError`) past ``max_bytes`` or a pause over ``read_timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyError(413, f"the body is {declared} bytes; the limit is {max_bytes} ({flag})", "body_too_large")
    chunks = []
    size = 0
    stream = body_chunks(request, read_timeout_s)
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            ended = await _discard(stream)
            raise BodyError(
                413, f"the body is over the limit of {max_bytes} bytes ({flag})", "body_too_large", close=not ended
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _discard(stream: AsyncIterator[bytes]) -> bool:
    """Read and drop a refused body's rest, at most :data:`DISCARD_BYTES` within :data:`DISCARD_S`,
    so a client still sending reads the refusal instead of a reset (a lingering close, as nginx
    does); True when the body ended within that (the connection may then be kept)."""
    dropped = 0
    try:
        async with asyncio.timeout(DISCARD_S):
            async for chunk in stream:
                dropped += len(chunk)
                if dropped > DISCARD_BYTES:
                    return False
    except (TimeoutError, BodyError):
        return False
    return True


async def body_chunks(request: Request, read_timeout_s: float) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; :class:`BodyError` (408) when one takes over ``read_timeout_s``."""
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(read_timeout_s):
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise BodyError(
                408,
                f"the body paused for more than {read_timeout_s:g} s (--read-timeout-s)",
                "request_timeout",
                close=True,
            ) from None
        if chunk:
            yield chunk


async def read_json(request: Request, limits: BodyLimits, *, flag: str = "--max-body-bytes") -> Any:
    """Read and decode a JSON body with every limit of :class:`BodyLimits`; an empty body is ``{}``.

    Raises :class:`BodyError` naming what is wrong (415, 413, 408, 400).
    """
    return decode_json(await read_json_bytes(request, limits, checked=False, flag=flag), limits.budget)


async def read_json_bytes(
    request: Request, limits: BodyLimits, *, checked: bool = True, flag: str = "--max-body-bytes"
) -> bytes:
    """A JSON body's bytes, read with every limit of :class:`BodyLimits` (the structure budget
    too unless ``checked`` is false), for a consumer that decodes it itself. Raises :class:`BodyError`."""
    content_type = request.headers.get("content-type")
    if not is_json_type(content_type):
        raise BodyError(
            415,
            f"send the body as JSON with Content-Type: application/json (got {content_type!r})",
            "unsupported_media_type",
        )
    raw = await read_body(request, limits.max_bytes, limits.read_timeout_s, flag=flag)
    if checked:
        try:
            check_json(raw, limits.budget)
        except OverBudget as exc:
            raise BodyError(413, f"the body {exc}", "body_too_large") from None
    return raw


def decode_json(raw: bytes, budget: StructureBudget) -> Any:
    """Decode a JSON body within ``budget``; an empty body is an empty input. Raises :class:`BodyError`."""
    if not raw.strip():
        return {}
    try:
        check_json(raw, budget)
    except OverBudget as exc:
        raise BodyError(413, f"the body {exc}", "body_too_large") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BodyError(400, f"body is not valid JSON ({exc})", "invalid_json") from None


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


async def unless_disconnected(request: Request, work: asyncio.Future[Any]) -> Any:
    """``work``'s result, or :class:`ClientGone` (``work`` cancelled) once the client disconnects.

    Call it after the body has been read: the next ASGI message is then the disconnect.
    A request nobody waits for must not keep the engine busy.
    """

    async def until_disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(until_disconnected())
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not work.done() and not watch.done():  # this task itself was cancelled
            work.cancel()
        watch.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise ClientGone()
    return work.result()


def base_url(conn: HTTPConnection) -> str:
    """``scheme://host[:port]`` as the client addressed this server."""
    host = conn.headers.get("host")
    if not host:
        server = conn.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    scheme = conn.url.scheme
    if scheme in ("ws", "wss"):
        scheme = "https" if scheme == "wss" else "http"
    return f"{scheme}://{host}"
