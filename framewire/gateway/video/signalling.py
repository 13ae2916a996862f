"""``POST /{owner}/{alias}[/{path}]/start-session``: a live video session, signalled as fal's WMA.

Request: JSON (``Content-Type: application/json``; at most
:data:`framewire.gateway.video.offer.MAX_BODY_BYTES` or ``--max-body-bytes`` if smaller,
within ``--max-input-items`` and ``--read-timeout-s``, read by
:func:`framewire.gateway.http.read_json`), either of
fal's shapes (:mod:`framewire.gateway.video.offer`): the client's complete SDP offer (a
sendrecv video track, optionally a data channel) and the session's parameters. Auth as
on every surface: ``Authorization: Key …`` / ``Bearer <token>`` or ``?fal_jwt_token=``,
the app in the credentials' scope; the start counts against the key's requests/s, the
session against its open sessions; ``?target_latency_ms=`` sets the session's latency target.

Answer: ``text/event-stream``. The first event is ``{"type": "answer", "sdp", "session_id",
"video_codec"}``; the response then stays open for the session's life with a keep-alive
comment every :data:`KEEPALIVE_S` seconds, and ends after a last event ``{"type": "end",
"reason", "frames_in", "frames_out", "frames_dropped", "errors", "seconds"}``. Closing the
request ends the session; so does closing the peer connection.

Refusals, before any stream, in fal's error shape: 400 for a body or offer that cannot
start a session (``invalid_offer``), 401/403 for credentials, 404 for an app that takes no
video (``video_not_supported``), 422 for session parameters that fail the endpoint's model,
413 for a body over the limit, 429 for a key at its limits, 503 while the engine is not
ready, the server drains, or ``--max-video-sessions`` are open.

Media: the server's WebRTC stack (aiortc) answers with the first codec of the offer it
supports (VP8 or H.264) and encodes the outputs with it: VP8 as constant bitrate starting
at 500 kbit/s, H.264 at 1 Mbit/s, each following the receiver's bandwidth estimate (REMB)
within aiortc's bounds (VP8 0.25-1.5 Mbit/s, H.264 0.5-3 Mbit/s), with a key frame when
the receiver asks (PLI/FIR). ICE candidates come from every interface, plus the
``--ice-server`` STUN/TURN servers (none needed on loopback or a LAN).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from framewire.engine.api import Endpoint, EngineClient, split_app_id
from framewire.gateway import http
from framewire.gateway.platform.auth import Authenticator, AuthError
from framewire.gateway.platform.limits import Limiter, SessionSlot
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.metrics import Metrics
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import ProtocolError
from framewire.gateway.requests.surfaces import Refused, admit
from framewire.gateway.state import ServerState
from framewire.gateway.video.offer import (
    MAX_BODY_BYTES,
    OfferError,
    StartSession,
    check_offer,
    parse_body,
    video_codec,
)
from framewire.gateway.video.session import VideoSession

log = logging.getLogger("framewire.video")

#: Seconds between keep-alive comments while a session's request is held open.
KEEPALIVE_S = 15
#: Longest wait for the answer (ICE gathering), seconds.
ANSWER_TIMEOUT_S = 15.0
#: Threads converting camera frames (scale + YUV to RGB, without the GIL).
CONVERT_THREADS = 2


class VideoRoutes:
    """The live video wing; see the module docstring."""

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        limiter: Limiter,
        meter: Meter,
        metrics: Metrics,
        state: ServerState,
        body: http.BodyLimits,
        *,
        ice: RTCConfiguration,
        max_sessions: int,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.limiter = limiter
        self.meter = meter
        self.metrics = metrics
        self.state = state
        # The server's body rules (read timeout, JSON structure budget), at most an offer's size.
        self.body = dataclasses.replace(body, max_bytes=min(body.max_bytes, MAX_BODY_BYTES))
        self.ice = ice
        self.max_sessions = max_sessions
        self.sessions: set[VideoSession] = set()
        self._converter = ThreadPoolExecutor(CONVERT_THREADS, thread_name_prefix="video-convert")
        self._running: set[asyncio.Task[None]] = set()

    def routes(self) -> list[BaseRoute]:
        return [Route("/{app_path:path}/start-session", self.start, methods=["POST"])]

    async def stop(self, timeout_s: float = 5.0) -> None:
        """End every session, wait for them to clean up (bounded), stop the converter threads."""
        for session in list(self.sessions):
            session.end("the server is shutting down")
        if self._running:
            await asyncio.wait(list(self._running), timeout=timeout_s)
        self._converter.shutdown(wait=False, cancel_futures=True)

    # -- the request -----------------------------------------------------------------------------

    def _endpoint(self, app_path: str) -> Endpoint | Response:
        registry = self.engine.registry
        try:
            return registry.resolve_video(app_path)
        except ValueError as exc:
            return http.error(404, str(exc), error_type="not_found")
        except LookupError as exc:
            known = registry.get(split_app_id(app_path)[0]) is not None
            return http.error(404, exc.args[0], error_type="video_not_supported" if known else "not_found")

    async def start(self, request: Request) -> Response:
        found = self._endpoint(request.path_params["app_path"].strip("/"))
        if isinstance(found, Response):
            return found
        endpoint = found
        app_id = endpoint.app.app_id
        try:
            principal = self.auth.request(request.headers, request.query_params.get("fal_jwt_token"))
            self.auth.check_app(principal, self.engine.registry.names_of(endpoint.app))
        except AuthError as exc:
            return http.error(exc.status, exc.reason, error_type=exc.code.lower())
        try:
            await admit(self.engine, self.state, self.meter, principal, app_id, "video")
        except Refused as exc:
            return exc.response()
        try:
            target_ms = protocol.parse_target_latency_ms(request.query_params.get("target_latency_ms"))
            raw = await http.read_json(request, self.body, flag="start-session bodies hold an SDP offer of a few kB")
            body = parse_body(raw)
            offer = body.description()
            check_offer(offer.sdp)
        except http.BodyError as exc:
            return exc.response()
        except ProtocolError as exc:
            return http.error(400, exc.reason, error_type="invalid_query")
        except ValidationError as exc:
            return http.error(400, protocol.validation_reason(exc), error_type="invalid_offer")
        except ValueError as exc:  # OfferError, or a body that is not JSON
            return http.error(400, str(exc), error_type="invalid_offer")
        if len(self.sessions) >= self.max_sessions:
            detail = f"the server has its maximum of {self.max_sessions} video sessions open; retry later"
            return http.error(503, detail, error_type="too_many_sessions", headers={"Retry-After": "5"})
        slot = await self.limiter.enter_session(principal)
        if slot is None:
            self.metrics.rate_limited.labels("sessions").inc()
            limit = principal.limits.max_sessions
            detail = f"this key may have {limit} sessions open at once; close one first"
            return http.error(429, detail, error_type="too_many_sessions")
        try:
            return await self._open(request, slot, endpoint, body.session_params, offer.sdp, body, target_ms)
        except BaseException:
            await self.limiter.leave_session(slot)
            raise

    async def _open(
        self,
        request: Request,
        slot: SessionSlot,
        endpoint: Endpoint,
        params: dict[str, Any],
        sdp: str,
        body: StartSession,
        target_ms: float | None,
    ) -> Response:
        """Answer the offer and start the session (the caller holds the key's session ``slot``)."""
        principal = slot.principal
        session_id = body.session_id or uuid.uuid4().hex
        pc = RTCPeerConnection(configuration=self.ice)
        meter = self.meter.session(principal, endpoint.app.app_id, "video")
        try:
            session = VideoSession(
                pc,
                endpoint,
                self.engine,
                params=params,
                meter=meter,
                converter=self._converter,
                session_id=session_id,
                budget=self.body.budget,
                target_latency_ms=target_ms,
            )
        except ValidationError as exc:
            await pc.close()
            await self.limiter.leave_session(slot)
            return http.validation_error(exc)
        except ValueError as exc:
            await pc.close()
            await self.limiter.leave_session(slot)
            return http.error(422, str(exc), error_type="validation_error")
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                answer = await self._answer(pc, session, sdp)
        except (OfferError, TimeoutError) as exc:
            await pc.close()
            await self.limiter.leave_session(slot)
            reason = str(exc) or f"no answer within {ANSWER_TIMEOUT_S:g} s (ICE gathering)"
            return http.error(400, reason, error_type="invalid_offer")
        task = asyncio.create_task(self._serve(session, slot), name=f"video-{session_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        log.info("video session %s opened: %s by key %s (%s)", session_id, endpoint.key, principal.key_id, answer[1])
        first = {"type": "answer", "sdp": answer[0], "session_id": session_id, "video_codec": answer[1]}
        return EventSourceResponse(
            self._events(session, task, first), ping=KEEPALIVE_S, headers={http.REQUEST_ID: session_id}
        )

    async def _answer(self, pc: RTCPeerConnection, session: VideoSession, sdp: str) -> tuple[str, str]:
        """Apply the offer, send the outputs on its video track, answer: (answer SDP, video codec)."""
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:  # aiortc raises assorted types for offers it cannot use
            raise OfferError(f"the offer could not be applied ({type(exc).__name__}: {exc})") from None
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video":
                transceiver.direction = "inactive"  # audio is not taken: never decoded, never queued
        pc.addTrack(session.output)
        await pc.setLocalDescription(await pc.createAnswer())
        local = pc.localDescription
        return local.sdp, video_codec(local.sdp)

    async def _events(
        self, session: VideoSession, task: asyncio.Task[None], first: dict[str, Any]
    ) -> AsyncIterator[dict[str, str]]:
        """The session's event stream; leaving it (the client closed the request) ends the session."""
        try:
            yield {"data": _dumps(first)}
            await asyncio.shield(task)
            stats = session.stats
            yield {
                "data": _dumps(
                    {
                        "type": "end",
                        "reason": session.end_reason,
                        "frames_in": stats.frames_in,
                        "frames_out": stats.frames_out,
                        "frames_dropped": stats.frames_dropped,
                        "errors": stats.errors,
                        "seconds": round(time.monotonic() - session.started_s, 3),
                    }
                )
            }
        finally:
            session.end("the client closed the signalling request")  # no await here: cancellation may be pending

    async def _serve(self, session: VideoSession, slot: SessionSlot) -> None:
        app_id = session.endpoint.app.app_id
        self.sessions.add(session)
        self.state.sessions.add(session)
        gauge = self.metrics.video_sessions_open.labels(app_id)
        gauge.inc()
        self.metrics.sessions_opened.labels(app_id).inc()
        try:
            reason = await session.run()
        except Exception:
            log.exception("video session %s failed", session.session_id)
            reason = "the session failed"
        finally:
            self.sessions.discard(session)
            self.state.sessions.discard(session)
            gauge.dec()
            await self.limiter.leave_session(slot)
        s = session.stats
        log.info(
            "video session %s closed (%s): in=%d out=%d dropped=%d errors=%d",
            session.session_id,
            reason,
            s.frames_in,
            s.frames_out,
            s.frames_dropped,
            s.errors,
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
