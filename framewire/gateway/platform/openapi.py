"""The OpenAPI 3.1 document of one app, as the server answers on one surface in one auth mode.

A document is generated from the same models and rules the server enforces, so that a
request valid by it is one the server accepts, every status the server can answer is
declared with its body, and every body is what the server sends:

- request bodies: the JSON rules of :mod:`framewire.gateway.requests.validation`; GET
  runs: the fields a query string can carry;
- outputs: what :mod:`framewire.gateway.requests.finaliser` makes of them on each surface
  (files as URLs or data URIs in JSON, inline bytes in msgpack; the engine's timings merged);
- errors: fal's shapes (:mod:`framewire.gateway.http`): ``{"detail": str | [{loc, msg,
  type}], "error_type"?}``, with ``x-fal-error-type``; ``405`` with ``Allow`` wherever a
  path exists but the method does not;
- security: ``Authorization`` (``Key <id>:<secret>`` or ``Bearer <token>``) or the
  ``fal_jwt_token`` query parameter when auth is on, nothing when it is off (then the
  Origin/Host guard's ``403`` is declared instead);
- limits (:class:`Limits`, the server's own settings): ``413`` (body bytes, or items and
  depth of its JSON), ``415`` (not JSON), ``408`` (a stalled body or head), ``414``/``431``
  (the listener's head limit) and ``503`` (every connection busy) where they apply, each
  naming its number, and all of them in ``info.x-framewire-limits``; a realtime frame's
  byte limit is on its WebSocket description.

The run surface and the queue surface take the same paths (``POST /{app}`` runs the input
on one and queues it on the other), so each has its own document: the run surface's has
the sync run, GET runs, the event stream and the realtime WebSocket; the queue surface's
has submit, status, status stream, result and cancel in fal's queue shapes (status enum,
``queue_position``, the three URLs, ``logs`` items of ``timestamp``, ``level``,
``message``), with links from a submit to the request's operations.

The realtime WebSocket is described the way OpenAPI 3.1 can describe one: a GET with the
upgrade's headers, answered ``101``; its frames are named by an ``x-fal-protocol``
extension (fal's own, so tools that read fal's documents find the endpoint) and, in full,
by ``x-framewire-websocket``: the msgpack input and output frames and the JSON text
control messages, each with its schema in ``components``. One document stays the one
thing clients fetch; a separate AsyncAPI file would describe a single channel and be kept
in step by hand.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from framewire.engine.api import (
    MAX_BUFFERING_RANGE,
    SIMILARITY_RANGE,
    TARGET_LATENCY_RANGE_MS,
    App,
    AppRegistry,
    Endpoint,
    SocketEndpoint,
    split_app_id,
)
from framewire.gateway.budget import MAX_DEPTH
from framewire.gateway.realtime.endpoint import websocket_endpoint
from framewire.gateway.requests import finaliser, validation
from framewire.gateway.settings import Settings

VERSION = "0.1.0"
REF = "#/components/schemas/{model}"
MSGPACK = "application/msgpack"


@dataclass(frozen=True)
class Limits:
    """The server's limits a document states, from its settings (:meth:`of`)."""

    max_body_bytes: int
    max_input_items: int
    max_header_bytes: int
    max_frame_bytes: int
    read_timeout_s: float
    max_connections: int
    max_depth: int = MAX_DEPTH

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_input_items=settings.max_input_items,
            max_header_bytes=settings.max_header_bytes,
            max_frame_bytes=settings.max_frame_bytes,
            read_timeout_s=settings.read_timeout_s,
            max_connections=settings.max_connections,
        )


#: The limits of a server started with default settings.
DEFAULT_LIMITS = Limits.of(Settings())


class Surface(enum.StrEnum):
    """Which of the two HTTP surfaces a document describes."""

    RUN = "run"
    QUEUE = "queue"


def join(*parts: str) -> str:
    """``/a/b`` from path pieces, ignoring empty ones and extra slashes."""
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def run_path(app: App, endpoint: Endpoint) -> str:
    return join(app.app_id, endpoint.spec.path)


def start_session_path(app: App, endpoint: Endpoint) -> str:
    """Where a video endpoint's sessions start (``POST``)."""
    return join(app.app_id, endpoint.spec.path, "start-session")


def realtime_path(app: App, endpoint: Endpoint) -> str:
    """The WebSocket path clients open for a realtime endpoint."""
    path = endpoint.spec.path
    if path == "realtime" or path.endswith("/realtime"):
        return join(app.app_id, path)
    return join(app.app_id, path, "realtime")


def operation_id(endpoint: Endpoint, suffix: str = "") -> str:
    return (endpoint.key + suffix).replace("/", "_").replace("-", "_")


