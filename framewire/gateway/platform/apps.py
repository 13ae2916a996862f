"""``GET /v1/apps`` and ``GET /v1/apps/{id}`` (admin): every app with its replicas, devices and health.

The operator's view of the deployment, the self-hosted counterpart of fal's serverless
apps API (list, inspect, monitor). A *replica* is a worker serving the app, as this edge
sees it over its link (so a worker this edge cannot reach shows as ``lost`` or
``connecting`` here, whatever other edges see); with the engine in this process, the one
replica is the process itself. Per app:

- ``replicas``, ``ready_replicas``, ``devices`` (sorted, unique);
- ``health``: ``healthy`` (every replica ready), ``degraded`` (some ready, some not) or
  ``unavailable`` (none ready: frames and requests for it fail until one is);
- ``queued``: its queue jobs waiting (in the shared store with ``--redis-url``);
- ``workers``: each replica's label, address, device, state, sessions from every edge,
  this edge's requests there, recent batch fill and queue delay per endpoint, link RTT,
  and why it is lost or refused.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framewire.engine.api import App, EngineClient, WorkerStatus, split_app_id
from framewire.gateway import http
from framewire.gateway.platform import workers
from framewire.gateway.platform.auth import Authenticator, AuthError, scope_matches
from framewire.gateway.requests.job_store import JobStore
from framewire.state.connection import StateUnavailable

READY = "ready"


def _replica(status: WorkerStatus) -> dict[str, Any]:
    return {
        "worker": status.label,
        "address": status.name,
        "device": status.device,
        "state": status.state,
        "sessions": status.sessions_total,
        "requests": status.requests,
        "batch_fill": dict(status.batch_fill),
        "queue_ms": dict(status.queue_ms),
        "rtt_ms": status.rtt_ms,
        "failovers": status.failovers,
        "error": status.error,
    }


def _in_process(engine: EngineClient) -> dict[str, Any]:
    return {"worker": "in-process", "address": None, "device": None, "state": READY if engine.ready else "starting"}


def health(states: list[str]) -> str:
    """``healthy`` when every replica is ready, ``degraded`` when some are, else ``unavailable``."""
    ready = states.count(READY)
    if ready and ready == len(states):
        return "healthy"
    return "degraded" if ready else "unavailable"


class AppsRoutes:
    """See the module docstring."""

    def __init__(self, engine: EngineClient, auth: Authenticator, jobs: JobStore) -> None:
        self.engine = engine
        self.auth = auth
        self.jobs = jobs

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v1/apps", self.list_apps, methods=["GET"]),
            Route("/v1/apps/{app_id:path}", self.get_app, methods=["GET"]),
        ]

    def _refusal(self, request: Request) -> Response | None:
        try:
            principal = self.auth.request(request.headers)
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        if self.auth.enabled and not principal.admin:
            return http.error(403, "this needs an admin key (create one with `framewire keys create --admin`)")
        return None

    async def _queued(self) -> dict[str, int] | None:
        try:
            return await self.jobs.queue_lengths()
        except StateUnavailable:
            return None  # shown as null: unknown while the shared store is away

    def describe(self, app: App, queued: dict[str, int] | None) -> dict[str, Any]:
        registry = self.engine.registry
        found = workers.statuses(self.engine)
        replicas = [_in_process(self.engine)] if found is None else [_replica(s) for s in found if app.app_id in s.apps]
        states = [str(r["state"]) for r in replicas]
        return {
            "id": app.app_id,
            "aliases": [name for name in registry.names_of(app) if name != app.app_id],
            "endpoints": [
                {"path": "/" + ep.spec.path, "realtime": ep.spec.realtime, "max_batch_size": ep.max_batch_size}
                for ep in registry.endpoints_of(app).values()
            ],
            "replicas": len(replicas),
            "ready_replicas": states.count(READY),
            "devices": sorted({str(r["device"]) for r in replicas if r["device"] is not None}),
            "health": health(states),
            "queued": None if queued is None else queued.get(app.app_id, 0),
            "workers": replicas,
        }

    async def list_apps(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        queued = await self._queued()
        return JSONResponse({"apps": [self.describe(app, queued) for app in self.engine.registry]})

    async def get_app(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        name = request.path_params["app_id"].strip("/")
        registry = self.engine.registry
        try:
            app = registry.get(split_app_id(name)[0])
        except ValueError:
            app = None
        if app is None:
            app = next((a for a in registry if scope_matches([name], registry.names_of(a))), None)
        if app is None:
            return http.error(404, f"no app {name!r}")
        return JSONResponse(self.describe(app, await self._queued()))
