"""The model catalog: ``GET /models``, ``GET /models/{id}`` and ``GET /models/{id}/openapi.json``.

Each app is described from what it declares (``framewire.engine.api``): id, title, description,
tags, aliases, and per endpoint its batching and realtime settings and the URLs of each
surface. The OpenAPI 3.1 document is generated from the endpoints' pydantic input and
output models. A realtime endpoint's path item carries fal's ``x-fal-protocol`` object
(``type: realtime``, ``config: {buffering, sessionTimeout, maxBatchSize}``,
``contentType: application/msgpack``, ``realtimeMode: unary``) next to a
documentation-only ``post`` with the same schemas, as fal's SDK describes realtime
routes, and every path is listed in ``x-fal-order-paths``.

With auth on, the catalog needs a key or token and shows only the apps it may use.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from pydantic import BaseModel, PydanticUserError
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framewire.engine.api import App, AppRegistry, Endpoint, EngineClient, split_app_id
from framewire.gateway import http
from framewire.gateway.http import base_url
from framewire.gateway.platform import workers
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal

log = logging.getLogger("framewire.catalog")

VERSION = "0.1.0"
_REF = "#/components/schemas/{model}"
# Documents depend only on the app's declarations: built once per app instance.
_documents: weakref.WeakKeyDictionary[App, dict[str, Any]] = weakref.WeakKeyDictionary()


def _join(*parts: str) -> str:
    return "/" + "/".join(p.strip("/") for p in parts if p.strip("/"))


def realtime_path(app: App, endpoint: Endpoint) -> str:
    """The WebSocket path clients open for a realtime endpoint."""
    path = endpoint.spec.path
    if path == "realtime" or path.endswith("/realtime"):
        return _join(app.app_id, path)
    return _join(app.app_id, path, "realtime")


def describe_endpoint(app: App, endpoint: Endpoint) -> dict[str, Any]:
    spec = endpoint.spec
    run_path = _join(app.app_id, spec.path)
    body: dict[str, Any] = {
        "path": "/" + spec.path,
        "id": endpoint.key,
        "realtime": spec.realtime,
        "max_batch_size": spec.max_batch_size,
        "max_queue_delay_ms": spec.max_queue_delay_ms,
        "input_schema": endpoint.input_model.__name__,
        "output_schema": endpoint.output_model.__name__,
        "urls": {"run": run_path, "stream": _join(run_path, "stream"), "queue": run_path},
    }
    if spec.realtime:
        body["buffering"] = spec.buffering
        body["session_timeout_s"] = spec.session_timeout_s
        body["urls"]["realtime"] = realtime_path(app, endpoint)
    return body


def start_session_path(app: App, endpoint: Endpoint) -> str:
    """Where a video endpoint's sessions start (``POST``)."""
    return _join(app.app_id, endpoint.spec.path, "start-session")


def describe_video(app: App, endpoint: Endpoint) -> dict[str, Any]:
    """A video endpoint: its frames' size rule, batching, parameters and where sessions start."""
    video = endpoint.video
    assert video is not None
    return {
        "path": "/" + endpoint.spec.path,
        "id": endpoint.key,
        "max_side": video.max_side,
        "multiple_of": video.multiple_of,
        "max_batch_size": endpoint.spec.max_batch_size,
        "session_timeout_s": endpoint.spec.session_timeout_s,
        "frame_field": endpoint.frame_input,
        "input_schema": endpoint.input_model.__name__,
        "output_schema": endpoint.output_model.__name__,
        "urls": {"start_session": start_session_path(app, endpoint)},
    }


