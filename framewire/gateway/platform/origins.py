"""Which browser pages may use this server: the Host and Origin rules.

A browser sends ambient requests for any page it shows, so a server reachable from it
must tell its own pages from others. Non-browser clients (fal's SDKs, curl) send neither
``Origin`` nor ``Sec-Fetch-Site`` and are not affected.

- **WebSockets** (always): the handshake's ``Origin`` must be this server's own or listed
  with ``--allowed-origin`` (``*`` for any).
- **With auth off**, anything a page can reach can act, so two more rules hold:

  - *Host* (DNS rebinding): a browser request must name the server as ``localhost``
    (or ``*.localhost``), by an IP address, or by a name listed with ``--allowed-host``.
    A page on ``evil.example`` whose DNS answer is switched to this server sends
    ``Host: evil.example`` and is refused, and its ``Origin`` can then never count as
    this server's own.
  - *Cross-site* (CSRF): a request that can start work or change something (any method
    but GET, HEAD and OPTIONS, and a GET run) from another site's page (its ``Origin``
    is not this server's, or ``Sec-Fetch-Site`` says ``cross-site``/``same-site``) is
    refused unless its ``Origin`` is listed with ``--allowed-origin``. JSON bodies must
    also be ``application/json`` (:func:`framewire.gateway.http.read_json`), which a
    page on another site cannot send without a CORS preflight this server never grants.

With auth on, requests need a key or token a foreign page cannot get, and the Host is not
checked (a deployment behind its own domain needs no list).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def host_name(host: str) -> str:
    """The name part of a ``Host`` header value (no port, no IPv6 brackets), lower case."""
    return (urlsplit(f"//{host}").hostname or "").lower()


def trusted_host(host: str | None, allowed_hosts: Sequence[str]) -> bool:
    """Whether ``host`` names this server in a way DNS rebinding cannot produce."""
    if not host:
        return False
    if "*" in allowed_hosts:
        return True
    name = host_name(host)
    if not name:
        return False
    if name == "localhost" or name.endswith(".localhost") or name in (h.lower() for h in allowed_hosts):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host: str | None) -> bool:
    """Whether the page's ``origin`` is the server as the request addressed it."""
    return bool(host) and urlsplit(origin).netloc.lower() == (host or "").lower()


def origin_allowed(
    origin: str | None,
    host: str | None,
    allowed_origins: Sequence[str],
    *,
    allowed_hosts: Sequence[str] = ("*",),
) -> bool:
    """The WebSocket ``Origin`` check: none (not a browser), listed, or this server's own at a trusted host."""
    if origin is None:
        return True
    if "*" in allowed_origins or origin in allowed_origins:
        return True
    return same_origin(origin, host) and trusted_host(host, allowed_hosts)


def cross_site_refusal(headers: Mapping[str, str], allowed_origins: Sequence[str]) -> str | None:
    """Why a request that may start work is refused as coming from another site's page, or None."""
    origin = headers.get("origin")
    if origin is not None:
        if "*" in allowed_origins or origin in allowed_origins or same_origin(origin, headers.get("host")):
            return None
        return f"requests from pages at {origin!r} may not use this server (start it with --allowed-origin {origin})"
    if headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        return "requests from other sites' pages may not use this server (see --allowed-origin)"
    return None


def host_refusal(headers: Mapping[str, str], allowed_hosts: Sequence[str]) -> str | None:
    """Why a browser's request naming an untrusted Host is refused, or None."""
    if "origin" not in headers and "sec-fetch-site" not in headers:
        return None  # not a browser
    host = headers.get("host")
    if trusted_host(host, allowed_hosts):
        return None
    name = host_name(host or "") or "(none)"
    return (
        f"browsers may reach this server (auth off) as localhost or by IP address; to use the name {name!r}, "
        f"start it with --allowed-host {name}"
    )


class BrowserGuard:
    """ASGI middleware enforcing the auth-off rules of the module docstring on HTTP requests.

    A GET that starts work (the run surface) checks :func:`cross_site_refusal` itself.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Sequence[str], allowed_origins: Sequence[str]) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)
        self.allowed_origins = tuple(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
            refusal = host_refusal(headers, self.allowed_hosts)
            if refusal is None and scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
                refusal = cross_site_refusal(headers, self.allowed_origins)
            if refusal is not None:
                if scope["type"] == "websocket":  # refused at the handshake, as a bad Origin is
                    await send({"type": "websocket.close", "code": 1008, "reason": refusal[:120]})
                    return
                response = JSONResponse({"detail": refusal, "error_type": "forbidden_origin"}, status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
