"""The two baselines the benchmark drives with the same load as FrameWire, each in its
own process:

- ``starlette``: the same stack as ``framewire serve`` (uvicorn with the same WebSocket
  implementation, event loop and settings, a Starlette route) doing only msgpack
  decode + encode of each frame. FrameWire's overhead is reported against this.
- ``websockets``: a raw ``websockets`` server sending each frame straight back, the
  transport floor.

Both answer ``GET /ready`` with 200 so the harness waits for them the same way.

    python -m framewire.bench.baselines starlette --port 8101
"""

from __future__ import annotations

import argparse
import asyncio
import http
import sys
from collections.abc import Sequence

import msgpack

#: Matches ``framewire serve``'s hard WebSocket frame cap (4 x the 4 MiB default frame limit).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def starlette_app() -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def ready(request: Request) -> JSONResponse:
        return JSONResponse({"ready": True})

    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        receive, send = ws.receive, ws.send
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                continue
            out = msgpack.packb(msgpack.unpackb(data, raw=False), use_bin_type=True)
            await send({"type": "websocket.send", "bytes": out})

    return Starlette(routes=[Route("/ready", ready), WebSocketRoute("/{path:path}", echo)])


def serve_starlette(host: str, port: int) -> None:
    import uvicorn

    config = uvicorn.Config(
        starlette_app(),  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        ws_per_message_deflate=False,
        ws_max_size=MAX_MESSAGE_BYTES,
    )
    uvicorn.Server(config).run()


async def _websockets_main(host: str, port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.http11 import Request, Response

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    def ready(conn: ServerConnection, request: Request) -> Response | None:
        if request.path == "/ready":
            return conn.respond(http.HTTPStatus.OK, "ready\n")
        return None

    async with serve(echo, host, port, compression=None, max_size=MAX_MESSAGE_BYTES, process_request=ready) as server:
        await server.serve_forever()


def serve_websockets(host: str, port: int) -> None:
    try:
        import uvloop  # the same loop uvicorn picks for the other two servers
    except ImportError:
        asyncio.run(_websockets_main(host, port))
    else:
        uvloop.run(_websockets_main(host, port))


SERVERS = {"starlette": serve_starlette, "websockets": serve_websockets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framewire.bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=sorted(SERVERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        SERVERS[args.kind](args.host, args.port)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