# -- schema generators: one per rule -----------------------------------------------------------


class _OutputSchema(GenerateJsonSchema):
    """Outputs as sent: every field is there (``model_dump`` writes defaults too)."""

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        return True if self.mode == "serialization" else super().field_is_required(field, total)


class _MsgpackInputSchema(GenerateJsonSchema):
    """Inputs as msgpack frames carry them: the Python side of a type (raw bytes allowed)."""

    def json_or_python_schema(self, schema: core_schema.JsonOrPythonSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["python_schema"])


def _view(
    models: Sequence[type[BaseModel]], mode: JsonSchemaMode, generator: type[GenerateJsonSchema]
) -> tuple[dict[type[BaseModel], dict[str, Any]], dict[str, Any]]:
    """(a ``$ref`` per model, the definitions) of ``models`` in one schema view."""
    unique = list(dict.fromkeys(models))
    refs, top = models_json_schema([(m, mode) for m in unique], ref_template=REF, schema_generator=generator)
    return {model: refs[(model, mode)] for model in unique}, top.get("$defs", {})


class _Components:
    """``components.schemas``, filled view by view; a name taken by a different schema gets a suffix."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def add(
        self, refs: dict[type[BaseModel], dict[str, Any]], defs: dict[str, Any], suffix: str
    ) -> dict[type[BaseModel], dict[str, Any]]:
        renames: dict[str, str] = {}
        changed = True
        while changed:  # a definition referring to a renamed one differs too
            changed = False
            for name, schema in defs.items():
                if name not in renames and name in self.schemas and self.schemas[name] != _renamed(schema, renames):
                    renames[name] = name + suffix
                    changed = True
        for name, schema in defs.items():
            self.schemas[renames.get(name, name)] = _renamed(schema, renames)
        return {model: _renamed(ref, renames) for model, ref in refs.items()}

    def put(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        self.schemas[name] = schema
        return {"$ref": REF.format(model=name)}


def _renamed(node: Any, renames: dict[str, str]) -> Any:
    if not renames:
        return node
    if isinstance(node, dict):
        out = {k: _renamed(v, renames) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[-1]
            out["$ref"] = REF.format(model=renames.get(name, name))
        return out
    if isinstance(node, list):
        return [_renamed(v, renames) for v in node]
    return node


# -- fixed components: fal's error, queue and realtime shapes ------------------------------------

_STRING = {"type": "string"}
_LOG_LEVELS = ["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]

ERROR_ITEM = {
    "type": "object",
    "description": "One failing field: where (`loc`, starting with `body` or `query`), why (`msg`), and a code.",
    "properties": {
        "loc": {"type": "array", "items": {"anyOf": [_STRING, {"type": "integer"}]}},
        "msg": _STRING,
        "type": _STRING,
    },
    "required": ["loc", "msg", "type"],
}
ERROR = {
    "type": "object",
    "description": "fal's error shape: `detail` is a message or a list of failing fields; "
    "`error_type` (also in the `x-fal-error-type` header) names the kind of error.",
    "properties": {
        "detail": {"anyOf": [_STRING, {"type": "array", "items": {"$ref": REF.format(model="ErrorItem")}}]},
        "error_type": _STRING,
    },
    "required": ["detail"],
}
_URLS = {"response_url": _STRING, "status_url": _STRING, "cancel_url": _STRING}
QUEUE_LOG = {
    "type": "object",
    "properties": {
        "message": _STRING,
        "level": {"enum": _LOG_LEVELS},
        "source": {"const": "USER"},
        "timestamp": {"type": "string", "format": "date-time"},
    },
    "required": ["message", "level", "source", "timestamp"],
}
_LOGS = {
    "anyOf": [{"type": "array", "items": {"$ref": REF.format(model="QueueLog")}}, {"type": "null"}],
    "description": "The request's log lines with `?logs=1`, else null.",
}
QUEUE_SUBMITTED = {
    "type": "object",
    "description": "A queued request: poll `status_url`, read `response_url`, cancel with `cancel_url`.",
    "properties": {
        "status": {"const": "IN_QUEUE"},
        "request_id": {"type": "string", "format": "uuid"},
        "gateway_request_id": {"type": "string", "format": "uuid"},
        **_URLS,
        "queue_position": {"type": "integer", "minimum": 0},
    },
    "required": ["status", "request_id", "gateway_request_id", *_URLS, "queue_position"],
}
_STATUS_COMMON = {"request_id": {"type": "string", "format": "uuid"}, **_URLS, "logs": _LOGS}
QUEUE_IN_QUEUE = {
    "type": "object",
    "properties": {
        "status": {"const": "IN_QUEUE"},
        **_STATUS_COMMON,
        "queue_position": {"type": "integer", "minimum": 0, "description": "Requests ahead of this one (0: next)."},
    },
    "required": ["status", "request_id", *_URLS, "queue_position", "logs"],
}
QUEUE_IN_PROGRESS = {
    "type": "object",
    "properties": {"status": {"const": "IN_PROGRESS"}, **_STATUS_COMMON},
    "required": ["status", "request_id", *_URLS, "logs"],
}
QUEUE_COMPLETED = {
    "type": "object",
    "description": "Finished: `error` and `error_type` say why when it failed (the result replays the error).",
    "properties": {
        "status": {"const": "COMPLETED"},
        **_STATUS_COMMON,
        "metrics": {
            "type": "object",
            "properties": {"inference_time": {"type": "number"}, "queue_time": {"type": "number"}},
        },
        "error": _STRING,
        "error_type": _STRING,
    },
    "required": ["status", "request_id", *_URLS, "logs", "metrics"],
}
CANCEL_STATUS = {
    "type": "object",
    "properties": {"status": {"enum": ["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]}},
    "required": ["status"],
}
REALTIME_ERROR = {
    "type": "object",
    "description": "A JSON text frame: an error about one frame (the session goes on) or about the session "
    "(a close follows, its code mirroring the HTTP status: 4400, 4401, 4403, 4404, 4429; 1013 to retry later; "
    "`TIMEOUT` then 1000 after `session_timeout`).",
    "properties": {
        "type": {"const": "x-fal-error"},
        "error": _STRING,
        "reason": _STRING,
        "request_id": {"anyOf": [_STRING, {"type": "integer"}]},
        "retry_after_ms": {"type": "integer"},
    },
    "required": ["type", "error", "reason"],
}
REALTIME_MESSAGE = {
    "type": "object",
    "description": "A JSON text control frame.",
    "properties": {"type": {"const": "x-fal-message"}, "action": _STRING},
    "required": ["type", "action"],
}
_REQUEST_ID = {"anyOf": [{"type": "string", "maxLength": 128}, {"type": "integer"}]}


# -- responses ---------------------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


_HEADER_REQUEST_ID = {"description": "This request's id (a queued request's id on the queue).", "schema": _STRING}
_HEADER_ERROR_TYPE = {"description": "The kind of error, as `error_type` in the body.", "schema": _STRING}
_HEADER_RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": _STRING}


def _headers(**extra: dict[str, Any]) -> dict[str, Any]:
    return {"x-fal-request-id": {**_HEADER_REQUEST_ID, "required": True}, **extra}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _body(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON response that is not an error."""
    return {"description": description, "headers": _headers(), "content": _json(schema)}


