"""``framewire mcp``: a stdio MCP server that passes every call on to a FrameWire ``/mcp``.

For assistants that only launch local servers: the assistant starts ``framewire mcp --url
https://host/mcp --key id:secret`` and speaks MCP on its stdin/stdout; each request (tool
listing and calls, resource listing and reads) goes to the remote server with the key,
over Streamable HTTP, through the SDK's client, and its answer comes back unchanged.
Tool errors stay tool errors; protocol errors keep their code and message. The server
may restart while the bridge runs: only requests made while it is down fail.

Before serving, one plain GET to the URL checks that a server answers there and takes
the key, so a wrong URL or key fails at once with a message naming it (on stderr, since
stdout carries the protocol).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2
from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR

#: Seconds to connect, write and wait for a pool slot; reads may take as long as a run does.
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 600.0

Context = ServerRequestContext[Any, Any]
T = TypeVar("T")


class BridgeError(Exception):
    """The remote server cannot be used (unreachable, no MCP there, key refused)."""


def _auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Key {key}"} if key else {}


async def check_remote(http: httpx2.AsyncClient, url: str) -> None:
    """Fail early, naming the cause, when ``url`` is not a FrameWire ``/mcp`` that takes the key.

    FrameWire answers a GET there with 405 (it takes POST only) once the key passed."""
    try:
        response = await http.get(url)
    except httpx2.HTTPError as exc:
        raise BridgeError(f"cannot reach {url}: {exc}") from None
    status = response.status_code
    if status == 405:
        return
    if status in (401, 403):
        raise BridgeError(f"{url} refused the key ({status}): {_detail(response)}")
    if status == 404:
        raise BridgeError(f"{url} has no MCP server (404); FrameWire's is /mcp on its main port")
    raise BridgeError(f"{url} is not a FrameWire MCP endpoint (GET answered {status}: {_detail(response)})")


def mcp_url(url: str) -> str:
    """``url``, or its ``/mcp`` when given the server's base URL. ValueError for a non-http(s) URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be an http(s) URL such as http://127.0.0.1:8000/mcp, got {url!r}")
    if parts.path in ("", "/"):
        return urlunsplit(parts._replace(path="/mcp"))
    return url


def _detail(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


class Remote:
    """The ``/mcp`` at ``url``, asked through a fresh SDK client per request.

    The server is stateless, so a client per request costs one POST (no handshake at
    2026-07-28, the version learned when the bridge started) and a server restart between
    two requests goes unnoticed. A request the server cannot answer (down, restarting)
    fails alone, as an MCP error naming the URL; the bridge goes on.
    """

    def __init__(self, url: str, http: httpx2.AsyncClient, version: str, discover: types.DiscoverResult | None) -> None:
        self.url = url
        self.http = http
        self.version = version
        self.discover = discover

    def _client(self) -> Client:
        transport = streamable_http_client(self.url, http_client=self.http)
        if self.discover is not None:
            return Client(transport, mode=self.version, prior_discover=self.discover, cache=None)
        return Client(transport, mode="legacy", cache=None)  # a handshake-era server: one handshake per request

    async def ask(self, request: Callable[[Client], Awaitable[T]]) -> T:
        """``request`` on a new client; MCP errors from the server pass through unchanged."""
        try:
            async with self._client() as client:
                return await request(client)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                raise MCPError(INTERNAL_ERROR, f"{self.url} did not answer; is the server running?") from None
            raise
        except (httpx2.HTTPError, ExceptionGroup) as exc:
            raise MCPError(INTERNAL_ERROR, f"{self.url} did not answer: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    """The first non-group error of ``exc``, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def bridge_server(remote: Remote, info: types.Implementation | None, instructions: str | None) -> Server[Any]:
    """A low-level server whose every handler asks ``remote``."""

    async def list_tools(ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        cursor = params.cursor if params else None
        return await remote.ask(lambda client: client.list_tools(cursor=cursor))

    async def call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await remote.ask(lambda client: client.call_tool(params.name, params.arguments))

    async def list_resources(ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        cursor = params.cursor if params else None
        return await remote.ask(lambda client: client.list_resources(cursor=cursor))

    async def read_resource(ctx: Context, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await remote.ask(lambda client: client.read_resource(str(params.uri)))

    return Server(
        info.name if info else "framewire",
        version=info.version if info else "",
        title=info.title if info else None,
        instructions=instructions,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
    )


async def serve(url: str, key: str | None) -> None:
    """Serve MCP on stdio for the server at ``url`` until stdin closes.

    First checks the URL and key (:func:`check_remote`) and learns the server's protocol
    version, identity and instructions with one client session."""
    timeout = httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    async with httpx2.AsyncClient(headers=_auth_headers(key), timeout=timeout) as http:
        await check_remote(http, url)
        async with Client(streamable_http_client(url, http_client=http), cache=None) as first:
            session = first.session
            remote = Remote(url, http, first.protocol_version, session.discover_result)
            server = bridge_server(remote, first.server_info, first.instructions)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def run(url: str, key: str | None) -> None:
    """:func:`serve` on this process's stdio; raises :class:`BridgeError` when the server cannot be used."""
    anyio.run(serve, url, key)
