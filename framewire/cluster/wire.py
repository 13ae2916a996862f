"""The edge-worker link protocol: messages, their encoding, the handshake. Pure: no I/O.

A link is one TCP connection (optionally TLS) carrying a stream of msgpack arrays, each
``[type, ...fields]`` (msgpack is self-delimiting, so no length prefix is needed; the
decoder bounds how much one message may buffer). Raw TCP rather than WebSocket: on
loopback with 48 KB frames it costs less CPU and latency per round trip (``framewire
bench link`` measures both in one run; see benchmarks/RESULTS.md).

Handshake (mutual, by a shared secret; the secret never travels)::

    worker → edge   HELLO    version, worker_id, worker_nonce
    edge   → worker AUTH     version, edge_id, edge_nonce, HMAC(secret, "edge" | worker_nonce | edge_nonce),
                             hints (the edge's heartbeat interval)
    worker → edge   WELCOME  HMAC(secret, "worker" | edge_nonce | worker_nonce), info
                    or REFUSED code, reason (then the worker closes)

Before WELCOME a side accepts at most :data:`PRE_AUTH_MAX_BYTES` in all, so an
unauthenticated peer cannot make it buffer frames. After it, the edge sends OPEN / FRAME
/ CLOSE (realtime streams), CALL / CANCEL (sync runs and queue jobs) and PING; the
worker sends RESULT, STREAM_ERROR, PROGRESS, REPLY, PONG and STATE. Either side may
send ERROR about one message it could not use; the link goes on. A message that cannot
be decoded at all ends the link (a byte stream cannot be resynchronised).

The HMAC proves both ends know the secret; it does not protect the bytes after the
handshake. Across machines, run the link over TLS (``framewire worker --ssl-certfile``,
``framewire serve --worker-cafile``).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
from pydantic import BaseModel

from framewire.engine.api import (
    SIMILARITY_RANGE,
    TARGET_LATENCY_RANGE_MS,
    App,
    AppError,
    AppRegistry,
    Endpoint,
    EngineError,
    EngineFault,
    EngineUnavailable,
    FrameResult,
    InputError,
    StartTimeout,
    WeightsInfo,
)

PROTOCOL_VERSION = 1
#: Largest message either side accepts once authenticated (a frame or an output with images).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Largest message accepted before the handshake completed.
PRE_AUTH_MAX_BYTES = 16 * 1024
NONCE_BYTES = 32
#: Secrets shorter than this are refused (HMAC-SHA256 keys shorter than the hash are weak).
MIN_SECRET_BYTES = 32


class Kind(enum.IntEnum):
    HELLO = 1
    AUTH = 2
    WELCOME = 3
    REFUSED = 4
    OPEN = 10
    FRAME = 11
    CLOSE = 12
    RESULT = 13
    STREAM_ERROR = 14
    CALL = 20
    CANCEL = 21
    PROGRESS = 22
    REPLY = 23
    PING = 30
    PONG = 31
    STATE = 32
    ERROR = 40


class WorkerState(enum.StrEnum):
    """What a worker says about itself (the edge adds its own view: connecting, lost, refused)."""

    STARTING = "starting"  # apps being set up
    READY = "ready"
    RESTARTING = "restarting"  # an app rebuilds itself after a fault
    DRAINING = "draining"  # finishing what it has; takes nothing new


class LinkCorrupt(Exception):
    """The byte stream cannot be decoded any further; the link must be closed."""


class Violation(Exception):
    """One message that decodes but breaks the protocol (wrong shape or value)."""


# -- encoding --------------------------------------------------------------------------------


def _default(value: Any) -> Any:
    """msgpack hook for what a pydantic dump may still hold."""
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, BaseModel):
        return value.model_dump()
    if hasattr(value, "isoformat"):  # datetime, date, time
        return value.isoformat()
    return str(value)  # Decimal, UUID, Path, ...: their text, which their fields validate from


class Encoder:
    """Packs messages (one reusable packer; not thread-safe: one per event loop)."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, default=_default)

    def pack(self, message: Sequence[Any]) -> bytes:
        return self._packer.pack(message)  # type: ignore[no-any-return]


