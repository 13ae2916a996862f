"""Probes and the metrics scrape: ``GET /health``, ``GET /ready``, ``GET /metrics``.

None of them needs a key. ``/health`` says the process answers (the event loop is not
stuck); ``/ready`` says every app is set up and warm, the server is not draining and its store
can be written (503 with ``Retry-After`` and a ``reason`` otherwise: ``engine_starting``,
``no_worker``, ``draining``, ``store_unwritable`` with ``detail``; with engine workers it
also lists each worker and the apps no ready worker serves); ``/metrics`` is the Prometheus text
format (see :mod:`framewire.gateway.platform.metrics`), with the gauges that are read at
scrape time (readiness, draining, queue depths, pending usage) brought up to date first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from framewire.engine.api import EngineClient
from framewire.gateway.db import DatabaseClosed
from framewire.gateway.platform import workers
from framewire.gateway.platform.metrics import CONTENT_TYPE, Metrics
from framewire.gateway.platform.usage import UsageMeter
from framewire.gateway.requests.job_store import JobStore
from framewire.gateway.state import ServerState


class HealthRoutes:
    """Liveness, readiness and the metrics scrape; see the module docstring."""

    def __init__(
        self,
        engine: EngineClient,
        state: ServerState,
        metrics: Metrics,
        usage: UsageMeter,
        jobs: JobStore,
        store_error: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store_error = store_error
        self.engine = engine
        self.state = state
        self.metrics = metrics
        self.usage = usage
        self.jobs = jobs

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health),
            Route("/ready", self.ready),
            Route("/metrics", self.scrape, methods=["GET"]),
        ]

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> JSONResponse:
        extra = workers.readiness(self.engine)  # with engine workers: each worker, and apps none serves
        store_error = self.store_error()
        if self.engine.ready and not self.state.draining and store_error is None:
            return JSONResponse({"ready": True, **extra})
        body: dict[str, object] = {"ready": False, **extra}
        if self.state.draining:
            body["reason"] = "draining"
        elif not self.engine.ready:
            body["reason"] = "no_worker" if extra.get("unserved_apps") else "engine_starting"
        else:
            body.update(reason="store_unwritable", detail=store_error)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})

    async def scrape(self, request: Request) -> Response:
        m, draining = self.metrics, self.state.draining
        m.ready.set(1 if self.engine.ready and not draining else 0)
        m.draining.set(1 if draining else 0)
        m.usage_pending.set(self.usage.pending)
        try:
            lengths = await self.jobs.queue_lengths()
        except DatabaseClosed:
            lengths = {}
        m.set_queue_depths(lengths, [app.app_id for app in self.engine.registry])
        return Response(await asyncio.to_thread(m.render), media_type=CONTENT_TYPE)
