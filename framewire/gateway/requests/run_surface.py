"""The run surface (fal's ``fal.run``): sync run and SSE streaming (protocol §3, §4).

- ``POST /{id}[/{path}]`` with the input JSON → the output JSON directly (``GET`` with the
  input as query parameters also works, as fal's JS client can send it).
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
from framewire.gateway.requests.finaliser import OutputFinaliser
from framewire.gateway.requests.inputs import FetchError, InputFetcher
from framewire.gateway.requests.outcomes import EngineGone, outcome_response, run_outcome, timeout_outcome
from framewire.gateway.requests.surfaces import PING_S, not_ready, start_timeout_s
from framewire.gateway.state import ServerState

#: Partial outputs held for a slow SSE client; older ones are dropped first.
MAX_PENDING_PARTIALS = 4
_RESERVED_QUERY = ("fal_jwt_token",)


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

    async def handle(self, request: Request, path: str) -> Response | None:
        """Answer a run-surface request; None when no app is at ``path`` (caller decides)."""
        path = path.strip("/")
        found = self._resolve(path)
        if found is None:
            return None
        endpoint, streaming = found
        meter = self.meter
        try:
            principal = self.auth.request(request.headers, request.query_params.get("fal_jwt_token"))
            self.auth.check_app(principal, self.engine.registry.names_of(endpoint.app))
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        if request.method == "GET" and self.cross_site_origins is not None:
            refused = cross_site_refusal(request.headers, self.cross_site_origins)
            if refused is not None:
                return http.error(403, refused, error_type="forbidden_origin")
        if self.state.draining or not self.engine.ready:
            return not_ready()
        app_id, surface = endpoint.app.app_id, "stream" if streaming else "run"
        wait_s = meter.rate_limited(principal, app_id, surface)
        if wait_s is not None:
            return http.rate_limited(principal.limits.requests_per_s, wait_s)
        started = time.perf_counter()
        base = base_url(request)
        try:
            timeout_s = start_timeout_s(request)
            if request.method == "GET":
                data: Any = {k: v for k, v in request.query_params.items() if k not in _RESERVED_QUERY}
            else:
                data = await http.read_json(request, self.body)
            if not isinstance(data, dict):
                raise ValueError(f"body must be a JSON object (the app input), got {type(data).__name__}")
            # Fail before fetching anything; fetch only what the app's model knows.
            data = endpoint.input_model.model_validate(data).model_dump(mode="json", exclude_unset=True, by_alias=True)
            data = await self.fetcher.resolve(data, endpoint.input_model, base)
            inp = endpoint.input_model.model_validate(data)
        except http.BodyError as exc:
            meter.request(principal.key_id, app_id, surface, error_code=exc.error_type)
            return exc.response()
        except ValidationError as exc:
            meter.request(principal.key_id, app_id, surface, error_code="validation_error")
            return http.validation_error(exc)
        except FetchError as exc:
            meter.request(principal.key_id, app_id, surface, error_code=exc.error_type)
            return http.error(422, exc.detail(), error_type=exc.error_type)
        except ValueError as exc:
            meter.request(principal.key_id, app_id, surface, error_code="bad_request")
            return http.error(400, str(exc))
        if streaming:
            return self._stream(endpoint, inp, base, principal, started, timeout_s)
        call = asyncio.ensure_future(self.engine.call(endpoint, inp, priority=0, start_timeout_s=timeout_s))
        try:
            result = await http.unless_disconnected(request, call)
        except http.ClientGone:  # the client left: the engine drops the request or its handler stops early
            meter.request(principal.key_id, app_id, surface, error_code="request_cancelled")
            return http.error(499, "the client closed the request", error_type="request_cancelled")
        except asyncio.CancelledError:
            meter.request(principal.key_id, app_id, surface, error_code="request_cancelled")
            raise
        except StartTimeout as exc:
            meter.request(principal.key_id, app_id, surface, error_code="request_timeout")
            return outcome_response(timeout_outcome(exc.timeout_s))
        meter.result(principal, app_id, surface, result, started)
        return await self._respond(result, inp, base)

    async def _respond(self, result: FrameResult, inp: BaseModel, base: str) -> Response:
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