class Decoder:
    """Splits a received byte stream into messages, holding at most ``max_message_bytes``.

    :meth:`feed` returns the complete messages so far; it raises :class:`LinkCorrupt` for
    bytes that are not msgpack, a message over the limit, or a message that is not an
    array starting with an integer type.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._unpacker = self._new(max_message_bytes)

    @staticmethod
    def _new(limit: int) -> msgpack.Unpacker:
        return msgpack.Unpacker(
            raw=False,
            max_buffer_size=limit,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=min(limit, 1_000_000),
            max_map_len=min(limit, 100_000),
            max_ext_len=0,
            strict_map_key=True,
        )

    def feed(self, data: bytes) -> list[list[Any]]:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise LinkCorrupt(f"a message is over the {self.max_message_bytes} byte limit") from None
        out: list[list[Any]] = []
        try:
            for message in self._unpacker:
                if not (isinstance(message, list) and message and type(message[0]) is int):
                    raise LinkCorrupt(f"a message is not [type, ...] but {type(message).__name__}")
                out.append(message)
        except (ValueError, msgpack.UnpackException) as exc:
            raise LinkCorrupt(f"undecodable bytes ({type(exc).__name__}: {exc})") from None
        return out


def field_count(message: Sequence[Any], count: int) -> None:
    """Raise :class:`Violation` unless ``message`` has exactly ``count`` fields after its type."""
    if len(message) != count + 1:
        raise Violation(f"message type {message[0]} needs {count} fields, got {len(message) - 1}")


def ident(value: Any, what: str) -> int:
    """A stream, frame or call id: an int, else :class:`Violation`."""
    if type(value) is not int:
        raise Violation(f"{what} must be an integer, got {type(value).__name__}")
    return value


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as a map msgpack can carry (bytes stay bytes)."""
    return model.model_dump()


# -- stream options and result details ------------------------------------------------------------


def stream_options(target_latency_ms: float | None, similarity_threshold: float) -> dict[str, Any]:
    """OPEN's options map: what the session asked of its frames."""
    return {"target_latency_ms": target_latency_ms, "similarity_threshold": similarity_threshold}


def parse_stream_options(value: Any) -> tuple[float | None, float]:
    """(target_latency_ms, similarity_threshold) from OPEN's map; :class:`Violation` when out of range."""
    if not isinstance(value, dict):
        raise Violation("OPEN's options must be a map")
    target, similarity = value.get("target_latency_ms"), value.get("similarity_threshold", 0.0)
    low_ms, high_ms = TARGET_LATENCY_RANGE_MS
    if target is not None and not (isinstance(target, int | float) and low_ms <= target <= high_ms):
        raise Violation(f"target_latency_ms must be nil or in {low_ms:g}..{high_ms:g}")
    low, high = SIMILARITY_RANGE
    if not (isinstance(similarity, int | float) and low <= similarity <= high):
        raise Violation(f"similarity_threshold must be in {low:g}..{high:g}")
    return (None if target is None else float(target)), float(similarity)


def result_details(result: FrameResult) -> dict[str, Any] | None:
    """What a result says beyond its timings (engine latency, target, degradation, skip), or None."""
    details: dict[str, Any] = {}
    if result.latency_ms is not None:
        details["latency_ms"] = result.latency_ms
    if result.target_latency_ms is not None:
        details["target_latency_ms"] = result.target_latency_ms
    if result.degraded:
        details["degraded"], details["degradation"] = result.degraded, result.degradation
    if result.skipped:
        details["skipped"] = result.skipped
    return details or None


