"""The gateway's own cost: ``framewire serve`` with an engine that runs each handler on the
event loop, at once (no engine thread, no worker link). For benchmarks only.

Against the in-process engine and an edge with a worker in the same run, it splits a
frame's server CPU into the gateway's share, the engine thread's hand-offs, and the
link's. Handlers must be sub-millisecond (the echo app): they block the loop.

    python -m framewire.bench.floor --port 8000 --builtin-apps echo
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from framewire.engine.api import (
    App,
    AppError,
    AppRegistry,
    Endpoint,
    EngineUnavailable,
    FrameResult,
    ProgressCallback,
    ResultCallback,
    WeightsInfo,
)


@dataclass(eq=False)
class _Stream:
    endpoint: Endpoint
    on_result: ResultCallback
    capacity: int
    dropped: int = 0


class LoopEngine:
    """An :class:`~framewire.engine.api.EngineClient` answering on the caller's event loop."""

    def __init__(self, registry: AppRegistry) -> None:
        self.registry = registry
        self.ready = False

    async def start(self) -> None:
        for app in self.registry:
            app.setup()
        self.ready = True

    async def stop(self, timeout_s: float = 10.0) -> None:
        self.ready = False

    def open_stream(
        self,
        endpoint: Endpoint,
        capacity: int,
        on_result: ResultCallback,
        *,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
    ) -> _Stream:
        return _Stream(endpoint, on_result, capacity)

    def _run(self, endpoint: Endpoint, inp: BaseModel, tag: Any) -> FrameResult:
        if not self.ready:
            raise EngineUnavailable("the engine is not running")
        out = endpoint.call([inp])[0]
        if isinstance(out, AppError):
            return FrameResult(None, out, 0.0, 0.0, 1, tag)
        return FrameResult(out, None, 0.0, 0.0, 1, tag)

    def submit(self, stream: Any, inp: BaseModel, tag: Any) -> Any:
        result = self._run(stream.endpoint, inp, tag)
        asyncio.get_running_loop().call_soon(stream.on_result, result)  # delivered after submit returns
        return None

    def close_stream(self, stream: Any) -> int:
        return 0

    def weights_of(self, app: App) -> WeightsInfo | None:
        return app.weights_info()

    async def call(
        self,
        endpoint: Endpoint,
        inp: BaseModel,
        *,
        priority: int = 0,
        on_progress: ProgressCallback | None = None,
        start_timeout_s: float | None = None,
    ) -> FrameResult:
        return self._run(endpoint, inp, None)


def main(argv: Sequence[str] | None = None) -> int:
    from framewire import cli

    cli.build_engine = lambda settings, registry, on_batch: LoopEngine(registry)
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
