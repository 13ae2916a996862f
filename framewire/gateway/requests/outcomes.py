"""How a request ended, on whichever surface it ran.

An :class:`Outcome` is what a sync run answers with and what a queue job stores, replays
from ``GET …/requests/{id}`` and posts to its webhook. The constructors here are the one
place each way of ending (finished, failed, cancelled, timed out, runner gone) gets its
status, body and ``error_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from framewire.engine.api import EngineUnavailable, FrameResult
from framewire.gateway import http
from framewire.gateway.requests.finaliser import OutputFinaliser, merge_timings


@dataclass(frozen=True)
class Outcome:
    """How a request ended: the body and HTTP status a sync run answers and ``GET …/requests/{id}`` replays."""

    body: Any
    http_status: int = 200
    error: str | None = None
    error_type: str | None = None
    metrics: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def cancelled_outcome() -> Outcome:
    return Outcome(
        {"detail": "Request was cancelled", "error_type": "request_cancelled"},
        499,
        "Request was cancelled",
        "request_cancelled",
    )


def timeout_outcome(timeout_s: float | None) -> Outcome:
    reason = "Request timed out" + (f" (it did not start within {timeout_s:g} s)" if timeout_s else "")
    return Outcome({"detail": reason, "error_type": "request_timeout"}, 504, reason, "request_timeout")


def disconnected_outcome(attempts: int) -> Outcome:
    reason = f"Runner disconnected: the server stopped during each of {attempts} runs of this request"
    return Outcome({"detail": reason, "error_type": "runner_disconnected"}, 503, reason, "runner_disconnected")


class EngineGone(Exception):
    """The engine went away under the job: put it back in the queue."""


async def run_outcome(result: FrameResult, inp: Any, finaliser: OutputFinaliser, base_url: str) -> Outcome:
    """The outcome of one engine call, its output finalised for the JSON surfaces."""
    metrics = {
        "inference_time": round(result.inference_ms / 1000.0, 6),
        "queue_time": round(result.queue_ms / 1000.0, 6),
    }
    if result.error is not None:
        if isinstance(result.error, EngineUnavailable):
            raise EngineGone(result.error.reason)
        status, body = http.app_error_body(result.error)
        return Outcome(body, status, result.error.reason, body["error_type"], metrics)
    assert result.output is not None
    output = merge_timings(result.output.model_dump(), result)
    body = await finaliser.to_json(output, sync_mode=bool(getattr(inp, "sync_mode", False)), base_url=base_url)
    return Outcome(body, 200, None, None, metrics)


def outcome_response(result: Outcome) -> JSONResponse:
    """A finished request's answer (run surface, or a queue job's result) with its error headers.

    A start timeout says ``x-fal-request-timeout-type: user``: clients do not retry those."""
    headers = {}
    if result.error_type is not None:
        headers["x-fal-error-type"] = result.error_type
    if result.error_type == "request_timeout":
        headers["x-fal-request-timeout-type"] = "user"
    return JSONResponse(result.body, status_code=result.http_status, headers=headers)