def parse_result_details(value: Any) -> dict[str, Any]:
    """:func:`result_details` as :class:`FrameResult` keyword arguments; :class:`Violation` when malformed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Violation("a result's details must be a map or nil")
    out: dict[str, Any] = {}
    for name in ("latency_ms", "target_latency_ms"):
        if name in value:
            if not isinstance(value[name], int | float):
                raise Violation(f"{name} must be a number")
            out[name] = float(value[name])
    if "degraded" in value:
        if type(value["degraded"]) is not int or not isinstance(value.get("degradation", ""), str):
            raise Violation("degraded must be an integer level with a text degradation")
        out["degraded"], out["degradation"] = value["degraded"], value.get("degradation", "")
    if "skipped" in value:
        if not isinstance(value["skipped"], str):
            raise Violation("skipped must be text")
        out["skipped"] = value["skipped"]
    return out


# -- errors ------------------------------------------------------------------------------------

# Most specific first: EngineFault and EngineUnavailable are EngineErrors.
_ERROR_KINDS: tuple[tuple[str, type[AppError]], ...] = (
    ("fault", EngineFault),
    ("unavailable", EngineUnavailable),
    ("engine", EngineError),
    ("input", InputError),
    ("app", AppError),
)
_ERROR_CLASSES = dict(_ERROR_KINDS)


def encode_error(exc: AppError | StartTimeout) -> dict[str, Any]:
    """An engine error as a map; :func:`decode_error` rebuilds one of the same class and code."""
    if isinstance(exc, StartTimeout):
        return {"kind": "start_timeout", "timeout_s": exc.timeout_s}
    kind = next(name for name, cls in _ERROR_KINDS if isinstance(exc, cls))
    return {"kind": kind, "code": exc.code, "reason": exc.reason, "field": exc.field, "status": exc.status}


def decode_error(value: Any) -> AppError | StartTimeout:
    """The inverse of :func:`encode_error`; raises :class:`Violation` for a malformed map."""
    if not isinstance(value, dict):
        raise Violation(f"an error must be a map, got {type(value).__name__}")
    kind = value.get("kind")
    if kind == "start_timeout":
        timeout_s = value.get("timeout_s")
        if not isinstance(timeout_s, int | float):
            raise Violation("a start_timeout error needs timeout_s")
        return StartTimeout(float(timeout_s))
    cls = _ERROR_CLASSES.get(kind) if isinstance(kind, str) else None
    code, reason, field_name, status = (value.get(k) for k in ("code", "reason", "field", "status"))
    if cls is None or not isinstance(code, str) or not isinstance(reason, str):
        raise Violation(f"malformed error {value!r:.200}")
    error = cls(reason, code=code, field=field_name if isinstance(field_name, str) else None)
    if isinstance(status, int) and 400 <= status <= 599 and status != cls.status:
        error.status = status
    return error


# -- handshake -----------------------------------------------------------------------------------


def parse_secret(text: str, source: str = "--worker-secret") -> bytes:
    """The link secret as bytes; ValueError naming the fix when it is too short."""
    secret = text.strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{source} must be at least {MIN_SECRET_BYTES} bytes; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` and give the same to every edge and worker"
        )
    return secret


def new_secret() -> bytes:
    """A random secret for workers an edge starts itself."""
    return secrets.token_urlsafe(32).encode()


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _proof(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, role + b"|" + first + second, hashlib.sha256).digest()


def edge_proof(secret: bytes, worker_nonce: bytes, edge_nonce: bytes) -> bytes:
    """What the edge sends in AUTH."""
    return _proof(secret, b"edge", worker_nonce, edge_nonce)


def worker_proof(secret: bytes, edge_nonce: bytes, worker_nonce: bytes) -> bytes:
    """What the worker sends in WELCOME (so the edge knows the worker holds the secret too)."""
    return _proof(secret, b"worker", edge_nonce, worker_nonce)


def proof_ok(expected: bytes, got: Any) -> bool:
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)


def nonce_ok(value: Any) -> bool:
    return isinstance(value, bytes) and len(value) == NONCE_BYTES


# -- what a worker serves ----------------------------------------------------------------------


def _schema(model: type[BaseModel]) -> Any:
    try:
        return model.model_json_schema()
    except Exception:  # a model pydantic cannot describe: compare by name only
        return f"{model.__module__}.{model.__qualname__}"


def endpoint_fingerprint(endpoint: Endpoint) -> str:
    """Equal on edge and worker when both load the same app code (models, path, realtime)."""
    doc = {
        "path": endpoint.spec.path,
        "realtime": endpoint.spec.realtime,
        "input": _schema(endpoint.input_model),
        "output": _schema(endpoint.output_model),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]


def describe_apps(registry: AppRegistry, apps: Sequence[App] | None = None) -> list[dict[str, Any]]:
    """``[{"id", "endpoints": {path: fingerprint}}]`` for ``apps`` (default: all of them)."""
    chosen = list(registry) if apps is None else list(apps)
    return [
        {"id": app.app_id, "endpoints": {p: endpoint_fingerprint(ep) for p, ep in registry.endpoints_of(app).items()}}
        for app in chosen
    ]


def compare_apps(registry: AppRegistry, described: Any) -> tuple[list[str], list[str]]:
    """(app ids the worker serves that this registry knows the same way, problems).

    A problem is an app this side does not load, or one whose endpoints differ (other
    models: the two processes run different code); such apps are not routed there.
    """
    if not isinstance(described, list):
        raise Violation("apps must be a list")
    same: list[str] = []
    problems: list[str] = []
    for entry in described:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise Violation(f"malformed app entry {entry!r:.200}")
        app_id, endpoints = entry["id"], entry.get("endpoints")
        app = registry.get(app_id)
        if app is None or app.app_id != app_id:
            problems.append(f"{app_id}: not loaded here (give both the same --builtin-apps/--app)")
            continue
        ours = {p: endpoint_fingerprint(ep) for p, ep in registry.endpoints_of(app).items()}
        if endpoints != ours:
            problems.append(f"{app_id}: its endpoints or models differ here (run the same FrameWire and app code)")
            continue
        same.append(app_id)
    return same, problems


@dataclass
class EndpointLoad:
    """How an endpoint's batches went lately (moving averages)."""

    batch_fill: float = 0.0  # mean batch size / max batch size
    batch_size: float = 0.0
    queue_ms: float = 0.0  # mean wait of a batch's inputs
    batches: int = 0