def describe(app: App, engine: EngineClient) -> dict[str, Any]:
    """The ``/models`` entry of one app; apps with model weights say which (``weights``:
    ``real`` or ``random``, the latter with the reason and the fix in ``weights_info``), as
    the engine that runs them reports (with engine workers, the workers do)."""
    registry = engine.registry
    body: dict[str, Any] = {
        "id": app.app_id,
        "title": app.title or app.app_id,
        "description": app.description,
        "tags": list(app.tags),
        "aliases": [name for name in registry.names_of(app) if name != app.app_id],
        "endpoints": [describe_endpoint(app, ep) for ep in registry.request_endpoints(app).values()],
        "openapi_url": f"/models/{app.app_id}/openapi.json",
    }
    videos = registry.video_endpoints(app)
    if videos:
        body["video"] = [describe_video(app, ep) for ep in videos.values()]
    sockets = registry.sockets_of(app)
    if sockets:
        body["websockets"] = [{"path": "/" + p, "id": ep.key, "url": _join(app.app_id, p)} for p, ep in sockets.items()]
    weights = engine.weights_of(app)
    if weights is not None:
        body["weights"] = weights.kind
        body["weights_info"] = weights.to_json()
    return body


def _start_session_operation(endpoint: Endpoint, in_ref: dict[str, Any]) -> dict[str, Any]:
    """The ``POST …/start-session`` operation of a video endpoint (fal's WMA signalling)."""
    params = {
        "type": "object",
        "description": f"Fields of the input below but `{endpoint.frame_input}` (the camera frame)",
        "allOf": [in_ref],
    }
    offer = {"type": "object", "properties": {"sdp": {"type": "string"}, "type": {"const": "offer"}}}
    return {
        "operationId": endpoint.key.replace("/", "_").replace("-", "_") + "_start_session",
        "summary": f"Start a live video session on {endpoint.key} (WebRTC)",
        "description": (
            "Send the client's complete SDP offer (a sendrecv video track, optionally a data channel). The answer "
            "is the first event of a text/event-stream held open for the session's life; closing it ends the "
            "session. Parameters change over the data channel."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "sdp": {"type": "string"},
                            "type": {"const": "offer"},
                            "session_id": {"type": "string"},
                            "offer": offer,
                            "session_params": params,
                        },
                    }
                }
            },
        },
        "responses": {
            "200": {
                "description": "The SDP answer event, keep-alives, then an end event",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            "400": {"description": "An offer that cannot start a session"},
            "404": {"description": "The app takes no video"},
            "422": {"description": "Session parameters that do not fit the input"},
        },
    }


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class HTTPValidationError(BaseModel):
    detail: list[ValidationErrorItem]


class QueueStatus(BaseModel):
    status: str
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None


def _ref(schemas: dict[Any, dict[str, Any]], model: type[BaseModel], mode: str) -> dict[str, Any]:
    return schemas[(model, mode)]


