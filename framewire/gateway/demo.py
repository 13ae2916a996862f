"""The demo page's files, served with a Content-Security-Policy and frame protection.

The page runs with the server's origin, which also issues tokens, so it is locked down
the way a login page would be: scripts only from this server (the inline import map is
allowed by its hash, computed from the file served), connections only to this server
(HTTP, its WebSocket, and ``data:`` output images), no plug-ins, no ``<base>`` tricks,
and it may not be framed by another site (clickjacking): ``frame-ancestors 'none'`` plus
``X-Frame-Options: DENY`` for older browsers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
#: A Host header value fit to appear in the policy (host name or address, optional port).
_HOST = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,255}$")


def script_hashes(html: bytes) -> list[str]:
    """CSP source expressions (``'sha256-…'``) for each inline ``<script>`` of ``html``."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def content_security_policy(html: bytes, host: str | None) -> str:
    """The policy for the demo page served as ``host``."""
    connect = ["'self'", "data:"]
    if host and _HOST.match(host):
        connect += [f"ws://{host}", f"wss://{host}"]  # 'self' covers them in CSP3 browsers only
    directives = {
        "default-src": ["'self'"],
        "script-src": ["'self'", *script_hashes(html)],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": connect,
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in directives.items())


class DemoFiles:
    """ASGI app: the demo folder's files, each response with the page's security headers."""

    def __init__(self, directory: Path) -> None:
        self.files = StaticFiles(directory=directory, html=True)
        self.index = (directory / "index.html").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        headers = [
            (b"content-security-policy", content_security_policy(self.index, host).encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.files(scope, receive, send_with_headers)
