"""Logs: one JSON object per line, with request and session ids; secrets never written.

- ``request_id`` / ``session_id`` are context variables: set once per HTTP request (by
  :class:`AccessLog`) or realtime session, they appear on every line logged while
  handling it, in any module.
- :func:`redact` runs on every formatted line (message and traceback): API key secrets
  (``Key id:secret`` keeps the id; stored keys are also found without the ``Key``
  prefix; a ``--api-key`` secret is only recognised after ``Key``), bearer tokens, anything shaped like a JWT, and the
  values of query parameters that are credentials (``fal_jwt_token``, upload URL
  ``signature``, ...) become ``[redacted]``. uvicorn's own access log prints raw query
  strings, so it is switched off and :class:`AccessLog` writes one line per HTTP request
  instead, with the query redacted; uvicorn's WebSocket handshake lines go through the
  same formatter.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import random
import re
import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("framewire_request_id", default=None)
session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("framewire_session_id", default=None)

REQUEST_ID_HEADER = b"x-fal-request-id"
#: Query parameters whose values are credentials.
SECRET_PARAMS = frozenset({"fal_jwt_token", "signature", "token", "secret", "key", "api_key", "password"})

_REDACTIONS = (
    (re.compile(r"(?i)\b(key\s+)([A-Za-z0-9_.\-]+):[^\s\"',;&]+"), r"\1\2:[redacted]"),
    # A stored key written out bare (``<uuid>:<secret>``, as ``framewire keys create`` prints it).
    (
        re.compile(r"\b([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):[A-Za-z0-9_-]{16,}"),
        r"\1:[redacted]",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9_.\-+/=]+"), r"\1[redacted]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)\b(fal_jwt_token|signature|token|secret|api_key|password)=[^&\s\"']+"), r"\1=[redacted]"),
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]+"), "whsec_[redacted]"),
)

# Attributes every LogRecord has; anything else on a record is an ``extra`` field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """``text`` with credentials replaced (see the module docstring)."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


def redact_query(query: str) -> str:
    """A query string with the values of credential parameters replaced."""
    if not query:
        return ""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "[redacted]" if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="[]/:,")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, "session_id"?, <extra fields>, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        rid, sid = request_id.get(), session_id.get()
        if rid is not None:
            entry["request_id"] = rid
        if sid is not None:
            entry["session_id"] = sid
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = value if isinstance(value, int | float | bool | type(None)) else redact(str(value))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Plain lines for a terminal, redacted the same way."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = [
            f"{name}={value}" for name, value in (("request", request_id.get()), ("session", session_id.get())) if value
        ]
        return redact(line + (f" [{' '.join(ids)}]" if ids else ""))


def resolve_format(fmt: str, stream: Any = None) -> str:
    """``text`` or ``json``: ``auto`` is text when ``stream`` (stderr) is a terminal, where a
    person reads it, and JSON otherwise, where a log collector does."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def configure(level: str = "info", fmt: str = "auto") -> None:
    """Send every logger (uvicorn's too) to stderr through one redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


access_log = logging.getLogger("framewire.access")


def new_request_id() -> str:
    """A UUID4-shaped id, like fal's. Not ``uuid.uuid4()``: its ``os.urandom`` call releases
    the GIL, and on a busy server each request then waits for a thread switch (~25 us
    measured); a correlation id needs to be unique, not unpredictable."""
    return str(uuid.UUID(int=random.getrandbits(128), version=4))


class AccessLog:
    """One log line per HTTP request; sets the request id and counts responses by status.

    The id is ``x-fal-request-id``: the handler's own when it sets one (a queue job's id),
    else a fresh one, which this middleware also puts on the response. Paths are logged
    as received; query strings with credentials redacted. Never logs headers or bodies.
    """

    def __init__(self, app: ASGIApp, on_status: Any = None) -> None:
        self.app = app
        self.on_status = on_status  # callable(status: int), e.g. a metrics counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        sent_id = rid

        async def send_logged(message: Message) -> None:
            nonlocal status, sent_id
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                own = next((v for k, v in headers if k.lower() == REQUEST_ID_HEADER), None)
                if own is None:
                    headers.append((REQUEST_ID_HEADER, rid.encode()))
                    message = {**message, "headers": headers}
                else:
                    sent_id = own.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            duration_ms = (time.perf_counter() - started) * 1000.0
            if self.on_status is not None:
                self.on_status(status)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                query = scope.get("query_string", b"").decode("latin-1")
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "query": redact_query(query),
                        "status": status,
                        "duration_ms": round(duration_ms, 3),
                        "client": f"{client[0]}:{client[1]}" if client else None,
                        "key_id": _key_id(scope),
                        "request_id": sent_id,  # a queue job's own id when the handler set one
                    },
                )
            request_id.reset(token)


def _key_id(scope: Scope) -> str | None:
    """The id half of an ``Authorization: Key id:secret`` header (ids are not secret)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, rest = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "key":
                return rest.strip().partition(":")[0] or None
            return None
    return None
