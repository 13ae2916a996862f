"""fal's realtime wire protocol, without I/O: frames in, messages out.

Inputs are binary msgpack maps (the app input itself, no envelope). Outputs are binary
msgpack maps (the app output). Control and error messages are compact JSON **text**
frames, ``{"type": "x-fal-message", ...}`` and ``{"type": "x-fal-error", "error": CODE,
"reason": text}``: fal's Python client raises ``RealtimeError(CODE, reason)`` on the
latter, its JS client calls ``onError``.

Error policy (documented in docs/protocol.md): an error caused by one input frame is sent as
``x-fal-error`` and the session stays open; errors about the session itself (auth,
unknown app, bad query) are sent as ``x-fal-error`` followed by a close with a
4xxx code mirroring the HTTP status; an idle session gets ``TIMEOUT`` and close 1000.
"""

from __future__ import annotations

import enum
import json
import math
from typing import Any

import msgpack
from pydantic import ValidationError

from framewire.engine.api import MAX_BUFFERING_RANGE, SIMILARITY_RANGE, TARGET_LATENCY_RANGE_MS
from framewire.gateway.budget import OverBudget, StructureBudget, check_msgpack


class CloseCode(enum.IntEnum):
    """WebSocket close codes the realtime endpoint uses."""

    NORMAL = 1000  # idle timeout (after TIMEOUT) or the client's own close
    GOING_AWAY = 1001  # server draining or shutting down
    MESSAGE_TOO_BIG = 1009  # a frame over the hard limit (closed by the server's WebSocket layer)
    INTERNAL_ERROR = 1011  # the session itself failed
    BAD_REQUEST = 4400  # invalid query parameter (e.g. max_buffering)
    UNAUTHORIZED = 4401  # missing, invalid or expired credentials
    FORBIDDEN = 4403  # credentials valid but not for this app
    NOT_FOUND = 4404  # no such app or endpoint
    TOO_MANY_SESSIONS = 4429  # the key already has its maximum of open sessions
    TRY_AGAIN_LATER = 1013  # engine not ready


class ErrorCode(enum.StrEnum):
    """``error`` values of ``x-fal-error`` messages sent by the gateway."""

    TIMEOUT = "TIMEOUT"
    INVALID_MSGPACK = "INVALID_MSGPACK"
    INVALID_FRAME = "INVALID_FRAME"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    INVALID_QUERY = "INVALID_QUERY"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    ENGINE_UNAVAILABLE = "ENGINE_UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_SESSIONS = "TOO_MANY_SESSIONS"


TIMEOUT_REASON = "no inputs, reconnect when needed!"
#: Longest ``request_id`` string a frame may carry (it is kept while the frame runs and echoed).
MAX_REQUEST_ID_CHARS = 128


class ProtocolError(Exception):
    """A frame or handshake that breaks the protocol; ``code`` is an :class:`ErrorCode`."""

    def __init__(self, code: ErrorCode, reason: str, **extra: Any) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.extra = extra


def _json(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)


def error_message(code: str, reason: str, **extra: Any) -> str:
    """An ``x-fal-error`` JSON text frame."""
    return _json({"type": "x-fal-error", "error": str(code), "reason": reason, **extra})


def timings_message(timing_s: float) -> str:
    """An ``x-fal-message`` timings text frame, as fal's SDK emits it."""
    return _json({"type": "x-fal-message", "action": "timings", "timing": timing_s})


def parse_max_buffering(raw: str | None) -> int | None:
    """Validate the ``max_buffering`` query parameter (an integer 1-60, or absent)."""
    if raw is None:
        return None
    low, high = MAX_BUFFERING_RANGE
    try:
        value = int(raw)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY, f"max_buffering must be an integer from {low} to {high}, got {raw!r}"
        ) from None
    if not low <= value <= high:
        raise ProtocolError(ErrorCode.INVALID_QUERY, f"max_buffering must be from {low} to {high}, got {value}")
    return value


def _parse_number(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ProtocolError(
            ErrorCode.INVALID_QUERY, f"{name} must be a number from {low:g} to {high:g}, got {raw!r}"
        ) from None
    if not (math.isfinite(value) and low <= value <= high):
        raise ProtocolError(ErrorCode.INVALID_QUERY, f"{name} must be from {low:g} to {high:g}, got {raw}")
    return value


def parse_target_latency_ms(raw: str | None) -> float | None:
    """Validate the ``target_latency_ms`` query parameter (milliseconds, or absent: the app's default)."""
    if raw is None:
        return None
    return _parse_number("target_latency_ms", raw, *TARGET_LATENCY_RANGE_MS)


def parse_similarity_threshold(raw: str | None) -> float:
    """Validate the ``similarity_threshold`` query parameter (absent: 0, exact repeats only)."""
    if raw is None:
        return 0.0
    return _parse_number("similarity_threshold", raw, *SIMILARITY_RANGE)


def decode_frame(data: bytes, budget: StructureBudget) -> dict[str, Any]:
    """Decode one binary input frame into the app's input mapping.

    The encoded frame is checked against ``budget`` first (:mod:`framewire.gateway.budget`),
    so a frame never decodes to more than its own size plus ``budget.max_items`` objects.
    """
    try:
        check_msgpack(data, budget)
    except OverBudget as exc:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame {exc}") from None
    try:
        value = msgpack.unpackb(data, raw=False, timestamp=3)
    except (ValueError, OverflowError, msgpack.UnpackException) as exc:  # OverflowError: a timestamp past year 9999
        detail = str(exc) or type(exc).__name__
        raise ProtocolError(ErrorCode.INVALID_MSGPACK, f"frame is not valid msgpack ({detail})") from None
    if not isinstance(value, dict):
        raise ProtocolError(
            ErrorCode.INVALID_FRAME, f"frame must be a msgpack map (the app input), got {type(value).__name__}"
        )
    return value


def request_id_of(fields: dict[str, Any]) -> str | int | None:
    """A frame's ``request_id``: a string of at most :data:`MAX_REQUEST_ID_CHARS` or an integer.

    Anything else is refused (and not echoed): the id is held while the frame runs.
    """
    request_id = fields.get("request_id")
    if request_id is None:
        return None
    if isinstance(request_id, str) and len(request_id) <= MAX_REQUEST_ID_CHARS:
        return request_id
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return request_id  # msgpack integers fit in 64 bits
    raise ProtocolError(
        ErrorCode.INVALID_FRAME,
        f"request_id must be a string of at most {MAX_REQUEST_ID_CHARS} characters or an integer",
    )


def text_frame_error(text: str) -> ProtocolError:
    """The error for a text frame: inputs must be binary msgpack."""
    kind = "JSON text" if _looks_like_json(text) else "text"
    return ProtocolError(ErrorCode.INVALID_FRAME, f"got a {kind} frame; send the input as a binary msgpack map")


def _looks_like_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validation_detail(exc: ValidationError, where: str = "body") -> list[dict[str, Any]]:
    """pydantic errors in fal's ``detail`` shape: ``loc`` (starting with ``where``), ``msg``, ``type``."""
    return [
        {"loc": [where, *err["loc"]], "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def validation_reason(exc: ValidationError) -> str:
    """One readable line naming every failing field: ``strength: Input should be ...``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def encode_output(output: dict[str, Any]) -> bytes:
    """One binary output frame."""
    packed: bytes = msgpack.packb(output, use_bin_type=True, datetime=True)
    return packed
