"""The model catalog: ``GET /models``, ``GET /models/{id}`` and ``GET /models/{id}/openapi.json``.

Each app is described from what it declares (``framewire.engine.api``): id, title, description,
tags, aliases, and per endpoint its batching and realtime settings and the URLs of each
surface. ``/models/{id}/openapi.json`` is the OpenAPI 3.1 document of the surface the
request reached (the queue surface on a ``queue.`` host or the ``--queue-port`` listener,
else the run surface) in the server's auth mode, generated from the app's models and the
server's rules (:mod:`framewire.gateway.platform.openapi`); ``servers`` is the URL the
document was fetched from.

With auth on, the catalog needs a key or token and shows only the apps it may use.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import Any

from pydantic import PydanticUserError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from framewire.engine.api import App, AppRegistry, Endpoint, EngineClient, split_app_id
from framewire.gateway import http
from framewire.gateway.http import base_url
from framewire.gateway.platform import workers
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.openapi import (
    DEFAULT_LIMITS,
    Limits,
    Surface,
    join,
    openapi_document,
    realtime_path,
    run_path,
    start_session_path,
)

log = logging.getLogger("framewire.catalog")

# Documents depend only on the app's declarations, the surface and the auth mode: built once each.
_documents: weakref.WeakKeyDictionary[App, dict[tuple[Surface, bool, Limits], dict[str, Any]]] = (
    weakref.WeakKeyDictionary()
)


def describe_endpoint(app: App, endpoint: Endpoint) -> dict[str, Any]:
    spec = endpoint.spec
    path = run_path(app, endpoint)
    body: dict[str, Any] = {
        "path": "/" + spec.path,
        "id": endpoint.key,
        "realtime": spec.realtime,
        "max_batch_size": spec.max_batch_size,
        "max_queue_delay_ms": spec.max_queue_delay_ms,
        "input_schema": endpoint.input_model.__name__,
        "output_schema": endpoint.output_model.__name__,
        "urls": {"run": path, "stream": join(path, "stream"), "queue": path},
    }
    if spec.realtime:
        body["buffering"] = spec.buffering
        body["session_timeout_s"] = spec.session_timeout_s
        body["urls"]["realtime"] = realtime_path(app, endpoint)
    return body


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
        body["websockets"] = [{"path": "/" + p, "id": ep.key, "url": join(app.app_id, p)} for p, ep in sockets.items()]
    weights = engine.weights_of(app)
    if weights is not None:
        body["weights"] = weights.kind
        body["weights_info"] = weights.to_json()
    return body


class DescribeError(Exception):
    """An app's models cannot be described as JSON Schema (the server log has the details)."""


async def cached_document(
    app: App,
    registry: AppRegistry,
    surface: Surface = Surface.RUN,
    auth: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """:func:`openapi_document`, built once per app instance, surface, auth mode and limits, off the event loop."""
    built = _documents.setdefault(app, {})
    document = built.get((surface, auth, limits))
    if document is None:
        try:
            document = await asyncio.to_thread(openapi_document, app, registry, surface, auth, limits)
        except (PydanticUserError, TypeError, ValueError) as exc:
            log.exception("cannot generate the OpenAPI document of %s", app.app_id)
            raise DescribeError(f"cannot describe {app.app_id}: {exc}") from exc
        built[(surface, auth, limits)] = document
    return document


def endpoint_schemas(document: dict[str, Any], app: App, endpoint: Endpoint) -> tuple[dict[str, Any], dict[str, Any]]:
    """An endpoint's input and output JSON Schemas as its app's OpenAPI ``document`` has them.

    Their ``$ref`` s point into the document's ``components``."""
    operation = document["paths"][run_path(app, endpoint)]["post"]
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

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        on_queue: Callable[[Scope], bool],
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.on_queue = on_queue  # whether a request reached the queue surface
        self.limits = limits  # the server's, stated in its documents

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
            surface = Surface.QUEUE if self.on_queue(request.scope) else Surface.RUN
            document = await cached_document(found, self.engine.registry, surface, self.auth.enabled, self.limits)
        except DescribeError as exc:
            return http.error(500, str(exc), error_type="internal_error")
        return JSONResponse({**document, "servers": [{"url": base_url(request)}]})
