"""The gateway's composition: every object built once, each wing's routes, the lifespan.

:func:`create_gateway` is the one place the gateway is put together. It builds every
collaborator completely (stores, fetcher, finaliser, dispatcher, webhook signer and
deliverer, URL signer, limiter, meter, metrics, key store, usage meter, authenticator)
before the app exists, hands each wing exactly the objects it uses, and leaves to the
lifespan only what needs the event loop or I/O: opening the database, loading the keys,
starting and stopping the engine and the background tasks. The one piece of shared
mutable state is :class:`framewire.gateway.state.ServerState`.

Routing: shared routes (health, readiness, metrics, catalog, keys and usage admin,
tokens, storage, files, JWKS, MCP, WebSockets: an app's raw socket path first, then the
realtime paths; live video's ``…/start-session``) answer on every surface; any other HTTP
path goes to the queue surface or the run surface, chosen per request
(:mod:`framewire.gateway.requests.surfaces`), since fal clients use the same paths on
both. The shared prefixes ``/models``, ``/v1``, ``/metrics``, ``/health``, ``/ready`` and
``/mcp`` are therefore not available as app owners.

Stores: by default the embedded ones (one SQLite file in the data dir). With
``--redis-url`` every store is the Redis one (:mod:`framewire.gateway.stores`): jobs,
keys, request rates and usage are shared with the other edges, the data dir holds only
files and server secrets and must be the same folder on every edge, and readiness
includes Redis answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from framewire.engine.api import EngineClient
from framewire.gateway import drain as drain_mod
from framewire.gateway import http
from framewire.gateway.budget import StructureBudget
from framewire.gateway.db import Database, Migration
from framewire.gateway.demo import DemoFiles
from framewire.gateway.mcp.surface import McpSurface
from framewire.gateway.platform import keys as keys_mod
from framewire.gateway.platform import usage as usage_mod
from framewire.gateway.platform.admin import AdminRoutes
from framewire.gateway.platform.apps import AppsRoutes
from framewire.gateway.platform.auth import Authenticator, KeyVerifier, StaticKeys, TokenIssuer
from framewire.gateway.platform.catalog import CatalogRoutes
from framewire.gateway.platform.health import HealthRoutes
from framewire.gateway.platform.keys import KeyBackend, KeyChain, KeyStore, SqliteKeys
from framewire.gateway.platform.limits import Limiter, LocalRates, RateStore
from framewire.gateway.platform.logs import AccessLog
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.platform.openapi import Limits
from framewire.gateway.platform.origins import BrowserGuard
from framewire.gateway.platform.tokens import TokenRoutes
from framewire.gateway.platform.usage import SqliteUsage, UsageMeter, UsageStore
from framewire.gateway.realtime.endpoint import RealtimeEndpoint
from framewire.gateway.realtime.protocol import CloseCode
from framewire.gateway.realtime.rawsocket import AppSocketRoutes
from framewire.gateway.requests import job_store as job_store_mod
from framewire.gateway.requests.dispatcher import Dispatcher
from framewire.gateway.requests.finaliser import OutputFinaliser
from framewire.gateway.requests.inputs import InputFetcher
from framewire.gateway.requests.job_store import Job, JobStore, SqliteJobStore
from framewire.gateway.requests.outcomes import Outcome
from framewire.gateway.requests.queue_surface import QueueSurface
from framewire.gateway.requests.run_surface import RunSurface
from framewire.gateway.requests.surfaces import SurfaceRouter, is_queue
from framewire.gateway.requests.webhooks import JwksRoutes, WebhookDeliverer, WebhookSigner, load_signing_key
from framewire.gateway.settings import Settings
from framewire.gateway.state import ServerState
from framewire.gateway.storage.routes import StorageRoutes
from framewire.gateway.storage.store import FileStore, UrlSigner, load_secret
from framewire.gateway.stores.redis_jobs import RedisJobStore
from framewire.gateway.stores.redis_keys import RedisKeys
from framewire.gateway.stores.redis_limits import RedisRates, RedisSessions
from framewire.gateway.stores.redis_usage import RedisUsage
from framewire.gateway.stores.shared_files import check_shared_folder
from framewire.gateway.video.offer import ice_configuration
from framewire.gateway.video.signalling import VideoRoutes
from framewire.state.connection import StateConnection, StateOptions, StateUnavailable

log = logging.getLogger("framewire")

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_web"

#: Every table of the embedded store, in order. Other areas append their own lists.
MIGRATIONS: tuple[Migration, ...] = (*job_store_mod.MIGRATIONS, *keys_mod.MIGRATIONS, *usage_mod.MIGRATIONS)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (a path no route matches) in fal's error shape."""
    assert isinstance(exc, HTTPException)
    return http.error(exc.status_code, exc.detail, headers=exc.headers)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Unhandled errors: fal's shape, with a request id (the traceback goes to the server log)."""
    return JSONResponse(
        {"detail": "Internal Server Error"},
        status_code=500,
        headers={http.REQUEST_ID: str(uuid.uuid4()), "x-fal-error-type": "internal_error"},
    )