def error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A response with fal's error body."""
    return {
        "description": description,
        "headers": _headers(**{"x-fal-error-type": _HEADER_ERROR_TYPE}, **headers),
        "content": _json(_ref("Error")),
    }


def listener_error(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    """A refusal written by the listener before the request reaches the app (no request id)."""
    return {"description": description, "headers": headers, "content": _json(_ref("Error"))}


def not_allowed() -> dict[str, Any]:
    allow = {"description": "The methods this path takes.", "schema": _STRING, "required": True}
    return error("The path exists, the method does not", Allow=allow)


class _Responses:
    """The error responses the server's shared refusals answer with, per auth mode and limits."""

    def __init__(self, auth: bool, limits: Limits) -> None:
        self.auth = auth
        self.limits = limits

    def common(self) -> dict[str, Any]:
        """What any operation on an app path can answer besides its own outcomes."""
        limits = self.limits
        head = f"{limits.max_header_bytes} bytes (--max-header-bytes); the connection is closed"
        out = {
            "405": not_allowed(),
            "408": listener_error(
                f"Part of the request's head came, the rest not within {limits.read_timeout_s:g} s "
                "(--read-timeout-s), or its body paused that long; the connection is closed"
            ),
            "414": listener_error(f"The request line (method, path and query string) is over {head}"),
            "431": listener_error(f"The request's head (request line and headers) is over {head}"),
            "500": error("An unexpected error (the server log has it)"),
            "503": listener_error(
                f"Every one of the server's {limits.max_connections} connections is busy (--max-connections); retry",
                **{"Retry-After": _HEADER_RETRY_AFTER},
            ),
        }
        if self.auth:
            out["401"] = error("Missing, invalid or expired credentials")
            out["403"] = error("The credentials may not use this app")
        else:
            out["403"] = error(
                "Auth is off, so browsers are held to the server's own pages: a browser request naming this "
                "server by a host name not allowed (--allowed-host), or one that acts from another site's page "
                "(--allowed-origin), is refused (`error_type`: `forbidden_origin`). Clients that are not "
                "browsers are never refused this way."
            )
        return out

    def starts_work(self, *, queue: bool, body: bool = True) -> dict[str, Any]:
        """Refusals before work starts: bad input (with ``body``, the body's limits), the rate, readiness."""
        limits = self.limits
        out = {
            "400": error("A malformed request: a body that is not a JSON object, or a bad platform header"),
            "422": error(
                "The input is invalid (`detail` names each field), a URL in it could not be fetched, or "
                "the app refused it (an app may also bound what fields ask for together, such as the compute "
                "of image size x steps x images: `error_type` `over_budget`, naming the limit)",
                **{"x-fal-billable-units": {"description": "0: nothing was charged.", "schema": _STRING}},
            ),
            "503": error(
                "The server is starting, draining or restarting its engine, or every one of its "
                f"{limits.max_connections} connections is busy (--max-connections); retry",
                **{"Retry-After": _HEADER_RETRY_AFTER},
            ),
        }
        if body:
            out["413"] = error(
                f"The body is over {limits.max_body_bytes} bytes (--max-body-bytes), or its JSON holds more "
                f"than {limits.max_input_items} items (--max-input-items) or nests deeper than "
                f"{limits.max_depth} levels; `error_type`: `body_too_large`"
            )
            out["415"] = error(
                "The body is not sent as JSON: `Content-Type` must be `application/json` (or "
                "`application/*+json`), or left out"
            )
        if self.auth or queue:
            what = ["the key is over its requests/s limit" if self.auth else "", "the queue is full" if queue else ""]
            out["429"] = error(
                "Refused for now: " + " or ".join(w for w in what if w), **{"Retry-After": _HEADER_RETRY_AFTER}
            )
        return out


def app_outcomes(output: dict[str, Any] | None = None, msgpack_output: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's answers once it ran: the output, or the app's or engine's error (also replayed by a result)."""
    out: dict[str, Any] = {}
    if output is not None:
        content = _json(output)
        if msgpack_output is not None:
            content[MSGPACK] = {"schema": msgpack_output}
        out["200"] = {"description": "The output", "headers": _headers(), "content": content}
    timeout_type = {"description": "`user`: the request's own start timeout passed.", "schema": _STRING}
    out.update(
        {
            "4XX": error("The app refused this input with its own status"),
            "5XX": error("The app or the engine failed on this input"),
            "504": error(
                "The request did not start within its `x-fal-request-timeout`",
                **{"x-fal-request-timeout-type": timeout_type},
            ),
        }
    )
    return out


# -- the document --------------------------------------------------------------------------------


class _Builder:
    """Builds one document; see :func:`openapi_document`."""

    def __init__(self, app: App, registry: AppRegistry, surface: Surface, auth: bool, limits: Limits) -> None:
        self.app = app
        self.registry = registry
        self.surface = surface
        self.auth = auth
        self.endpoints = list(registry.request_endpoints(app).values())
        self.videos = list(registry.video_endpoints(app).values())
        self.limits = limits
        self.responses = _Responses(auth, limits)
        self.components = _Components()
        for name, schema in (
            ("Error", ERROR),
            ("ErrorItem", ERROR_ITEM),
        ):
            self.components.put(name, copy.deepcopy(schema))
        inputs = [ep.input_model for ep in [*self.endpoints, *self.videos]]
        outputs = [ep.output_model for ep in self.endpoints]
        self.inputs = self.components.add(*_view(inputs, "validation", validation.JsonInputSchema), "Input")
        refs, defs = _view(outputs, "serialization", _OutputSchema)
        self.outputs = self.components.add(refs, finaliser.json_output_schemas(defs, _names(refs)), "Output")
        self.msgpack_outputs = self.components.add(
            refs, finaliser.msgpack_output_schemas(defs, _names(refs)), "Msgpack"
        )
        self.paths: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []

    def build(self) -> dict[str, Any]:
        if self.surface == Surface.RUN:
            self._run_surface()
        else:
            self._queue_surface()
        app = self.app
        aliases = [n for n in self.registry.names_of(app) if n != app.app_id]
        other = Surface.QUEUE if self.surface == Surface.RUN else Surface.RUN
        description = (
            (f"{app.description}\n\n" if app.description else "")
            + f"This document describes the {self.surface} surface. "
            + _SURFACE_NOTE[other]
        )
        document: dict[str, Any] = {
            "openapi": "3.1.0",
            "info": {
                "title": app.title or app.app_id,
                "description": description,
                "version": VERSION,
                "x-fal-metadata": {"endpointId": app.app_id, "aliases": aliases},
                "x-framewire-limits": asdict(self.limits),
            },
            "paths": self.paths,
            "x-fal-order-paths": self.order,
            "components": {"schemas": self.components.schemas},
        }
        if self.auth:
            document["components"]["securitySchemes"] = {
                "falKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Key <id>:<secret>`, or `Bearer <token>` with a token from `POST /tokens/`.",
                },
                "falToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "fal_jwt_token",
                    "description": "A token from `POST /tokens/` (browsers, which cannot set headers on a WebSocket).",
                },
            }
            document["security"] = [{"falKey": []}, {"falToken": []}]
        else:
            document["security"] = []  # auth is off: the server reads no credentials
        return document

    # -- run surface ---------------------------------------------------------------------------

    def _run_surface(self) -> None:
        for ep in self.endpoints:
            path = run_path(self.app, ep)
            item = self.paths.setdefault(path, {})
            item["post"] = self._run_operation(ep, streaming=False)
            self.order.append(path)
            stream = join(path, "stream")
            self.paths.setdefault(stream, {})["post"] = self._run_operation(ep, streaming=True)
        for ep in self.endpoints:  # every endpoint takes sessions; fal's marker goes on the realtime ones
            path = realtime_path(self.app, ep)
            target = websocket_endpoint(self.registry, path)
            if target is not None and "get" not in self.paths.get(path, {}):
                self.paths.setdefault(path, {})["get"] = self._realtime_operation(target)
                if target.spec.realtime and path not in self.order:
                    self.order.append(path)
        for ep in self.endpoints:
            path = run_path(self.app, ep)
            fields = validation.query_fields(ep.input_model)
            if fields is not None and "get" not in self.paths[path]:
                self.paths[path]["get"] = self._get_run_operation(ep, fields)
        for ep in self.videos:
            path = start_session_path(self.app, ep)
            self.paths[path] = {"post": self._start_session_operation(ep)}
            self.order.append(path)
        for sub_path, sock in self.registry.sockets_of(self.app).items():
            path = join(self.app.app_id, sub_path)
            if "get" not in self.paths.setdefault(path, {}):
                self.paths[path]["get"] = self._socket_operation(sock)
                self.order.append(path)

    def _start_session_operation(self, ep: Endpoint) -> dict[str, Any]:
        """``POST …/start-session`` of a video endpoint (fal's WMA signalling)."""
        params = {
            "type": "object",
            "description": f"Fields of the input but `{ep.frame_input}` (the camera frame)",
            "allOf": [self.inputs[ep.input_model]],
        }
        offer = {"type": "object", "properties": {"sdp": _STRING, "type": {"const": "offer"}}}
        body = {
            "type": "object",
            "properties": {
                "sdp": _STRING,
                "type": {"const": "offer"},
                "session_id": _STRING,
                "offer": offer,
                "session_params": params,
            },
            "anyOf": [{"required": ["sdp"]}, {"required": ["offer"]}],
        }
        responses = {**self.responses.common(), **self.responses.starts_work(queue=False)}
        responses.update(
            {
                "200": {
                    "description": "The SDP answer event, keep-alives, then an end event",
                    "content": {"text/event-stream": {"schema": _STRING}},
                },
                "400": error("An offer that cannot start a session (`error_type`: `invalid_offer`)"),
                "422": error("Session parameters that do not fit the input"),
            }
        )
        return {
            "operationId": operation_id(ep, "_start_session"),
            "summary": f"Start a live video session on {ep.key} (WebRTC)",
            "description": (
                "Send the client's complete SDP offer (a sendrecv video track, optionally a data channel). The "
                "answer is the first event of a text/event-stream held open for the session's life; closing it "
                "ends the session. Parameters change over the data channel."
            ),
            "tags": ["video"],
            "requestBody": {"required": True, "content": _json(body)},
            "responses": _sorted(responses),
        }

    def _socket_operation(self, sock: SocketEndpoint) -> dict[str, Any]:
        """A raw WebSocket endpoint: the app's own messages (fal's ``is_websocket=True``)."""
        op_id = sock.key.replace("/", "_").replace("-", "_") + "_websocket"
        listener = {code: self.responses.common()[code] for code in ("408", "414", "431", "503")}
        responses = {
            **listener,
            "101": {"description": "Switched to the WebSocket protocol: the app's own messages follow."},
            "405": not_allowed(),
        }
        return {
            "operationId": op_id,
            "summary": f"Raw WebSocket {sock.key} (the app's own messages)",
            "description": "Open a WebSocket here (query `fal_jwt_token`, or an Authorization header).",
            "tags": ["websocket"],
            "responses": _sorted(responses),
            "x-fal-protocol": {"type": "websocket", "operationId": op_id},
        }

    def _run_operation(self, ep: Endpoint, *, streaming: bool) -> dict[str, Any]:
        responses = {**self.responses.common(), **self.responses.starts_work(queue=False)}
        if streaming:
            event = _sse_events(self.outputs[ep.output_model])
            responses["200"] = {
                "description": "Server-sent events: partial outputs as the app makes them, then the output; "
                "an error after the stream started is an `error` event with fal's error body.",
                "headers": _headers(),
                "content": {"text/event-stream": {"schema": event}},
            }
            responses.update({k: v for k, v in app_outcomes().items() if k != "504"})
            summary = f"Stream {ep.key} as server-sent events"
        else:
            responses.update(app_outcomes(self.outputs[ep.output_model], self.msgpack_outputs[ep.output_model]))
            summary = f"Run {ep.key}"
        return {
            "operationId": operation_id(ep, "_stream" if streaming else ""),
            "summary": summary,
            "description": _RUN_NOTE,
            "requestBody": self._request_body(ep),
            "responses": _sorted(responses),
        }

    def _request_body(self, ep: Endpoint) -> dict[str, Any]:
        """The input as a JSON body; one may be left out when every field has a default."""
        ref = self.inputs[ep.input_model]
        required = bool(self.components.schemas[_name(ref)].get("required"))
        return {
            "required": required,
            "description": "The input. An empty body is the empty input (every field at its default).",
            "content": _json(ref),
        }

    def _get_run_operation(self, ep: Endpoint, fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
        required = set(ep.input_model.model_json_schema().get("required", ()))
        parameters = [
            {"name": name, "in": "query", "required": name in required, "schema": copy.deepcopy(schema)}
            for name, schema in fields.items()
        ]
        responses = {**self.responses.common(), **self.responses.starts_work(queue=False, body=False)}
        responses.update(app_outcomes(self.outputs[ep.output_model], self.msgpack_outputs[ep.output_model]))
        return {
            "operationId": operation_id(ep, "_get"),
            "summary": f"Run {ep.key} with the input in the query string",
            "description": "As the POST, for the fields a query string can carry (fal's JS client sends "
            "`method: 'get'` runs this way). " + _RUN_NOTE,
            "parameters": parameters,
            "responses": _sorted(responses),
        }

    def _realtime_operation(self, ep: Endpoint) -> dict[str, Any]:
        in_refs, in_defs = _view([ep.input_model], "validation", _MsgpackInputSchema)
        frame_in = self.components.add(in_refs, in_defs, "Msgpack")[ep.input_model]
        input_frame = self.components.put(
            f"{ep.input_model.__name__}Frame",
            {"allOf": [frame_in, {"type": "object", "properties": {"request_id": _REQUEST_ID}}]},
        )
        output_frame = self.components.put(
            f"{ep.output_model.__name__}Frame",
            {
                "allOf": [
                    self.msgpack_outputs[ep.output_model],
                    {"type": "object", "properties": {"request_id": _REQUEST_ID}},
                ]
            },
        )
        error_ref = self.components.put("RealtimeError", copy.deepcopy(REALTIME_ERROR))
        message_ref = self.components.put("RealtimeMessage", copy.deepcopy(REALTIME_MESSAGE))
        low, high = MAX_BUFFERING_RANGE
        low_ms, high_ms = TARGET_LATENCY_RANGE_MS
        low_sim, high_sim = SIMILARITY_RANGE
        parameters = [
            _header("Upgrade", {"type": "string", "const": "websocket"}),
            _header("Connection", {"type": "string", "pattern": "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"}),
            _header("Sec-WebSocket-Version", {"type": "string", "const": "13"}),
            _header(
                "Sec-WebSocket-Key",
                {"type": "string", "pattern": "^[A-Za-z0-9+/]{22}==$", "description": "16 random bytes, base64."},
            ),
            {
                "name": "max_buffering",
                "in": "query",
                "description": "Frames kept pending for this session; the oldest is dropped first.",
                "schema": {"type": "integer", "minimum": low, "maximum": high},
            },
            {
                "name": "target_latency_ms",
                "in": "query",
                "description": "This session's latency target (engine time per frame).",
                "schema": {"type": "number", "minimum": low_ms, "maximum": high_ms},
            },
            {
                "name": "similarity_threshold",
                "in": "query",
                "description": "Skip a frame whose image barely changed (0: exact repeats only).",
                "schema": {"type": "number", "minimum": low_sim, "maximum": high_sim},
            },
        ]
        socket = {
            "description": "Switched to the WebSocket protocol: the frames below follow.",
            "headers": {
                "Upgrade": {"schema": {"const": "websocket"}, "required": True},
                "Sec-WebSocket-Accept": {"schema": _STRING, "required": True},
            },
        }
        listener = {code: self.responses.common()[code] for code in ("408", "414", "431", "503")}
        responses = {
            **listener,
            "101": socket,
            "403": {
                "description": "A browser page whose Origin may not open sessions (refused at the handshake)",
                "content": _json(_ref("Error")),
            },
            "405": not_allowed(),
            "426": error(
                "A plain HTTP request: this path takes only WebSocket upgrades",
                Upgrade={"schema": {"const": "websocket"}, "required": True},
            ),
        }
        op_id = operation_id(ep, "_realtime")
        operation = {
            "operationId": op_id,
            "summary": f"Realtime {ep.key} (WebSocket)",
            "description": _REALTIME_NOTE,
            "tags": ["realtime"],
            "parameters": parameters,
            "responses": _sorted(responses),
            "x-framewire-websocket": {
                "client": {
                    "binary": {
                        "contentType": MSGPACK,
                        "schema": input_frame,
                        "maxBytes": self.limits.max_frame_bytes,
                        "maxItems": self.limits.max_input_items,
                        "maxDepth": self.limits.max_depth,
                    }
                },
                "server": {
                    "binary": {"contentType": MSGPACK, "schema": output_frame},
                    "text": {"contentType": "application/json", "schema": {"oneOf": [error_ref, message_ref]}},
                },
            },
        }
        if ep.spec.realtime:  # as fal's SDK marks a realtime route, so tools that read fal's documents find it
            operation["x-fal-protocol"] = {
                "type": "realtime",
                "operationId": op_id,
                "config": {
                    "buffering": ep.spec.buffering,
                    "sessionTimeout": ep.spec.session_timeout_s,
                    "maxBatchSize": ep.spec.max_batch_size,
                },
                "contentType": MSGPACK,
                "realtimeMode": "unary",
            }
        return operation

    # -- queue surface ---------------------------------------------------------------------------

    def _queue_surface(self) -> None:
        for name, schema in (
            ("QueueLog", QUEUE_LOG),
            ("QueueSubmitted", QUEUE_SUBMITTED),
            ("QueueInQueue", QUEUE_IN_QUEUE),
            ("QueueInProgress", QUEUE_IN_PROGRESS),
            ("QueueCompleted", QUEUE_COMPLETED),
            ("CancelStatus", CANCEL_STATUS),
        ):
            self.components.put(name, copy.deepcopy(schema))
        root = join(split_app_id(self.app.app_id)[0])
        requests = f"{root}/requests/{{request_id}}"
        links = {
            "status": {"operationId": "queue_status", "parameters": {"request_id": "$response.body#/request_id"}},
            "result": {"operationId": "queue_result", "parameters": {"request_id": "$response.body#/request_id"}},
            "cancel": {"operationId": "queue_cancel", "parameters": {"request_id": "$response.body#/request_id"}},
        }
        for ep in self.endpoints:
            path = run_path(self.app, ep)
            responses = {**self.responses.common(), **self.responses.starts_work(queue=True)}
            responses["200"] = {
                "description": "Queued",
                "headers": _headers(),
                "content": _json(_ref("QueueSubmitted")),
                "links": links,
            }
            self.paths.setdefault(path, {})["post"] = {
                "operationId": operation_id(ep, "_submit"),
                "summary": f"Queue {ep.key}",
                "description": _SUBMIT_NOTE,
                "parameters": _SUBMIT_PARAMETERS,
                "requestBody": self._request_body(ep),
                "responses": _sorted(responses),
            }
            self.order.append(path)
        request_id = {
            "name": "request_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
        logs = {
            "name": "logs",
            "in": "query",
            "description": "`1` or `true` (any case; also `yes`, `on`) includes the request's log lines.",
            "schema": _STRING,
        }
        unknown = error("No such request (or not one these credentials may see)")
        status_codes = {**self.responses.common(), "404": unknown}
        in_progress = {"oneOf": [_ref("QueueInQueue"), _ref("QueueInProgress")]}
        self.paths[f"{requests}/status"] = {
            "get": {
                "operationId": "queue_status",
                "summary": "A queued request's status",
                "parameters": [request_id, logs],
                "responses": _sorted(
                    {
                        **status_codes,
                        "200": _body("Finished", _ref("QueueCompleted")),
                        "202": _body("Queued or running", in_progress),
                    }
                ),
            }
        }
        any_status = {"oneOf": [_ref("QueueInQueue"), _ref("QueueInProgress"), _ref("QueueCompleted")]}
        self.paths[f"{requests}/status/stream"] = {
            "get": {
                "operationId": "queue_status_stream",
                "summary": "A queued request's status as server-sent events, until it finishes",
                "parameters": [request_id, logs],
                "responses": _sorted(
                    {
                        **status_codes,
                        "200": {
                            "description": "One event per change of status; the last one is COMPLETED",
                            "headers": _headers(),
                            "content": {"text/event-stream": {"schema": _sse_event("message", any_status)}},
                        },
                    }
                ),
            }
        }
        outputs = list(dict.fromkeys(_key(self.outputs[ep.output_model]) for ep in self.endpoints))
        output = {"$ref": outputs[0]} if len(outputs) == 1 else {"anyOf": [{"$ref": ref} for ref in outputs]}
        result = {**status_codes, **app_outcomes(output)}
        result["400"] = error("The request has not finished (`status` says where it is), or the app refused it")
        result["499"] = error("The request was cancelled")
        self.paths[requests] = {
            "get": {
                "operationId": "queue_result",
                "summary": "A finished request's output, or its error replayed",
                "parameters": [request_id],
                "responses": _sorted(result),
            }
        }
        cancel = {
            **status_codes,
            "202": _body("Cancelled if still queued; a running request is told to stop", _ref("CancelStatus")),
            "400": _body("Already finished", _ref("CancelStatus")),
        }
        operation = {"summary": "Cancel a queued request", "parameters": [request_id], "responses": _sorted(cancel)}
        self.paths[f"{requests}/cancel"] = {
            "put": {"operationId": "queue_cancel", **operation},
            "post": {"operationId": "queue_cancel_post", **operation, "summary": "Cancel a queued request (as PUT)"},
        }


def _header(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "schema": schema}


def _names(refs: dict[type[BaseModel], dict[str, Any]]) -> set[str]:
    return {_name(ref) for ref in refs.values()}


def _name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _key(ref: dict[str, Any]) -> str:
    return str(ref["$ref"])


def _sse_event(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """One server-sent event whose ``data`` is a JSON document (as OpenAPI 3.2 writes events)."""
    return {
        "type": "object",
        "properties": {
            "event": {"const": event},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": data},
        },
        "required": ["data"],
    }


def _sse_events(output: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [_sse_event("message", output), _sse_event("error", _ref("Error"))]}


def _sorted(responses: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(responses.items()))


_SURFACE_NOTE = {
    Surface.QUEUE: "The queue surface (a host starting with `queue.`, or the `--queue-port` listener) takes the "
    "same paths to queue requests: its document is this path on that surface.",
    Surface.RUN: "The run surface (any other host) takes the same paths to run requests and wait for the output, "
    "and serves the realtime WebSocket: its document is this path on that surface.",
}
_RUN_NOTE = (
    "Runs ahead of queued requests. Header `x-fal-request-timeout: <seconds>` bounds the wait before the run "
    "starts (then 504). `Accept: application/msgpack` answers in msgpack, with files as inline bytes where JSON "
    "has data URIs. Fields ending in `_url` that hold an http(s) URL are fetched first (public addresses only)."
)
_SUBMIT_NOTE = (
    "Queues the input; the answer names the URLs to poll, read and cancel it. "
    "Header `x-fal-request-timeout: <seconds>` drops the request if it has not started by then."
)
_SUBMIT_PARAMETERS = [
    {
        "name": "fal_webhook",
        "in": "query",
        "description": "An http(s) URL the result is posted to, signed with Ed25519 (fal's scheme); "
        "public addresses only unless the server allows private networks.",
        "schema": {"type": "string", "pattern": "^https?://[!-~]+$"},
    },
    {
        "name": "fal_max_queue_length",
        "in": "query",
        "description": "Refuse (429) if more requests than this are queued for the app.",
        "schema": {"type": "integer", "minimum": 0},
    },
    {
        "name": "x-fal-queue-priority",
        "in": "header",
        "description": "`low` runs after every `normal` request.",
        "schema": {"enum": ["normal", "low"]},
    },
]
_REALTIME_NOTE = (
    "A WebSocket session (RFC 6455). Send one binary msgpack map per frame: the input, and optionally a "
    "`request_id` echoed in its output. Each output comes back as a binary msgpack map; errors and control "
    "messages are JSON text frames (`x-fal-error`, `x-fal-message`). Credentials: the `Authorization` header or "
    "`fal_jwt_token` (browsers). The same session opens at `/ws` in place of `/realtime` (older clients). A "
    "frame over the limits in `x-framewire-websocket` (`maxBytes`; `maxItems` values, `maxDepth` levels) is "
    "refused with an `x-fal-error` text frame."
)


def openapi_document(
    app: App,
    registry: AppRegistry,
    surface: Surface = Surface.RUN,
    auth: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """OpenAPI 3.1 for one app on ``surface`` with auth ``auth`` and the server's ``limits``
    (without ``servers``, which depend on the caller)."""
    return _Builder(app, registry, surface, auth, limits).build()


def schema_refs(document: dict[str, Any]) -> Iterator[str]:
    """Every ``$ref`` in ``document`` (for checks that none dangles)."""
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