def openapi_document(app: App, registry: AppRegistry) -> dict[str, Any]:
    """OpenAPI 3.1 for one app (without ``servers``, which depend on the caller's host)."""
    endpoints = list(registry.request_endpoints(app).values())
    videos = list(registry.video_endpoints(app).values())
    wanted: list[tuple[type[BaseModel], Any]] = [(HTTPValidationError, "serialization"), (QueueStatus, "serialization")]
    for ep in [*endpoints, *videos]:
        wanted += [(ep.input_model, "validation"), (ep.output_model, "serialization")]
    schemas, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=_REF)
    errors = {
        "422": {
            "description": "The input failed validation; `detail` names each field",
            "content": {"application/json": {"schema": _ref(schemas, HTTPValidationError, "serialization")}},
        }
    }
    paths: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for ep in endpoints:
        in_ref = _ref(schemas, ep.input_model, "validation")
        out_ref = _ref(schemas, ep.output_model, "serialization")
        operation_id = ep.key.replace("/", "_").replace("-", "_")
        run_path = _join(app.app_id, ep.spec.path)
        paths.setdefault(run_path, {})["post"] = {
            "operationId": operation_id,
            "summary": f"Run {ep.key}",
            "description": (
                "On the run host: runs the input and answers the output. On the queue host (`queue.` host or "
                "`--queue-port`): submits a job and answers its QueueStatus. "
                f"`POST {_join(run_path, 'stream')}` streams partial outputs as server-sent events."
            ),
            "requestBody": {"required": True, "content": {"application/json": {"schema": in_ref}}},
            "responses": {
                "200": {"description": "The output", "content": {"application/json": {"schema": out_ref}}},
                **errors,
            },
        }
        order.append(run_path)
        if ep.spec.realtime:
            ws_path = realtime_path(app, ep)
            item = paths.setdefault(ws_path, {})
            item["x-fal-protocol"] = {
                "type": "realtime",
                "operationId": operation_id + "_realtime",
                "config": {
                    "buffering": ep.spec.buffering,
                    "sessionTimeout": ep.spec.session_timeout_s,
                    "maxBatchSize": ep.spec.max_batch_size,
                },
                "contentType": "application/msgpack",
                "realtimeMode": "unary",
            }
            item.setdefault(
                "post",
                {
                    "operationId": operation_id + "_realtime",
                    "summary": f"Realtime {ep.key} (WebSocket; documentation only)",
                    "description": (
                        "Open a WebSocket at this path (query `fal_jwt_token`, `max_buffering` 1-60). Send one binary "
                        "msgpack map per frame (the input below); each output comes back as a binary msgpack map. "
                        "Errors and control messages are JSON text frames (`x-fal-error`, `x-fal-message`)."
                    ),
                    "requestBody": {"content": {"application/msgpack": {"schema": in_ref}}},
                    "responses": {
                        "200": {
                            "description": "One output per input",
                            "content": {"application/msgpack": {"schema": out_ref}},
                        }
                    },
                },
            )
            if ws_path not in order:
                order.append(ws_path)
    for ep in videos:
        start = start_session_path(app, ep)
        paths[start] = {"post": _start_session_operation(ep, _ref(schemas, ep.input_model, "validation"))}
        order.append(start)
    for sub_path, sock in registry.sockets_of(app).items():
        ws = _join(app.app_id, sub_path)
        paths.setdefault(ws, {})["x-fal-protocol"] = {"type": "websocket", "operationId": sock.key.replace("/", "_")}
        paths[ws]["get"] = {
            "operationId": sock.key.replace("/", "_").replace("-", "_") + "_websocket",
            "summary": f"Raw WebSocket {sock.key} (the app's own messages)",
            "description": "Open a WebSocket here (query `fal_jwt_token`, or an Authorization header).",
            "responses": {"101": {"description": "Switching protocols"}},
        }
        order.append(ws)
    app_root = _join(split_app_id(app.app_id)[0])
    status_ref = _ref(schemas, QueueStatus, "serialization")
    request_id = {"name": "request_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths[f"{app_root}/requests/{{request_id}}/status"] = {
        "get": {
            "operationId": "queue_status",
            "summary": "Status of a queued request (queue host)",
            "parameters": [request_id, {"name": "logs", "in": "query", "schema": {"type": "string"}}],
            "responses": {
                "200": {"description": "COMPLETED", "content": {"application/json": {"schema": status_ref}}},
                "202": {
                    "description": "IN_QUEUE or IN_PROGRESS",
                    "content": {"application/json": {"schema": status_ref}},
                },
            },
        }
    }
    paths[f"{app_root}/requests/{{request_id}}"] = {
        "get": {
            "operationId": "queue_result",
            "summary": "Result of a completed request (queue host)",
            "parameters": [request_id],
            "responses": {"200": {"description": "The output as the endpoint returned it"}},
        }
    }
    paths[f"{app_root}/requests/{{request_id}}/cancel"] = {
        "put": {
            "operationId": "queue_cancel",
            "summary": "Cancel a request (queue host)",
            "parameters": [request_id],
            "responses": {
                "202": {"description": "CANCELLATION_REQUESTED"},
                "400": {"description": "ALREADY_COMPLETED"},
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": app.title or app.app_id,
            "description": app.description,
            "version": VERSION,
            "x-fal-metadata": {
                "endpointId": app.app_id,
                "aliases": [n for n in registry.names_of(app) if n != app.app_id],
            },
        },
        "paths": paths,
        "x-fal-order-paths": order,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Key <id>:<secret>`, or `Bearer <token>` from POST /tokens/",
                }
            },
        },
        "security": [{"apiKeyAuth": []}],
    }


class DescribeError(Exception):
    """An app's models cannot be described as JSON Schema (the server log has the details)."""


async def cached_document(app: App, registry: AppRegistry) -> dict[str, Any]:
    """:func:`openapi_document`, built once per app instance, off the event loop."""
    document = _documents.get(app)
    if document is None:
        try:
            document = await asyncio.to_thread(openapi_document, app, registry)
        except (PydanticUserError, TypeError, ValueError) as exc:
            log.exception("cannot generate the OpenAPI document of %s", app.app_id)
            raise DescribeError(f"cannot describe {app.app_id}: {exc}") from exc
        _documents[app] = document
    return document


def endpoint_schemas(document: dict[str, Any], app: App, endpoint: Endpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    """An endpoint's input and output JSON Schemas as its app's OpenAPI ``document`` has them.

    Their ``$ref`` s point into the document's ``components``."""
    operation = document["paths"][_join(app.app_id, endpoint.spec.path)]["post"]
    request_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    response_schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return _deref(document, request_schema), _deref(document, response_schema)


def _deref(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/components/schemas/"):
        return schema
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def visible_apps(registry: AppRegistry, principal: Principal) -> list[App]:
    """The apps ``principal`` may use, in the registry's order."""
    return [app for app in registry if principal.may_use(registry.names_of(app))]


def find_app(registry: AppRegistry, principal: Principal, name: str) -> App:
    """The app called ``name`` (its id or an alias). Raises ``LookupError`` (none) or ``AuthError`` (403)."""
    name = name.strip("/")
    try:
        base, _, sub = split_app_id(name)
    except ValueError:
        base, sub = name, ""
    app = None if sub else registry.get(base)
    if app is None:
        raise LookupError(f"no app named {name!r}")
    if not principal.may_use(registry.names_of(app)):
        raise AuthError(403, f"credentials are not valid for {name!r}")
    return app


class CatalogRoutes:
    """``/models`` and each app's description and OpenAPI document; see the module docstring."""

    def __init__(self, engine: EngineClient, auth: Authenticator) -> None:
        self.engine = engine
        self.auth = auth

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/models", self.list_models, methods=["GET"]),
            Route("/models/{app_id:path}/openapi.json", self.openapi, methods=["GET"]),
            Route("/models/{app_id:path}", self.get_model, methods=["GET"]),
        ]

    def _principal(self, request: Request) -> Principal:
        return self.auth.request(request.headers, request.query_params.get("fal_jwt_token"))

    def _requested_app(self, request: Request) -> App | Response:
        """The app named in the path, if the caller's credentials may use it; else the error response."""
        try:
            principal = self._principal(request)
            return find_app(self.engine.registry, principal, request.path_params["app_id"])
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        except LookupError as exc:
            return http.error(404, f"{exc.args[0]}; GET /models lists them")

    async def list_models(self, request: Request) -> Response:
        try:
            principal = self._principal(request)
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        registry = self.engine.registry
        return JSONResponse({"models": [self._entry(app) for app in visible_apps(registry, principal)]})

    def _entry(self, app: App) -> dict[str, Any]:
        """An app's catalog entry; with engine workers, the ``workers`` serving it."""
        entry = describe(app, self.engine)
        serving = workers.for_app(self.engine, app.app_id)
        if serving is not None:
            entry["workers"] = serving
        return entry

    async def get_model(self, request: Request) -> Response:
        found = self._requested_app(request)
        if isinstance(found, Response):
            return found
        return JSONResponse(self._entry(found))

    async def openapi(self, request: Request) -> Response:
        found = self._requested_app(request)
        if isinstance(found, Response):
            return found
        try:
            document = await cached_document(found, self.engine.registry)
        except DescribeError as exc:
            return http.error(500, str(exc), error_type="internal_error")
        return JSONResponse({**document, "servers": [{"url": base_url(request)}]})