async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The shared store (Redis) cannot be reached: 503 with ``Retry-After``, so clients retry shortly."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the server's store is unreachable; retry shortly", "error_type": "store_unavailable"},
        status_code=503,
        headers={http.REQUEST_ID: str(uuid.uuid4()), "Retry-After": "1", "x-fal-error-type": "store_unavailable"},
    )


def edge_name() -> str:
    """This process's name among the edges sharing Redis (unique per process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True, eq=False)
class Stores:
    """Where an edge keeps its state: the embedded database, or Redis shared with other edges."""

    jobs: JobStore
    keys: KeyBackend
    usage: UsageStore
    rates: RateStore
    sessions: RedisSessions | None = None  # open sessions of keys with a limit, across edges
    db: Database | None = None
    shared: StateConnection | None = None


def build_stores(settings: Settings, shared: StateConnection | None) -> Stores:
    """The embedded stores, or with ``shared`` (or ``--redis-url``) the Redis ones."""
    if shared is None and settings.redis_url is not None:
        shared = StateConnection(StateOptions(settings.redis_url))
    if shared is None:
        db = Database(Path(settings.data_dir) / "framewire.db", MIGRATIONS)
        return Stores(SqliteJobStore(db), SqliteKeys(db), SqliteUsage(db), LocalRates(), db=db)
    jobs = RedisJobStore(
        shared,
        edge_name(),
        claim_lease_s=settings.job_lease_s,
        idempotency_ttl_s=settings.job_retention_s,
        delivery_lease_s=settings.webhook_timeout_s + 30.0,
    )
    usage = RedisUsage(shared, retention_s=settings.usage_retention_s)
    return Stores(jobs, RedisKeys(shared), usage, RedisRates(shared), RedisSessions(shared), shared=shared)


@dataclass(frozen=True, eq=False)
class Gateway:
    """A composed gateway: the ASGI app, and the drain its server runs on the first stop signal."""

    app: Starlette
    state: ServerState
    dispatcher: Dispatcher

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, close sessions with 1001, stop claiming jobs; returns within ``timeout_s``."""
        await drain_mod.drain(self.state, self.dispatcher, timeout_s)


def create_app(
    settings: Settings,
    engine: EngineClient,
    *,
    keys: KeyVerifier | None = None,
    metrics: Metrics | None = None,
    shared: StateConnection | None = None,
) -> Starlette:
    """The ASGI app of :func:`create_gateway`, for callers that do not drain (tests, embedding)."""
    return create_gateway(settings, engine, keys=keys, metrics=metrics, shared=shared).app


