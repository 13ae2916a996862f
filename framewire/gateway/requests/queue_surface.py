"""The queue surface (fal's ``queue.fal.run``, protocol §2): submit, status, status stream, result, cancel.

- ``POST /{id}[/{path}]`` (``?fal_webhook=``, ``?fal_max_queue_length=``, headers
  ``x-fal-queue-priority: normal|low``, ``x-fal-request-timeout: <s>``,
  ``Idempotency-Key: <key>``) → 200
  ``{status: IN_QUEUE, request_id, response_url, status_url, cancel_url, queue_position}``.
  A repeated ``Idempotency-Key`` (same key, same caller) answers with the first job as it
  is now (header ``Idempotent-Replayed: true``) and queues nothing; the same key for a
  different request is 422. fal's clients send no such key (they retry submits on
  transport errors, 429 and more); a caller that wants at-most-once submits passes one,
  e.g. ``fal_client.submit(..., headers={"Idempotency-Key": key})``.
- ``GET /{app}/requests/{id}/status[?logs=1]`` → 202 while queued/running, 200 when
  ``COMPLETED`` (failures carry ``error`` + ``error_type``).
- ``GET /{app}/requests/{id}/status/stream`` → SSE of status objects, ends after COMPLETED.
- ``GET /{app}/requests/{id}`` → the output as the app returned it (or the replayed error).
- ``PUT /{app}/requests/{id}/cancel`` → 202 ``CANCELLATION_REQUESTED`` / 400 ``ALREADY_COMPLETED``.

``{app}`` is ``[ns/]owner/alias`` without the sub-path; trailing slashes are accepted.
Every response carries ``x-fal-request-id`` (the job id where there is one).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from framewire.engine.api import Endpoint, EngineClient, split_app_id
from framewire.gateway import http
from framewire.gateway.db import StoreUnwritable
from framewire.gateway.http import base_url
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.metering import Meter
from framewire.gateway.requests import validation
from framewire.gateway.requests.addresses import refusal
from framewire.gateway.requests.dispatcher import Dispatcher
from framewire.gateway.requests.job_store import (
    CancelResult,
    IdempotencyConflict,
    Job,
    JobStatus,
    JobStore,
    LogEntry,
    NewJob,
    Priority,
    QueueFull,
    Snapshot,
)
from framewire.gateway.requests.outcomes import cancelled_outcome, outcome_response
from framewire.gateway.requests.surfaces import PING_S, Refused, admit, start_timeout_s
from framewire.gateway.requests.webhooks import WebhookDeliverer, webhook_body
from framewire.gateway.state import ServerState
from framewire.state.connection import StateUnavailable

_REQUEST_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)(?:/(?P<op>status/stream|status|cancel))?/?$")
#: The ``status`` a cancel answers with.
_CANCEL_STATUS = {
    CancelResult.ALREADY_COMPLETED: "ALREADY_COMPLETED",
    CancelResult.NOT_FOUND: "NOT_FOUND",
    CancelResult.REMOVED: "CANCELLATION_REQUESTED",
    CancelResult.SIGNALLED: "CANCELLATION_REQUESTED",
}
#: The methods of each request operation (``None``: the result).
_METHODS = {
    None: frozenset({"GET", "HEAD"}),
    "status": frozenset({"GET", "HEAD"}),
    "status/stream": frozenset({"GET"}),
    "cancel": frozenset({"PUT", "POST"}),
}
#: Longest a status stream waits for a change before looking again (queue positions move).
STATUS_POLL_S = 0.5
#: The longest Idempotency-Key accepted (printable ASCII).
MAX_IDEMPOTENCY_KEY = 255


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def _urls(base: str, job: Job) -> dict[str, str]:
    root = f"{base}/{job.app_path}/requests/{job.id}"
    return {"response_url": root, "status_url": root + "/status", "cancel_url": root + "/cancel"}


def _log_json(entry: LogEntry) -> dict[str, Any]:
    return {"message": entry.message, "level": entry.level, "source": "USER", "timestamp": _iso(entry.timestamp)}


def status_body(snap: Snapshot, base: str) -> dict[str, Any]:
    """The status object of §2.3 for a job."""
    job = snap.job
    body: dict[str, Any] = {"status": str(job.status), "request_id": job.id, **_urls(base, job)}
    logs = None if snap.logs is None else [_log_json(e) for e in snap.logs]
    if job.status == JobStatus.IN_QUEUE:
        body["queue_position"] = snap.position
        body["logs"] = logs
    elif job.status == JobStatus.IN_PROGRESS:
        body["logs"] = logs
    else:
        outcome = job.outcome
        assert outcome is not None
        body["logs"] = logs
        body["metrics"] = outcome.metrics or {}
        if outcome.error is not None:
            body["error"] = outcome.error
            body["error_type"] = outcome.error_type
    return body


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _with_id(response: Response, job_id: str) -> Response:
    response.headers[http.REQUEST_ID] = job_id
    return response


def _submit_options(request: Request, max_queue_length: int) -> tuple[Priority, float | None, str | None, int]:
    """Parse the platform headers and query of a submit; ValueError names the culprit."""
    raw_priority = request.headers.get("x-fal-queue-priority", "normal")
    if raw_priority not in ("normal", "low"):
        raise ValueError(f"x-fal-queue-priority must be 'normal' or 'low', got {raw_priority!r}")
    priority = Priority.LOW if raw_priority == "low" else Priority.NORMAL
    timeout_s = start_timeout_s(request)
    webhook = request.query_params.get("fal_webhook")
    if webhook is not None:
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"fal_webhook must be an http(s) URL, got {webhook!r}")
    limit = max_queue_length
    raw_limit = request.query_params.get("fal_max_queue_length")
    if raw_limit is not None:
        if not raw_limit.isdigit():
            raise ValueError(f"fal_max_queue_length must be a non-negative integer, got {raw_limit!r}")
        limit = min(limit, int(raw_limit))
    return priority, timeout_s, webhook, limit


def idempotency_key(request: Request) -> str | None:
    """The ``Idempotency-Key`` header (None without one); ValueError for one that is empty, too long or not ASCII."""
    raw = request.headers.get("idempotency-key")
    if raw is None:
        return None
    key = raw.strip().strip('"')
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isascii() or not key.isprintable():
        raise ValueError(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


def fingerprint(path: str, data: dict[str, Any], priority: Priority, webhook: str | None) -> str:
    """What a submit asks for, so a repeat of its Idempotency-Key can be told from another request."""
    canonical = json.dumps([path, data, int(priority), webhook], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _result(job: Job) -> Response:
    if job.status != JobStatus.COMPLETED or job.outcome is None:
        where = "in the queue" if job.status == JobStatus.IN_QUEUE else "in progress"
        return http.error(400, f"Request is still {where}", status=str(job.status))
    return outcome_response(job.outcome)


class QueueSurface:
    """The queue's HTTP side; see the module docstring. Jobs run in the :class:`Dispatcher`."""

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        meter: Meter,
        jobs: JobStore,
        dispatcher: Dispatcher,
        webhooks: WebhookDeliverer,
        state: ServerState,
        body: http.BodyLimits,
        *,
        max_queue_length: int,
        private_networks: bool,
    ) -> None:
        self.engine = engine
        self.body = body
        self.auth = auth
        self.meter = meter
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.webhooks = webhooks
        self.state = state
        self.max_queue_length = max_queue_length
        self.private_networks = private_networks

    def methods(self, path: str) -> frozenset[str]:
        """The methods the queue surface takes at ``path`` (none: nothing there)."""
        match = _REQUEST_PATH.match(path)
        if match is not None:
            return _METHODS[match["op"]]
        try:
            self.engine.registry.resolve(path.strip("/"))
        except (LookupError, ValueError):
            return frozenset()
        return frozenset({"POST"})

    async def handle(self, request: Request, path: str) -> Response:
        """Every request on the queue surface that is not a shared route."""
        match = _REQUEST_PATH.match(path)
        if match is not None:
            return await self.request_endpoint(request, match)
        if request.method == "POST":
            return await self.submit(request, path.strip("/"))
        return http.error(404, f"Path /{path} not found")

    def _principal(self, request: Request) -> Principal:
        return self.auth.request(request.headers, request.query_params.get("fal_jwt_token"))

    # -- submit ------------------------------------------------------------------------------

    async def submit(self, request: Request, path: str) -> Response:
        registry = self.engine.registry
        try:
            principal = self._principal(request)
            endpoint = registry.resolve(path)
            self.auth.check_app(principal, registry.names_of(endpoint.app))
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        except (LookupError, ValueError):
            return http.error(404, f"Path /{path} not found")
        try:
            await admit(self.engine, self.state, self.meter, principal, endpoint.app.app_id, "queue")
        except Refused as exc:
            return exc.response()
        try:
            priority, timeout_s, webhook, limit = _submit_options(request, self.max_queue_length)
            key = idempotency_key(request)
            data = await http.read_json(request, self.body)
            if not isinstance(data, dict):
                raise ValueError(f"body must be a JSON object (the app input), got {type(data).__name__}")
            # Only what the app's model knows is stored (and later fetched): unknown fields are dropped.
            checked = validation.from_json(endpoint.input_model, data)
            data = checked.model_dump(mode="json", exclude_unset=True, by_alias=True)
            refused = None if webhook is None or self.private_networks else await refusal(webhook)
            if refused is not None:
                raise ValueError(f"fal_webhook: {refused}")
        except http.BodyError as exc:
            return exc.response()
        except ValidationError as exc:
            return http.validation_error(exc)
        except ValueError as exc:
            return http.error(400, str(exc))
        try:
            body = await self.enqueue(
                principal,
                endpoint,
                path,
                data,
                base_url(request),
                priority=priority,
                timeout_s=timeout_s,
                webhook=webhook,
                max_queue_length=limit,
                idempotency_key=key,
            )
        except QueueFull as exc:
            return http.error(429, str(exc), error_type="queue_full")
        except IdempotencyConflict as exc:
            return http.error(422, str(exc), error_type="idempotency_conflict")
        except StoreUnwritable as exc:
            return http.error(
                503,
                f"{exc}; the job was not queued, retry later",
                error_type="store_unavailable",
                headers={"Retry-After": "5"},
            )
        headers = {"Idempotent-Replayed": "true"} if body.pop("replayed", False) else None
        return _with_id(JSONResponse(body, headers=headers), body["request_id"])

    async def enqueue(
        self,
        principal: Principal,
        endpoint: Endpoint,
        path: str,
        data: dict[str, Any],
        base: str,
        *,
        priority: Priority = Priority.NORMAL,
        timeout_s: float | None = None,
        webhook: str | None = None,
        max_queue_length: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a validated input for ``endpoint`` (reached at ``path``); returns the submit answer.

        ``base`` is the URL the job's status and result URLs start with. Raises
        :class:`QueueFull` past ``max_queue_length`` (default: the server's), and
        :class:`framewire.gateway.db.StoreUnwritable` when the store cannot be written. With an
        ``idempotency_key`` used before, answers with that job (``replayed`` true) or raises
        :class:`IdempotencyConflict`."""
        app_path, _, _ = split_app_id(path)
        now = time.time()
        new = NewJob(
            id=str(uuid.uuid4()),
            app_path=app_path,
            endpoint_path=path,
            app_key=endpoint.app.app_id,
            owner=principal.key_id,
            priority=priority,
            input=data,
            base_url=base,
            webhook_url=webhook,
            start_deadline=None if timeout_s is None else now + timeout_s,
            idempotency_key=idempotency_key,
            fingerprint="" if idempotency_key is None else fingerprint(path, data, priority, webhook),
        )
        limit = self.max_queue_length if max_queue_length is None else max_queue_length
        job, position = await self.jobs.submit(new, limit)
        replayed = job.id != new.id
        if not replayed:
            self.dispatcher.submitted(job.app_key, job.start_deadline)
        body: dict[str, Any] = {
            "status": str(job.status),
            "request_id": job.id,
            "gateway_request_id": job.id,
            **_urls(job.base_url, job),
        }
        if job.status == JobStatus.IN_QUEUE:
            body["queue_position"] = position
        if replayed:
            body["replayed"] = True
        return body

    # -- request-specific ----------------------------------------------------------------------

    async def find(
        self, principal: Principal, job_id: str, *, with_logs: bool, with_result: bool, app: str | None = None
    ) -> Snapshot | None:
        """The job ``job_id`` as ``principal`` may see it, or None.

        A job exists for its owner (and admin keys, and anyone when auth is off), and only
        while the caller may use its app; with ``app`` (``[ns/]owner/alias``, as in a
        request path) it must also be that app's job."""
        snap = await self.jobs.snapshot(job_id, with_logs, with_result)
        if snap is None:
            return None
        job = snap.job
        registry = self.engine.registry
        if app is not None:
            try:
                base, _, _ = split_app_id(app)
            except ValueError:
                return None
            asked = registry.get(base)
            if asked is None or asked.app_id != job.app_key:
                return None
        if self.auth.enabled and not principal.admin and principal.key_id != job.owner:
            return None  # other callers' requests do not exist for this one
        owner_app = registry.get(job.app_key)
        if owner_app is not None and not principal.may_use(registry.names_of(owner_app)):
            return None
        return snap

    async def _job_for(
        self, request: Request, app: str, job_id: str, with_logs: bool, with_result: bool
    ) -> Snapshot | Response:
        try:
            principal = self._principal(request)
        except AuthError as exc:
            return http.error(exc.status, exc.reason)
        snap = await self.find(principal, job_id, with_logs=with_logs, with_result=with_result, app=app)
        if snap is None:
            return http.error(404, f"Request {job_id!r} not found", status="NOT_FOUND")
        return snap

    async def request_endpoint(self, request: Request, match: re.Match[str]) -> Response:
        job_id, op = match["id"], match["op"]
        with_logs = _flag(request.query_params.get("logs")) and op in ("status", "status/stream")
        found = await self._job_for(request, match["app"], job_id, with_logs, with_result=op is None)
        if isinstance(found, Response):
            return found
        job = found.job
        if op == "status":
            code = 200 if job.status == JobStatus.COMPLETED else 202
            return _with_id(JSONResponse(status_body(found, base_url(request)), status_code=code), job.id)
        if op == "status/stream":
            return _with_id(self._status_stream(request, found, with_logs), job.id)
        if op == "cancel":
            return _with_id(await self._cancel(job), job.id)
        return _with_id(_result(job), job.id)

    async def _cancel(self, job: Job) -> Response:
        result = await self.cancel(job)
        if result == CancelResult.NOT_FOUND:  # purged since it was looked up
            return http.error(404, f"Request {job.id!r} not found", status="NOT_FOUND")
        code = 400 if result == CancelResult.ALREADY_COMPLETED else 202
        return JSONResponse({"status": _CANCEL_STATUS[result]}, status_code=code)

    async def cancel(self, job: Job) -> CancelResult:
        """Cancel a job: one still queued ends now as cancelled, one running is told to stop.

        Returns what was done; ``ALREADY_COMPLETED`` and ``NOT_FOUND`` changed nothing."""
        result = await self.jobs.request_cancel(job.id)
        if result in (CancelResult.ALREADY_COMPLETED, CancelResult.NOT_FOUND):
            return result
        if result == CancelResult.REMOVED:
            outcome = cancelled_outcome()
            body = webhook_body(job.id, outcome) if job.webhook_url else None
            if await self.jobs.complete(job.id, None, outcome, body):
                self.meter.request(job.owner, job.app_key, "queue", error_code=outcome.error_type)
                if body is not None:
                    self.webhooks.wake()
                self.dispatcher.events.notify(job.id)
                return result
        self.dispatcher.cancel(job.id)  # running (or claimed just now): stop waiting for it
        return result

    def _status_stream(self, request: Request, first: Snapshot, with_logs: bool) -> Response:
        base = base_url(request)
        job_id = first.job.id
        jobs, events_of, state = self.jobs, self.dispatcher.events, self.state

        async def events() -> AsyncIterator[dict[str, str]]:
            last = None
            snap: Snapshot | None = first
            while snap is not None:
                text = json.dumps(status_body(snap, base), separators=(",", ":"))
                if text != last:
                    last = text
                    yield {"data": text}
                if snap.job.status == JobStatus.COMPLETED:
                    return
                if state.queue_stopped:
                    return  # draining and the job stays queued: it runs after the restart, poll it then
                await events_of.wait(job_id, STATUS_POLL_S)
                try:
                    snap = await jobs.snapshot(job_id, with_logs, with_result=False)
                except StateUnavailable:
                    return  # the shared store is away: end the stream; the client polls or reconnects

        return EventSourceResponse(events(), ping=PING_S)
