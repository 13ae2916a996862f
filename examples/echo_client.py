"""Send msgpack frames to framewire/echo over a WebSocket and print what comes back.

framewire serve &            # or: make serve
python examples/echo_client.py ws://127.0.0.1:8000
"""

import asyncio
import sys
import time

import msgpack
import websockets


async def main(base: str, frames: int = 10) -> None:
    async with websockets.connect(f"{base}/framewire/echo/realtime", compression=None) as ws:
        for i in range(frames):
            sent = time.perf_counter()
            await ws.send(msgpack.packb({"image_url": b"\xff\xd8" + bytes(48_000), "prompt": f"frame {i}"}))
            out = msgpack.unpackb(await ws.recv())
            ms = (time.perf_counter() - sent) * 1000
            print(f"{out['prompt']}: {out['size_bytes']} bytes back in {ms:.2f} ms, server {out['timings']}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8000"))