def create_gateway(
    settings: Settings,
    engine: EngineClient,
    *,
    keys: KeyVerifier | None = None,
    metrics: Metrics | None = None,
    shared: StateConnection | None = None,
) -> Gateway:
    """Build the gateway around an engine (started and stopped by the app's lifespan).

    ``keys`` replaces the default verifier (``--api-key`` keys, then the key store);
    ``metrics`` is the instance whose ``on_batch`` the engine was built with, if any;
    ``shared`` the Redis connection to keep state in (made from ``--redis-url`` when
    absent; the lifespan connects and closes it either way).
    Reads (and on first use creates) the data dir's storage secret and webhook signing key.
    """
    data_dir = Path(settings.data_dir)
    state = ServerState()
    stores = build_stores(settings, shared)
    db, conn = stores.db, stores.shared

    # platform: keys, auth, limits, usage, metrics
    key_store = KeyStore(stores.keys)
    auth = Authenticator(
        settings.auth,
        keys if keys is not None else KeyChain(StaticKeys(settings.api_keys), key_store),
        TokenIssuer(settings.token_secret, settings.max_token_expiration_s),
    )
    metrics = metrics if metrics is not None else Metrics()
    metrics.watch_workers(engine)  # per-worker series when the engine runs in worker processes
    usage = UsageMeter(
        stores.usage, flush_interval_s=settings.usage_flush_interval_s, retention_s=settings.usage_retention_s
    )
    limiter = Limiter(requests=stores.rates, sessions=stores.sessions)
    meter = Meter(usage, metrics, limiter)

    # storage
    files = FileStore(data_dir / "files", max_bytes=settings.max_upload_bytes, default_ttl_s=settings.file_ttl_s)
    storage_secret = load_secret(data_dir / "storage.key")
    url_signer = UrlSigner(storage_secret)

    # how much structure one input (frame or body) may decode to
    budget = StructureBudget(settings.max_input_items)
    body = http.BodyLimits(settings.max_body_bytes, settings.read_timeout_s, budget)

    # requests: inputs, outputs, the durable queue, webhooks
    finaliser = OutputFinaliser(files)
    fetcher = InputFetcher(
        files,
        timeout_s=settings.fetch_timeout_s,
        max_bytes=settings.max_fetch_bytes,
        private_networks=settings.private_networks,
    )
    jobs = stores.jobs
    webhook_signer = WebhookSigner(load_signing_key(data_dir / "webhook_ed25519.pem"), settings.webhook_secret)
    webhooks = WebhookDeliverer(
        jobs,
        webhook_signer,
        timeout_s=settings.webhook_timeout_s,
        max_attempts=settings.webhook_max_attempts,
        retry_base_s=settings.webhook_retry_base_s,
        private_networks=settings.private_networks,
    )

    def charge_job(job: Job, outcome: Outcome, compute_ms: float, outputs: int) -> None:
        meter.request(
            job.owner,
            job.app_key,
            "queue",
            error_code=outcome.error_type,
            outputs=outputs,
            compute_ms=compute_ms,
            duration_s=max(0.0, time.time() - job.created_at),
        )

    dispatcher = Dispatcher(
        jobs,
        engine,
        finaliser,
        fetcher,
        files,
        in_flight=settings.queue_jobs_in_flight,
        max_attempts=settings.max_job_attempts,
        retention_s=settings.job_retention_s,
        on_webhook=webhooks.wake,
        on_finished=charge_job,
    )

    # the wings
    realtime = RealtimeEndpoint(
        engine,
        auth,
        limiter,
        meter,
        metrics,
        finaliser,
        fetcher,
        state,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=("*",) if settings.auth else settings.allowed_hosts,
        max_frame_bytes=settings.max_frame_bytes,
        budget=budget,
    )
    key_store.on_change(realtime.close_revoked_sessions)
    sockets = AppSocketRoutes(
        engine,
        auth,
        limiter,
        meter,
        metrics,
        state,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=("*",) if settings.auth else settings.allowed_hosts,
        max_message_bytes=settings.max_frame_bytes,
    )
    video = VideoRoutes(
        engine,
        auth,
        limiter,
        meter,
        metrics,
        state,
        body,
        ice=ice_configuration(settings.ice_servers, settings.turn_username, settings.turn_credential),
        max_sessions=settings.max_video_sessions,
    )
    queue = QueueSurface(
        engine,
        auth,
        meter,
        jobs,
        dispatcher,
        webhooks,
        state,
        body,
        max_queue_length=settings.max_queue_length,
        private_networks=settings.private_networks,
    )
    # With auth off, a GET run from another site's page is refused (origins.BrowserGuard does the rest).
    run = RunSurface(
        engine, auth, meter, fetcher, finaliser, state, body, None if settings.auth else settings.allowed_origins
    )
    storage = StorageRoutes(
        auth, files, url_signer, storage_secret, body, upload_url_expiration_s=settings.upload_url_expiration_s
    )
    mcp = McpSurface(
        engine,
        auth,
        meter,
        run,
        queue,
        finaliser,
        files,
        state,
        allowed_origins=settings.allowed_origins,
        body=body,
    )
    demo = Path(settings.demo_dir) if settings.demo_dir else DEMO_DIR
    static = DemoFiles(demo) if (demo / "index.html").is_file() else None
    routes = [
        *HealthRoutes(
            engine, state, metrics, usage, jobs, shared=conn, store_error=lambda: None if db is None else db.write_error
        ).routes(),
        *CatalogRoutes(engine, auth, functools.partial(is_queue, settings=settings), Limits.of(settings)).routes(),
        *AdminRoutes(engine, auth, key_store, usage, body).routes(),
        *AppsRoutes(engine, auth, jobs).routes(),
        *TokenRoutes(engine, auth, body).routes(),
        *JwksRoutes(webhook_signer).routes(),
        *storage.routes(),
        *mcp.routes(),
        *sockets.routes(fallback=realtime.routes()),
        *video.routes(),
    ]
    # Last: any other path; a shared route's path with a method it lacks is answered 405 there.
    routes.append(Route("/{path:path}", SurfaceRouter(settings, queue, run, static, shared=tuple(routes))))

    async def open_stores() -> None:
        if db is not None:
            await db.open()
            return
        assert conn is not None and stores.sessions is not None
        await conn.connect()
        conn.start()
        await asyncio.to_thread(files.ensure)
        await check_shared_folder(conn, files)
        stores.sessions.start()

    async def close_stores() -> None:
        if db is not None:
            await db.close()
        if stores.sessions is not None:
            await stores.sessions.stop()
        if conn is not None:
            await conn.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await open_stores()
            await key_store.reload()
        except BaseException:
            await close_stores()
            raise
        if settings.auth and keys is None and not settings.api_keys and not key_store.active_count():
            await close_stores()
            raise RuntimeError(
                "--auth is on but there is no API key: pass --api-key id:secret, "
                "or create one first with `framewire keys create --admin`"
            )
        keys_watch = asyncio.create_task(key_store.watch(), name="keys-watch")
        usage.start()
        await asyncio.to_thread(files.ensure)
        await engine.start()
        log.info("engine ready: %s", ", ".join(a.app_id for a in engine.registry))
        await dispatcher.start()
        webhooks.start()
        try:
            async with mcp.running():  # the MCP session manager's task group
                yield
        finally:
            state.draining = True
            for session in list(state.sessions):
                await session.close(CloseCode.GOING_AWAY, "server shutting down")
            await video.stop()
            await dispatcher.stop()
            await webhooks.stop()
            await engine.stop()
            await fetcher.aclose()
            keys_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keys_watch
            try:
                await usage.close()  # after the engine: the last results are counted
            except Exception:
                log.exception("could not write the last usage tallies")
            await close_stores()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        # AccessLog also sets x-fal-request-id on every response that lacks one.
        middleware=[
            Middleware(AccessLog, on_status=metrics.count_response),
            *(
                []
                if settings.auth
                else [
                    Middleware(
                        BrowserGuard, allowed_hosts=settings.allowed_hosts, allowed_origins=settings.allowed_origins
                    )
                ]
            ),
        ],
        exception_handlers={
            HTTPException: http_exception,
            StateUnavailable: store_unavailable,
            Exception: internal_error,
        },
    )
    return Gateway(app, state, dispatcher)