@dataclass
class WorkerLoad:
    """A worker's load as it reports it (in PONG and STATE)."""

    state: WorkerState = WorkerState.STARTING
    sessions: int = 0  # realtime streams open, from every edge
    calls: int = 0  # requests queued or running
    edges: int = 0  # links authenticated
    endpoints: dict[str, EndpointLoad] = field(default_factory=dict)
    #: app id -> :meth:`WeightsInfo.to_wire` of the apps set up with weights (known once ready)
    weights: dict[str, WeightsInfo] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = str(self.state)
        out["weights"] = {app_id: info.to_wire() for app_id, info in self.weights.items()}
        return out

    @classmethod
    def from_wire(cls, value: Any) -> WorkerLoad:
        if not isinstance(value, dict):
            raise Violation("a load report must be a map")
        try:
            endpoints = {
                str(key): EndpointLoad(
                    float(ep["batch_fill"]), float(ep["batch_size"]), float(ep["queue_ms"]), int(ep["batches"])
                )
                for key, ep in (value.get("endpoints") or {}).items()
            }
            weights = {
                str(app_id)[:200]: WeightsInfo.from_wire(info) for app_id, info in (value.get("weights") or {}).items()
            }
            return cls(
                WorkerState(value["state"]),
                int(value["sessions"]),
                int(value["calls"]),
                int(value["edges"]),
                endpoints,
                weights,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Violation(f"malformed load report ({exc})") from None


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself in WELCOME."""

    worker_id: str
    device: str
    pid: int
    apps: list[dict[str, Any]]
    load: WorkerLoad

    def to_wire(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "device": self.device,
            "pid": self.pid,
            "apps": self.apps,
            "load": self.load.to_wire(),
        }

    @classmethod
    def from_wire(cls, value: Any) -> WorkerInfo:
        if not isinstance(value, Mapping):
            raise Violation("worker info must be a map")
        try:
            worker_id, device, pid, apps = value["worker_id"], value["device"], value["pid"], value["apps"]
        except KeyError as exc:
            raise Violation(f"worker info lacks {exc}") from None
        if not (isinstance(worker_id, str) and isinstance(device, str) and isinstance(pid, int)):
            raise Violation("malformed worker info")
        if not isinstance(apps, list):
            raise Violation("worker info: apps must be a list")
        return cls(worker_id, device, pid, apps, WorkerLoad.from_wire(value.get("load")))
