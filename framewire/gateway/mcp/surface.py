"""``/mcp``: the Model Context Protocol over Streamable HTTP, on the main port.

Built on the official SDK's low-level server and its streamable-HTTP session manager, in
stateless mode with JSON answers: every POST stands alone, so any edge behind a load
balancer can answer it and nothing is held between calls; a GET (a standalone event
stream) or DELETE (ending a session) is answered 405. Both protocol eras the SDK serves
work (the ``initialize`` handshake, and 2026-07-28's self-contained requests).

Who may call: the same keys as every other surface, as ``Authorization: Key <id>:<secret>``
or in the MCP spec's bearer form, ``Authorization: Bearer <id>:<secret>`` (a token from
``POST /tokens/`` works too). With auth on, a request without valid credentials is refused
with 401 before it reaches the protocol. A browser's ``Origin`` must be a loopback origin
or listed in ``--allowed-origin`` (a same-host rule would not stop DNS rebinding);
clients that send no ``Origin`` are not browsers and pass.

What a caller gets: the tools of :mod:`~framewire.gateway.mcp.tools` for the apps its key
may use, and one guide resource per such app (:mod:`~framewire.gateway.mcp.guide`). The
tools run on the run, queue and storage cores, so admission (ready, per-key requests/s),
input validation, ``*_url`` fetching, usage (surface ``run`` or ``queue``) and job
ownership are exactly theirs. Bad input, refusals and app errors are tool errors
(``isError``, naming the field); a tool the key may not see is an unknown tool.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections.abc import AsyncIterator
from mimetypes import guess_type
from typing import Any
from urllib.parse import urlsplit

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS
from pydantic import ValidationError
from starlette.requests import HTTPConnection, Request
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

from framewire.engine.api import Endpoint, EngineClient
from framewire.gateway import http
from framewire.gateway.mcp import content
from framewire.gateway.mcp.guide import URI_PREFIX, guide, uri_of
from framewire.gateway.mcp.tools import (
    GENERAL_BY_NAME,
    Action,
    AppArgs,
    RequestArgs,
    StatusArgs,
    ToolBook,
    UploadArgs,
)
from framewire.gateway.platform.auth import Authenticator, AuthError, Principal
from framewire.gateway.platform.catalog import (
    DescribeError,
    cached_document,
    describe,
    endpoint_schemas,
    find_app,
    visible_apps,
)
from framewire.gateway.platform.metering import Meter
from framewire.gateway.platform.openapi import VERSION
from framewire.gateway.requests import validation
from framewire.gateway.requests.finaliser import OutputFinaliser, sniff_content_type
from framewire.gateway.requests.inputs import FetchError
from framewire.gateway.requests.job_store import CancelResult, JobStatus, QueueFull, Snapshot
from framewire.gateway.requests.outcomes import EngineGone, Outcome, run_outcome
from framewire.gateway.requests.queue_surface import QueueSurface, status_body
from framewire.gateway.requests.run_surface import RunSurface
from framewire.gateway.requests.surfaces import NotReady, Refused, admit
from framewire.gateway.state import ServerState
from framewire.gateway.storage.store import FileStore, FileTooLarge

PATH = "/mcp"
#: The MCP error code for a resource that does not exist (the spec's choice).
RESOURCE_NOT_FOUND = -32002
_PRINCIPAL = "framewire.principal"
_LOOPBACK = ("localhost", "127.0.0.1", "::1")

INSTRUCTIONS = (
    "FrameWire runs generative media apps (image generation and more). list_apps shows them; each endpoint "
    "has a run_ tool (runs and waits; images come back as images and URLs) and a submit_ tool (queues; follow "
    "with get_status, get_result, cancel_request). describe_app gives an app's full input and output schema. "
    "To pass a local file to an input ending in _url, upload it with upload_file and use the URL it returns."
)

Context = ServerRequestContext[Any, Any]


class McpSurface:
    """The MCP server at :data:`PATH`; see the module docstring.

    :meth:`running` must be entered (by the lifespan) while the app serves."""

    def __init__(
        self,
        engine: EngineClient,
        auth: Authenticator,
        meter: Meter,
        run: RunSurface,
        queue: QueueSurface,
        finaliser: OutputFinaliser,
        files: FileStore,
        state: ServerState,
        *,
        allowed_origins: tuple[str, ...],
        body: http.BodyLimits,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.meter = meter
        self.run = run
        self.queue = queue
        self.finaliser = finaliser
        self.files = files
        self.state = state
        self.allowed_origins = allowed_origins
        self.body = body
        self._book: ToolBook | None = None
        self.server: Server[Any] = Server(
            "framewire",
            version=VERSION,
            title="FrameWire",
            instructions=INSTRUCTIONS,
            # For checking 2026-07-28 Mcp-Param headers: a schema lookup, not a tools/list per call.
            get_tool_input_schema=lambda name: self.book.input_schema(name),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            on_list_resources=self._list_resources,
            on_read_resource=self._read_resource,
        )
        # JSON answers, not event streams: no tool sends notifications before its result, and a
        # streamed answer would be cut when the server stops after a drain (sse-starlette ends
        # every event stream then), losing the result of a call that finished in the drain.
        self.manager = StreamableHTTPSessionManager(
            self.server,
            stateless=True,
            json_response=True,
            security_settings=None,
            max_request_body_size=body.max_bytes,
        )
        self._running = False

    def routes(self) -> list[BaseRoute]:
        return [Route(PATH, self)]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the session manager's task group (requests before or after it are answered 503)."""
        async with self.manager.run():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    @property
    def book(self) -> ToolBook:
        """The tools of the engine's apps, named once per set of apps."""
        registry = self.engine.registry
        if self._book is None or self._book.registry is not registry or self._book.size != len(registry):
            self._book = ToolBook(registry)
        return self._book

    # -- HTTP: who is calling ------------------------------------------------------------------

    def origin_allowed(self, origin: str | None) -> bool:
        """No ``Origin`` (not a browser), a loopback origin, or one listed in ``--allowed-origin``."""
        if origin is None or "*" in self.allowed_origins or origin in self.allowed_origins:
            return True
        return urlsplit(origin).hostname in _LOOPBACK

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        origin = conn.headers.get("origin")
        if not self.origin_allowed(origin):
            detail = f"Origin {origin!r} may not use {PATH}; list it with --allowed-origin"
            await http.error(403, detail)(scope, receive, send)
            return
        try:
            if self.auth.enabled and not conn.headers.get("authorization"):
                raise AuthError(
                    401, "missing credentials: send 'Authorization: Key <id>:<secret>' (or Bearer <id>:<secret>)"
                )
            principal = self.auth.request(conn.headers, bearer_keys=True)
        except AuthError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="framewire"'} if exc.status == 401 else None
            await http.error(exc.status, exc.reason, headers=headers)(scope, receive, send)
            return
        if scope["method"] != "POST":
            # Stateless: nothing is pushed outside a request's own stream, and there is no
            # session to end, so GET (a standalone stream) and DELETE are not offered (the spec's 405).
            await http.error(405, f"{PATH} takes POST only", headers={"Allow": "POST"})(scope, receive, send)
            return
        if not self._running:
            await NotReady().response()(scope, receive, send)
            return
        try:
            # The same limits as every JSON route, enforced before the SDK sees a byte.
            raw = await http.read_json_bytes(Request(scope, receive), self.body)
        except http.BodyError as exc:
            await exc.response()(scope, receive, send)
            return
        scope = {**scope, "state": {**scope.get("state", {}), _PRINCIPAL: principal}}
        await self.manager.handle_request(scope, _replay(raw, receive), send)

    @staticmethod
    def _caller(ctx: Context) -> tuple[Principal, str]:
        """The principal :meth:`__call__` authenticated, and the base URL the client used."""
        request = ctx.request
        if not isinstance(request, Request):
            raise MCPError(INTERNAL_ERROR, "the MCP server is reached only over HTTP")
        principal = request.scope.get("state", {}).get(_PRINCIPAL)
        if not isinstance(principal, Principal):
            raise MCPError(INTERNAL_ERROR, "the request reached the MCP server without credentials")
        return principal, http.base_url(request)

    # -- tools -----------------------------------------------------------------------------------

    async def _list_tools(self, ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        principal, _ = self._caller(ctx)
        return types.ListToolsResult(tools=self.book.definitions(principal))

    async def _call_tool(self, ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        principal, base = self._caller(ctx)
        name, arguments = params.name, params.arguments or {}
        app_tool = self.book.get(name)
        if app_tool is not None and self.book.visible(app_tool, principal):
            if app_tool.action == Action.RUN:
                return await self._run(principal, app_tool.endpoint, arguments, base, name)
            return await self._submit(principal, app_tool.endpoint, arguments, base, name)
        general = GENERAL_BY_NAME.get(name)
        if general is None:
            raise MCPError(INVALID_PARAMS, f"Unknown tool: {name}")
        try:
            args = general.args.model_validate(arguments)
        except ValidationError as exc:
            return content.invalid(exc, name)
        if name == "list_apps":
            return self._list_apps(principal)
        if name == "describe_app":
            assert isinstance(args, AppArgs)
            return await self._describe_app(principal, args.app_id)
        if name == "get_status":
            assert isinstance(args, StatusArgs)
            return await self._status(principal, args, base)
        if name == "get_result":
            assert isinstance(args, RequestArgs)
            return await self._result(principal, args.request_id)
        if name == "cancel_request":
            assert isinstance(args, RequestArgs)
            return await self._cancel(principal, args.request_id)
        assert isinstance(args, UploadArgs)
        return await self._upload(args, base)

    async def _refusal(self, principal: Principal, endpoint: Endpoint, surface: str) -> types.CallToolResult | None:
        """The tool error when work may not start now (:func:`admit`), else None (and the key is charged)."""
        try:
            await admit(self.engine, self.state, self.meter, principal, endpoint.app.app_id, surface)
        except Refused as exc:
            return content.error(str(exc), exc.error_type)
        return None

    async def _run(
        self, principal: Principal, endpoint: Endpoint, arguments: dict[str, Any], base: str, name: str
    ) -> types.CallToolResult:
        refused = await self._refusal(principal, endpoint, "run")
        if refused is not None:
            return refused
        started = time.perf_counter()
        try:
            inp = await self.run.prepare(principal, endpoint, arguments, base, "run")
        except ValidationError as exc:
            return content.invalid(exc, name)
        except FetchError as exc:
            return content.error(exc.detail(), exc.error_type, f"Could not fetch an input of {name}: ")
        result = await self.run.execute(principal, endpoint, inp, surface="run", timeout_s=None, started=started)
        try:
            outcome = await run_outcome(result, inp, self.finaliser, base)
        except EngineGone as exc:
            return content.error(exc.args[0], "engine_unavailable")
        return await self._outcome(outcome)

    async def _outcome(self, outcome: Outcome) -> types.CallToolResult:
        if outcome.ok:
            return await content.output_result(outcome.body, self.files)
        body = outcome.body if isinstance(outcome.body, dict) else {"detail": outcome.error}
        return content.error_result({"error_type": outcome.error_type, **body})

    async def _submit(
        self, principal: Principal, endpoint: Endpoint, arguments: dict[str, Any], base: str, name: str
    ) -> types.CallToolResult:
        refused = await self._refusal(principal, endpoint, "queue")
        if refused is not None:
            return refused
        try:
            validation.from_json(endpoint.input_model, arguments)
        except ValidationError as exc:
            return content.invalid(exc, name)
        try:
            body = await self.queue.enqueue(principal, endpoint, endpoint.key, arguments, base)
        except QueueFull as exc:
            return content.error(str(exc), "queue_full")
        note = f"Queued as {body['request_id']}: follow it with get_status, then fetch the output with get_result."
        return content.json_result(body, note)

    async def _job(
        self, principal: Principal, request_id: str, *, with_logs: bool = False, with_result: bool = False
    ) -> Snapshot | types.CallToolResult:
        snap = await self.queue.find(principal, request_id, with_logs=with_logs, with_result=with_result)
        if snap is None:
            return content.error(f"Request {request_id!r} not found", "not_found")
        return snap

    async def _status(self, principal: Principal, args: StatusArgs, base: str) -> types.CallToolResult:
        found = await self._job(principal, args.request_id, with_logs=args.logs)
        if isinstance(found, types.CallToolResult):
            return found
        return content.json_result(status_body(found, base))

    async def _result(self, principal: Principal, request_id: str) -> types.CallToolResult:
        found = await self._job(principal, request_id, with_result=True)
        if isinstance(found, types.CallToolResult):
            return found
        job = found.job
        if job.status != JobStatus.COMPLETED or job.outcome is None:
            where = "in the queue" if job.status == JobStatus.IN_QUEUE else "in progress"
            detail = f"Request {request_id!r} is still {where}; follow it with get_status"
            return content.error_result({"detail": detail, "error_type": "not_ready", "status": str(job.status)})
        return await self._outcome(job.outcome)

    async def _cancel(self, principal: Principal, request_id: str) -> types.CallToolResult:
        found = await self._job(principal, request_id)
        if isinstance(found, types.CallToolResult):
            return found
        result = await self.queue.cancel(found.job)
        if result == CancelResult.ALREADY_COMPLETED:
            return content.error(f"Request {request_id!r} has already completed", "already_completed")
        if result == CancelResult.NOT_FOUND:
            return content.error(f"Request {request_id!r} not found", "not_found")
        return content.json_result({"status": "CANCELLATION_REQUESTED", "request_id": request_id})

    async def _upload(self, args: UploadArgs, base: str) -> types.CallToolResult:
        payload, content_type = args.data, args.content_type
        if payload.startswith("data:"):
            header, sep, payload = payload.partition(",")
            if not sep or not header.endswith(";base64"):
                return content.error("data: a data URI must be base64 (data:<type>;base64,...)", "validation_error")
            content_type = content_type or header[5:].split(";")[0] or None
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            return content.error(f"data: not valid base64 ({exc})", "validation_error")
        content_type = content_type or guess_type(args.file_name or "")[0] or sniff_content_type(data)
        try:
            stored = await asyncio.to_thread(self.files.put_bytes, data, content_type, args.file_name)
        except FileTooLarge as exc:
            return content.error(str(exc), "file_too_large")
        body = {"url": base + stored.url_path, "content_type": content_type, "size_bytes": stored.size}
        if stored.expires_at is not None:
            body["expires_at"] = stored.expires_at
        return content.json_result(body, "Pass this url to any input ending in _url.")

    # -- apps: list, describe, guides ------------------------------------------------------------

    def _list_apps(self, principal: Principal) -> types.CallToolResult:
        registry, book = self.engine.registry, self.book
        apps = []
        for app in visible_apps(registry, principal):
            entry = describe(app, self.engine)
            for ep_entry, endpoint in zip(entry["endpoints"], registry.request_endpoints(app).values(), strict=True):
                ep_entry.update(book.names_of(endpoint))
            apps.append(entry)
        return content.json_result({"apps": apps})

    async def _describe_app(self, principal: Principal, app_id: str) -> types.CallToolResult:
        registry = self.engine.registry
        try:
            app = find_app(registry, principal, app_id)
            document = await cached_document(app, registry)
        except LookupError as exc:
            return content.error(f"{exc.args[0]}; list_apps lists them", "not_found")
        except AuthError as exc:
            return content.error(exc.reason, "forbidden")
        except DescribeError as exc:
            return content.error(str(exc), "internal_error")
        entry = describe(app, self.engine)
        for ep_entry, endpoint in zip(entry["endpoints"], registry.request_endpoints(app).values(), strict=True):
            input_schema, output_schema = endpoint_schemas(document, app, endpoint)
            ep_entry.update(self.book.names_of(endpoint), input_schema=input_schema, output_schema=output_schema)
        entry["components"] = document["components"]
        return content.json_result(entry)

    async def _list_resources(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        principal, _ = self._caller(ctx)
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=uri_of(app),
                    name=app.app_id,
                    title=f"{app.title or app.app_id}: guide",
                    description=f"What {app.app_id} does, its tools, and every input field with its limits.",
                    mime_type="text/markdown",
                )
                for app in visible_apps(self.engine.registry, principal)
            ]
        )

    async def _read_resource(self, ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        principal, _ = self._caller(ctx)
        uri = str(params.uri)
        registry = self.engine.registry
        app = registry.get(uri.removeprefix(URI_PREFIX)) if uri.startswith(URI_PREFIX) else None
        if app is None or not principal.may_use(registry.names_of(app)) or uri != uri_of(app):
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
        try:
            document = await cached_document(app, registry)
        except DescribeError as exc:
            raise MCPError(INTERNAL_ERROR, str(exc)) from None
        names = {ep.key: self.book.names_of(ep) for ep in registry.request_endpoints(app).values()}
        text = guide(app, self.engine, document, names)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="text/markdown", text=text)]
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was already read: ``body`` once, then the client's own messages."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay
