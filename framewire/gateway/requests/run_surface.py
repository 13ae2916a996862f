"""The run surface (fal's ``fal.run``): sync run and SSE streaming (protocol §3, §4).

- ``POST /{id}[/{path}]`` with the input JSON → the output JSON directly (``GET`` with the
  input as query parameters also works, as fal's JS client can send it, for endpoints
  whose required fields fit a query string). With ``Accept: application/msgpack`` the
  output is msgpack instead, its bytes inline (files too, with ``sync_mode``).
- ``POST /{id}[/{path}]/stream`` → ``text/event-stream``: one ``data:`` JSON event per
  partial output the app reports (e.g. a preview per denoising step; when the client is
  slower than the app, older partials are dropped for newer ones), then one event with
  the final output, then the stream ends. Errors after the stream started arrive as an
  ``event: error`` whose data is the usual error body. Keep-alive comments every
  :data:`framewire.gateway.requests.surfaces.PING_S` seconds.

Sync runs go to the engine with priority 0: before queue jobs, after realtime frames.
``x-fal-request-timeout: <s>`` bounds the wait before a run starts: one still waiting then
is dropped and answered 504 with ``x-fal-request-timeout-type: user`` (on a stream, an
error event with the same body).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from framewire.engine.api import Endpoint, EngineClient, FrameResult, StartTimeout
from framewire.gateway import http
from framewire.gateway.http import base_url
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.origins import cross_site_refusal
from framewire.gateway.requests import validation
from framewire.gateway.requests.finaliser import OutputFinaliser, merge_timings
from framewire.gateway.requests.inputs import FetchError, InputFetcher
from framewire.gateway.requests.outcomes import EngineGone, outcome_response, run_outcome, timeout_outcome
from framewire.gateway.requests.surfaces import PING_S, Refused, admit, start_timeout_s
from framewire.gateway.state import ServerState

#: Partial outputs held for a slow SSE client; older ones are dropped first.
MAX_PENDING_PARTIALS = 4


class RunSurface:
    """Sync runs and SSE streams; see the module docstring."""

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        meter: Meter,
        fetcher: InputFetcher,
        finaliser: OutputFinaliser,
        state: ServerState,
        body: http.BodyLimits,
        cross_site_origins: tuple[str, ...] | None = None,
    ) -> None:
        self.engine = engine
        self.body = body
        # Origins allowed to start a GET run from a page (None: not checked, auth is on).
        self.cross_site_origins = cross_site_origins
        self.auth = auth
        self.meter = meter
        self.fetcher = fetcher
        self.finaliser = finaliser
        self.state = state

    def _resolve(self, path: str) -> tuple[Endpoint, bool] | None:
        """(endpoint, streaming) for a run-surface path, or None."""
        registry = self.engine.registry
        if path == "stream" or path.endswith("/stream"):
            try:
                return registry.resolve(path.removesuffix("stream").rstrip("/")), True
            except (LookupError, ValueError):
                pass
        try:
            return registry.resolve(path), False
        except (LookupError, ValueError):
            return None

    def methods(self, path: str) -> frozenset[str]:
        """The methods the run surface takes at ``path`` (none: no app there).

        POST runs; GET runs too where every required field fits a query string."""
        found = self._resolve(path.strip("/"))
        if found is None:
            return frozenset()
        endpoint, streaming = found
        if streaming or validation.query_fields(endpoint.input_model) is None:
            return frozenset({"POST"})
        return frozenset({"GET", "POST"})

    async def handle(self, request: Request, path: str) -> Response | None:
        """Answer a run-surface request; None when no app is at ``path`` (caller decides)."""
        path = path.strip("/")
        found = self._resolve(path)
        if found is None:
            return None
        endpoint, streaming = found
        try:
            principal = self.auth.request(request.headers, request.query_params.get("fal_jwt_token"))
            self.auth.check_app(principal, self.engine.registry.names_of(endpoint.app))
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        if request.method == "GET" and self.cross_site_origins is not None:
            refused = cross_site_refusal(request.headers, self.cross_site_origins)
            if refused is not None:
                return http.error(403, refused, error_type="forbidden_origin")
        surface = "stream" if streaming else "run"
        try:
            await admit(self.engine, self.state, self.meter, principal, endpoint.app.app_id, surface)
        except Refused as exc:
            return exc.response()
        started = time.perf_counter()
        base = base_url(request)
        query = request.method == "GET"
        try:
            timeout_s = start_timeout_s(request)
            data: Any = dict(request.query_params) if query else await http.read_json(request, self.body)
            inp = await self.prepare(principal, endpoint, data, base, surface, query=query)
        except http.BodyError as exc:
            self.meter.request(principal.key_id, endpoint.app.app_id, surface, error_code=exc.error_type)
            return exc.response()
        except ValidationError as exc:
            return http.validation_error(exc, "query" if query else "body")
        except FetchError as exc:
            return http.error(422, exc.detail(), error_type=exc.error_type)
        except ValueError as exc:
            self.meter.request(principal.key_id, endpoint.app.app_id, surface, error_code="bad_request")
            return http.error(400, str(exc))
        if streaming:
            return self._stream(endpoint, inp, base, principal, started, timeout_s)
        run = asyncio.ensure_future(
            self.execute(principal, endpoint, inp, surface=surface, timeout_s=timeout_s, started=started)
        )
        try:
            result = await http.unless_disconnected(request, run)
        except http.ClientGone:  # the client left: the engine drops the request or its handler stops early
            return http.error(499, "the client closed the request", error_type="request_cancelled")
        except StartTimeout as exc:
            return outcome_response(timeout_outcome(exc.timeout_s))
        return await self._respond(result, inp, base, http.prefers_msgpack(request.headers.get("accept")))

    async def prepare(
        self, principal: Principal, endpoint: Endpoint, data: Any, base: str, surface: str, *, query: bool = False
    ) -> BaseModel:
        """The validated input for ``data`` (a JSON body, or with ``query`` a query string's
        values), with its ``*_url`` fields fetched; see :mod:`framewire.gateway.requests.validation`.

        Unknown fields are dropped before anything is fetched. Raises ``ValidationError`` or
        :class:`FetchError` (both recorded in usage), or ``ValueError`` when ``data`` is not
        a JSON object (recorded by the caller, which also refuses other malformed requests
        that way)."""
        if not isinstance(data, dict):
            raise ValueError(f"body must be a JSON object (the app input), got {type(data).__name__}")
        app_id = endpoint.app.app_id
        model = endpoint.input_model
        try:
            if query:
                data = validation.query_values(model, data)
                checked = model.model_validate(data)
            else:
                checked = validation.from_json(model, data)
            # Only what the model knows goes on (and is fetched): unknown fields are dropped.
            data = checked.model_dump(mode="json", exclude_unset=True, by_alias=True)
            data = await self.fetcher.resolve(data, model, base)
            return model.model_validate(data)
        except ValidationError:
            self.meter.request(principal.key_id, app_id, surface, error_code="validation_error")
            raise
        except FetchError as exc:
            self.meter.request(principal.key_id, app_id, surface, error_code=exc.error_type)
            raise

    async def execute(
        self,
        principal: Principal,
        endpoint: Endpoint,
        inp: BaseModel,
        *,
        surface: str,
        timeout_s: float | None,
        started: float,
    ) -> FrameResult:
        """Run one input ahead of queue jobs and record its usage (``started`` is ``perf_counter``).

        Raises :class:`StartTimeout` when it did not start within ``timeout_s``; cancelling
        it (the caller went away) drops a request still queued or tells its handler to stop.
        Both are recorded."""
        app_id = endpoint.app.app_id
        try:
            result = await self.engine.call(endpoint, inp, priority=0, start_timeout_s=timeout_s)
        except asyncio.CancelledError:  # the caller left
            self.meter.request(principal.key_id, app_id, surface, error_code="request_cancelled")
            raise
        except StartTimeout:
            self.meter.request(principal.key_id, app_id, surface, error_code="request_timeout")
            raise
        self.meter.result(principal, app_id, surface, result, started)
        return result

    async def _respond(self, result: FrameResult, inp: BaseModel, base: str, msgpack: bool) -> Response:
        """The answer to a run; with ``msgpack`` an output is msgpack (errors stay JSON)."""
        if msgpack and result.output is not None:
            output = merge_timings(result.output.model_dump(), result)
            sync_mode = bool(getattr(inp, "sync_mode", False))
            body = await self.finaliser.to_msgpack(output, sync_mode=sync_mode, base_url=base)
            return Response(body, media_type=http.MSGPACK)
        try:
            outcome = await run_outcome(result, inp, self.finaliser, base)
        except EngineGone as exc:
            return http.error(503, exc.args[0], error_type="engine_unavailable")
        return outcome_response(outcome)

    def _stream(
        self,
        endpoint: Endpoint,
        inp: BaseModel,
        base: str,
        principal: Principal,
        started: float,
        timeout_s: float | None,
    ) -> Response:
        sync_mode = bool(getattr(inp, "sync_mode", False))
        app_id = endpoint.app.app_id
        engine, finaliser, meter = self.engine, self.finaliser, self.meter

        async def events() -> AsyncIterator[dict[str, str]]:
            partials: deque[BaseModel] = deque(maxlen=MAX_PENDING_PARTIALS)
            wake = asyncio.Event()

            def on_progress(partial: BaseModel) -> None:
                partials.append(partial)
                wake.set()

            call = asyncio.create_task(
                engine.call(endpoint, inp, priority=0, on_progress=on_progress, start_timeout_s=timeout_s)
            )
            call.add_done_callback(lambda _: wake.set())
            try:
                while True:
                    await wake.wait()
                    wake.clear()
                    while partials:
                        partial = partials.popleft()
                        body = await finaliser.to_json(partial.model_dump(), sync_mode=sync_mode, base_url=base)
                        yield {"data": _dumps(body)}
                    if call.done():
                        break
                try:
                    result = call.result()
                except StartTimeout as exc:
                    meter.request(principal.key_id, app_id, "stream", error_code="request_timeout")
                    yield {"event": "error", "data": _dumps(timeout_outcome(exc.timeout_s).body)}
                    return
                meter.result(principal, app_id, "stream", result, started)
                try:
                    outcome = await run_outcome(result, inp, finaliser, base)
                except EngineGone as exc:
                    yield {
                        "event": "error",
                        "data": _dumps({"detail": exc.args[0], "error_type": "engine_unavailable"}),
                    }
                    return
                if outcome.ok:
                    yield {"data": _dumps(outcome.body)}
                else:
                    yield {"event": "error", "data": _dumps(outcome.body)}
            finally:
                if not call.done():
                    call.cancel()  # the client left: drop the queued request or tell the handler
                    meter.request(principal.key_id, app_id, "stream", error_code="request_cancelled")

        return EventSourceResponse(events(), ping=PING_S)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
