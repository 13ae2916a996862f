"""What every wing's HTTP handlers share: fal's error shapes, JSON bodies, the client's base URL.

Errors (fal protocol §11): every error body is ``{"detail": <string | list>}``; validation errors are 422 with
pydantic's ``[{loc, msg, type}]`` list; an ``error_type`` in the body (and the
``x-fal-error-type`` header) lets fal's Python client tell errors apart.

URLs handed back use the scheme and host the client used (:func:`base_url`), so they work
behind TLS terminators and proxies (uvicorn applies ``X-Forwarded-Proto`` from trusted
proxies to the scheme).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from framewire.engine.api import AppError
from framewire.gateway.realtime import protocol

REQUEST_ID = "x-fal-request-id"
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
    status_code: int, detail: Any, *, error_type: str | None = None, headers: dict[str, str] | None = None, **extra: Any
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


def json_body(raw: bytes) -> Any:
    """Decode a JSON request body; an empty body is an empty input. Raises ValueError."""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON ({exc})") from None


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
