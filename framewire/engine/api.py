"""The torch-free contract between the gateway and the engine.

An *app* is a model endpoint with an id ``owner/alias``. It subclasses :class:`App`,
declares one or more endpoints with :func:`endpoint` / :func:`realtime`, and is
reached by every surface (realtime WebSocket, sync run, queue, SSE stream). Two more
kinds of endpoint are reached on one surface each: a :func:`video` endpoint takes the
decoded frames of live video sessions (WebRTC), batched like realtime frames, and a
:func:`websocket` endpoint (fal's ``is_websocket=True``) is handed the raw socket.

A handler takes a **list** of validated inputs and returns a list of outputs of the
same length: a batch mixes frames from different sessions, and each output goes back
to the session its input came from. A handler may instead take one input and return
one output; it then runs with a batch size of 1.

An element of the returned list may be an :class:`AppError` instance: that input
failed (for example an undecodable image) and only its caller is told.

Nothing here imports torch: the gateway imports this module to validate inputs.
"""

from __future__ import annotations

import abc
import inspect
import json
import logging
import types
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, ValidationError, model_validator
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

#: The realtime ``max_buffering`` range clients may ask for (fal clients validate the same).
MAX_BUFFERING_RANGE = (1, 60)
#: Pending frames kept per session when neither the client nor the app says otherwise.
DEFAULT_BUFFERING = 2
#: The ``target_latency_ms`` range a session may ask for (engine time: frame queued → output ready).
TARGET_LATENCY_RANGE_MS = (1.0, 60_000.0)
#: The ``similarity_threshold`` range: mean absolute difference of two downscaled grey
#: thumbnails, 0-1 (0 means exact matches only).
SIMILARITY_RANGE = (0.0, 0.25)
#: The largest side of a video frame handed to an app, in pixels.
MAX_VIDEO_SIDE = 4096

#: What a file field's text takes: a ``data:`` URI with a base64 payload (what fal's
#: clients' encode helpers make) or an http(s) URL (printable ASCII, as RFC 3986 has them).
FILE_TEXT_PATTERN = (
    r"^(?:data:[^,]*;base64,(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|https?://[!-~]+)$"
)


class _FileInput:
    """The pydantic schema of :data:`FileInput`.

    In JSON a file is text (:data:`FILE_TEXT_PATTERN`); in Python, which is what msgpack
    frames decode to, it may also be raw bytes. The pattern runs in pydantic's regex engine
    (linear in the text: an 8 MB data URI takes milliseconds), and a mismatch names the
    forms accepted instead of quoting the pattern.
    """

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.str_schema(pattern=FILE_TEXT_PATTERN)
        return core_schema.json_or_python_schema(
            json_schema=core_schema.no_info_wrap_validator_function(_file_text, text),
            python_schema=core_schema.union_schema(
                [core_schema.bytes_schema(strict=True), text],
                custom_error_type="file_reference",
                custom_error_message=_FILE_ERROR,
            ),
        )


_FILE_ERROR = "expected a base64 data: URI or an http(s) URL (or raw bytes in msgpack)"


def _file_text(value: Any, handler: core_schema.ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        raise PydanticCustomError("file_reference", _FILE_ERROR) from None


#: A file input field: raw bytes (msgpack frames), a base64 ``data:`` URI, or an http(s)
#: URL, which the gateway fetches before the input reaches the engine. Any other text is
#: refused when the input is validated, so an app never sees it.
FileInput = Annotated[bytes | str, _FileInput()]


_log = logging.getLogger("framewire.engine")


class AppError(Exception):
    """An error for one input, reported to its caller with a code and a readable reason.

    ``code`` is an upper-case identifier (``INVALID_IMAGE``); ``field`` names the input
    field at fault when there is one. The message never carries a traceback.
    """

    code: str = "APP_ERROR"
    status: int = 400

    def __init__(self, reason: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if code is not None:
            self.code = code
        self.field = field


class InputError(AppError):
    """The input was well formed but cannot be used (undecodable image, bad URL, ...)."""

    code = "INVALID_INPUT"
    status = 422


class EngineError(AppError):
    """The engine failed on this input for a reason that is not the caller's."""

    code = "INTERNAL_ERROR"
    status = 500


class StartTimeout(Exception):
    """A request did not start within its start timeout, and was taken out of the line unrun."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"Request timed out (it did not start within {timeout_s:g} s)")
        self.timeout_s = timeout_s


class EngineFault(EngineError):
    """The app's state is broken (e.g. a sticky device error): the host restarts the app.

    The frames of the failing batch get this error; later frames run on the rebuilt app.
    """

    code = "ENGINE_RESTARTING"
    status = 503


class EngineUnavailable(EngineError):
    """The engine is not running (starting, restarting or draining)."""

    code = "ENGINE_UNAVAILABLE"
    status = 503


class Progress:
    """Handed to handlers that declare a ``progress`` parameter.

    ``progress(i, partial)`` sends a partial output (e.g. a per-step preview) for the
    batch's ``i``-th input to whoever streams it (SSE); ``wanted(i)`` says whether anyone
    does, so previews are only computed when needed; ``cancelled(i)`` says whether the
    caller gave up, so a long handler can skip the rest of that input's work.
    """

    def wanted(self, index: int) -> bool:
        return False

    def cancelled(self, index: int) -> bool:
        return False

    def __call__(self, index: int, partial: BaseModel) -> None:
        return None


NO_PROGRESS = Progress()


@dataclass(frozen=True)
class EndpointSpec:
    """What an endpoint decorator declared; bound to an app instance by :class:`Endpoint`."""

    path: str
    max_batch_size: int = 1
    max_queue_delay_ms: float = 0.0
    buffering: int | None = None
    session_timeout_s: float | None = None
    realtime: bool = False
    target_latency_ms: float | None = None
    video: VideoSpec | None = None


@dataclass(frozen=True)
class VideoSpec:
    """How a video endpoint wants its frames: scaled (keeping the aspect) so the longer side
    is at most ``max_side``, both sides rounded down to a multiple of ``multiple_of``."""

    max_side: int = 512
    multiple_of: int = 8

    def frame_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a ``width`` x ``height`` camera frame is handed to the app at."""
        scale = min(1.0, self.max_side / max(width, height, 1))
        step = self.multiple_of
        return max(step, int(width * scale) // step * step), max(step, int(height * scale) // step * step)


def _normalise_path(path: str) -> str:
    return "/".join(part for part in path.split("/") if part)


def _decorator(spec: EndpointSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    if spec.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {spec.max_batch_size}")
    if spec.max_queue_delay_ms < 0:
        raise ValueError(f"max_queue_delay_ms must be >= 0, got {spec.max_queue_delay_ms}")
    low, high = MAX_BUFFERING_RANGE
    if spec.buffering is not None and not low <= spec.buffering <= high:
        raise ValueError(f"buffering must be in {low}..{high}, got {spec.buffering}")
    low_ms, high_ms = TARGET_LATENCY_RANGE_MS
    if spec.target_latency_ms is not None and not low_ms <= spec.target_latency_ms <= high_ms:
        raise ValueError(f"target_latency_ms must be in {low_ms:g}..{high_ms:g}, got {spec.target_latency_ms}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._framewire_endpoint = spec  # type: ignore[attr-defined]
        return fn

    return wrap


def endpoint(
    path: str = "/",
    *,
    max_batch_size: int = 1,
    max_queue_delay_ms: float = 0.0,
    is_websocket: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare an endpoint at ``path`` (relative to the app id) on every surface.

    ``is_websocket=True`` is fal's spelling of :func:`websocket`.
    """
    if is_websocket:
        return websocket(path)
    return _decorator(
        EndpointSpec(_normalise_path(path), max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms)
    )


def realtime(
    path: str = "/realtime",
    *,
    buffering: int | None = None,
    session_timeout: float | None = None,
    max_batch_size: int = 1,
    max_queue_delay_ms: float = 0.0,
    target_latency_ms: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a realtime endpoint, the counterpart of ``@fal.realtime``.

    ``buffering`` is the pending-frame capacity per session when the client does not send
    ``max_buffering``; ``session_timeout`` (seconds) closes a session that sends nothing;
    ``target_latency_ms`` is the latency target of sessions that do not state their own
    (None: such sessions have no target).
    """
    return _decorator(
        EndpointSpec(
            _normalise_path(path),
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            buffering=buffering,
            session_timeout_s=session_timeout,
            realtime=True,
            target_latency_ms=target_latency_ms,
        )
    )


def video(
    path: str = "/video",
    *,
    max_side: int = 512,
    multiple_of: int = 8,
    session_timeout: float | None = 60.0,
    max_batch_size: int = 1,
    max_queue_delay_ms: float = 0.0,
    target_latency_ms: float | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a video endpoint: live video sessions (WebRTC) send it decoded frames.

    The handler's input model has one field that takes a :class:`VideoFrame` (the camera
    frame, scaled by ``max_side`` / ``multiple_of``, see :class:`VideoSpec`); its other
    fields are the session's parameters, set when the session starts and changed while it
    runs. The output model has one :class:`VideoFrame` field: the frame sent back. Frames
    of every session of the endpoint are batched together, as realtime frames are, and a
    session keeps only its newest frame waiting: video is never queued.
    ``session_timeout`` (seconds) ends a session whose video stopped.
    """
    if not 16 <= max_side <= MAX_VIDEO_SIDE:
        raise ValueError(f"max_side must be in 16..{MAX_VIDEO_SIDE}, got {max_side}")
    if multiple_of not in (2, 4, 8, 16, 32, 64):
        raise ValueError(f"multiple_of must be a power of two from 2 to 64, got {multiple_of}")
    return _decorator(
        EndpointSpec(
            _normalise_path(path),
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            buffering=1,
            session_timeout_s=session_timeout,
            realtime=True,
            target_latency_ms=target_latency_ms,
            video=VideoSpec(max_side, multiple_of),
        )
    )


@dataclass(frozen=True)
class SocketSpec:
    """What :func:`websocket` declared."""

    path: str


def websocket(path: str = "/") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a raw WebSocket endpoint at ``/{owner}/{alias}/{path}`` (fal's ``is_websocket=True``).

    The handler is ``async def handler(self, ws: Socket) -> None``: it gets the socket once the
    server has checked the caller, and the socket closes when it returns (code 1000, or 1011
    when it raised). It runs on the engine's socket loop, never on the server's.
    """
    spec = SocketSpec(_normalise_path(path))

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"websocket handler {fn.__qualname__} must be an async def")
        fn._framewire_socket = spec  # type: ignore[attr-defined]
        return fn

    return wrap


def _models_of(fn: Callable[..., Any]) -> tuple[type[BaseModel], type[BaseModel], bool]:
    """Read (input model, output model, batched) from a handler's type hints."""
    hints = typing.get_type_hints(fn)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self", "progress")]
    if len(params) != 1:
        raise TypeError(f"handler {fn.__qualname__} must take exactly one argument besides self")
    arg, ret = hints.get(params[0]), hints.get("return")
    if arg is None or ret is None:
        raise TypeError(f"handler {fn.__qualname__} needs type hints on its argument and return")
    batched = typing.get_origin(arg) in (list, Sequence)
    if batched:
        (arg,) = typing.get_args(arg)
        (ret,) = typing.get_args(ret)
    for what, model in (("input", arg), ("output", ret)):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"handler {fn.__qualname__}: {what} type {model!r} is not a pydantic model")
    return arg, ret, batched


class VideoFrame(BaseModel):
    """One decoded video frame: ``height`` rows of ``width`` RGB pixels, 8 bits a channel.

    ``data`` holds exactly ``width * height * 3`` bytes, row after row, no padding
    (``numpy.frombuffer(data, uint8).reshape(height, width, 3)`` reads it without a copy).
    Video endpoints get camera frames in this form and return their output frames in it;
    the server decodes and encodes the video around them.
    """

    model_config = ConfigDict(frozen=True)

    width: int = Field(..., ge=2, le=MAX_VIDEO_SIDE)
    height: int = Field(..., ge=2, le=MAX_VIDEO_SIDE)
    data: bytes = Field(..., repr=False, description="Packed RGB24 rows, width * height * 3 bytes.")

    @model_validator(mode="after")
    def _sized(self) -> VideoFrame:
        expected = self.width * self.height * 3
        if len(self.data) != expected:
            raise ValueError(f"a {self.width}x{self.height} RGB frame has {expected} bytes, got {len(self.data)}")
        return self


def _takes_frames(annotation: Any) -> bool:
    """Whether a field annotation accepts a :class:`VideoFrame` (alone or in a union)."""
    if annotation is VideoFrame:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_takes_frames(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _takes_frames(typing.get_args(annotation)[0])
    return False


def frame_field(model: type[BaseModel]) -> str | None:
    """The one field of ``model`` that takes a :class:`VideoFrame`, or None (several: TypeError)."""
    found = [name for name, info in model.model_fields.items() if _takes_frames(info.annotation)]
    if len(found) > 1:
        raise TypeError(f"{model.__name__} has several VideoFrame fields ({', '.join(found)}); a video model has one")
    return found[0] if found else None


@dataclass(frozen=True)
class WeightsInfo:
    """What an app's weights are, for the people looking at the catalog and the demo page.

    ``kind`` is ``"real"`` or ``"random"`` (random weights make noise: ``reason`` says why
    they are used and ``fix`` what gives real ones). ``source`` names a Hub repo or a folder;
    ``loras`` the LoRAs fused into the weights, ``source[:scale]``.
    """

    kind: str
    source: str
    reason: str = ""
    fix: str = ""
    loras: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "fix": self.fix, "loras": list(self.loras)}

    def to_wire(self) -> dict[str, Any]:
        """:meth:`to_json` with the ``kind``: what a worker tells edges."""
        return {"kind": self.kind, **self.to_json()}

    @classmethod
    def from_wire(cls, value: Any) -> WeightsInfo:
        """The inverse of :meth:`to_wire`; ``ValueError`` for anything else."""
        if not isinstance(value, dict) or value.get("kind") not in ("real", "random"):
            raise ValueError("weights info must be a map with kind 'real' or 'random'")
        source, reason, fix = (value.get(k, "") for k in ("source", "reason", "fix"))
        loras = value.get("loras", [])
        if not all(isinstance(t, str) for t in (source, reason, fix)) or not isinstance(loras, list):
            raise ValueError("malformed weights info")
        return cls(value["kind"], source, reason, fix, tuple(str(x)[:500] for x in loras[:64]))


@dataclass(frozen=True)
class Degraded:
    """An input as it runs at a degradation level, and what changed (``"num_inference_steps 4→2"``)."""

    input: BaseModel
    note: str


@dataclass(frozen=True)
class FrameIdentity:
    """What decides an input's output, for skipping unchanged frames.

    ``params`` identifies every field but the image (a digest is fine); ``image`` is the
    encoded image, or None when the input has none. Two inputs with equal identities must
    give byte-identical outputs: an app returns no identity for an input whose output is
    not determined by it (a random seed, an image behind a URL that may change).
    """

    params: bytes
    image: bytes | None = None


@dataclass(frozen=True)
class Stages:
    """An endpoint's batch handler split in three, so the host can overlap CPU and device work.

    * ``prepare(input)`` runs for each input on a CPU pool as soon as it arrives (decoding,
      fetching); it may return an :class:`AppError` for that input.
    * ``run(inputs, prepared, progress)`` runs a batch on the engine's device thread, with
      one host sync; ``inputs`` are the inputs as they run (possibly degraded), ``prepared``
      what ``prepare`` made of each input as it arrived.
    * ``finish(ran, progress)`` turns ``run``'s result into one output (or :class:`AppError`)
      per input, on the CPU pool (encoding), while the next batch runs.

    Running the three in sequence must give what the endpoint's handler gives.
    """

    prepare: Callable[[BaseModel], Any]
    run: Callable[[list[BaseModel], list[Any], Progress], Any]
    finish: Callable[[Any, Progress], list[BaseModel | AppError]]


class App:
    """Base class of FrameWire apps; the self-hosted counterpart of ``fal.App``.

    Subclasses set ``app_id`` (``owner/alias``), optional ``aliases`` (other ids that
    map onto this app, e.g. fal's), and decorate handlers with :func:`endpoint` or
    :func:`realtime`. :meth:`setup` runs once on the engine's thread before the server
    reports ready; handlers never run on the event loop.
    """

    app_id: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    tags: ClassVar[tuple[str, ...]] = ()

    def setup(self) -> None:
        """Load weights, allocate buffers, warm up. Runs once on the engine thread."""

    def teardown(self) -> None:
        """Release what :meth:`setup` took. Runs once when the engine stops."""

    def weights_info(self) -> WeightsInfo | None:
        """What this app's weights are, once :meth:`setup` has loaded them; None for apps
        without model weights. Torch-free: the catalog asks for it per request."""
        return None

    def batch_key(self, path: str, inp: BaseModel) -> Hashable:
        """Inputs with different keys never share a batch (e.g. a different image size).

        Must be cheap and torch-free: the gateway computes it per frame.
        """
        return None

    def admit(self, path: str, inp: BaseModel) -> None:
        """Refuse an input over one of the app's limits before it is queued: raise :class:`AppError`.

        Runs for every input as it arrives (cheap and torch-free), so no work is spent on
        an input that would be refused later. The input fails alone: ``submit`` raises the
        error, ``call`` returns it as the result's error. The default admits everything.
        """
        return None

    # -- keeping latency targets under load (all optional; cheap and torch-free) --------

    def degradation(self, path: str) -> tuple[str, ...]:
        """The names of this endpoint's degradation levels 1..N, mildest first.

        Under load that would miss latency targets the engine runs realtime frames at a
        level (see :meth:`degrade`), and lifts it when the load falls. Empty (the default):
        frames always run as sent, and overload drops the oldest pending frame.
        """
        return ()

    def degrade(self, path: str, inp: BaseModel, level: int) -> Degraded | None:
        """``inp`` as it runs at ``level`` (1..N), or None when that level changes nothing for it."""
        return None

    def frame_cost(self, path: str, inp: BaseModel) -> float:
        """The relative device cost of one input (any unit, the same for every input of the app).

        The engine learns seconds per unit from the batches it runs, so a degraded input
        should cost less than the input it replaces.
        """
        return 1.0

    def frame_identity(self, path: str, inp: BaseModel) -> FrameIdentity | None:
        """What decides ``inp``'s output, or None (the default): never skipped. See :class:`FrameIdentity`."""
        return None

    def stages(self, path: str) -> Stages | None:
        """The endpoint's handler split into stages the host overlaps, or None (the default)."""
        return None

    def endpoints(self) -> dict[str, Endpoint]:
        """This instance's endpoints by normalised path (``""`` is the root)."""
        found: dict[str, Endpoint] = {}
        for klass in reversed(type(self).__mro__):
            for name, attr in vars(klass).items():
                spec = getattr(attr, "_framewire_endpoint", None)
                if isinstance(spec, EndpointSpec):
                    found[spec.path] = Endpoint(self, spec, getattr(self, name))
        return found

    def sockets(self) -> dict[str, SocketEndpoint]:
        """This instance's raw WebSocket endpoints (:func:`websocket`) by normalised path."""
        found: dict[str, SocketEndpoint] = {}
        for klass in reversed(type(self).__mro__):
            for name, attr in vars(klass).items():
                spec = getattr(attr, "_framewire_socket", None)
                if isinstance(spec, SocketSpec):
                    found[spec.path] = SocketEndpoint(self, spec, getattr(self, name))
        return found


@dataclass(eq=False)
class Endpoint:
    """One endpoint of one app instance: models, batching settings and the handler."""

    app: App
    spec: EndpointSpec
    handler: Callable[..., Any]
    input_model: type[BaseModel] = field(init=False)
    output_model: type[BaseModel] = field(init=False)
    batched: bool = field(init=False)
    takes_progress: bool = field(init=False)

    frame_input: str | None = field(init=False, default=None)
    frame_output: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.input_model, self.output_model, self.batched = _models_of(self.handler)
        self.takes_progress = "progress" in inspect.signature(self.handler).parameters
        if not self.batched and self.spec.max_batch_size != 1:
            raise TypeError(
                f"{self.key}: max_batch_size={self.spec.max_batch_size} needs a handler taking "
                f"list[{self.input_model.__name__}]"
            )
        if self.spec.video is not None:
            self.frame_input = frame_field(self.input_model)
            self.frame_output = frame_field(self.output_model)
            for what, model, name in (
                ("input", self.input_model, self.frame_input),
                ("output", self.output_model, self.frame_output),
            ):
                if name is None:
                    raise TypeError(f"{self.key}: a video endpoint's {what} model {model.__name__} needs a VideoFrame")

    @property
    def video(self) -> VideoSpec | None:
        """How the endpoint takes video frames, or None when it is not a video endpoint."""
        return self.spec.video

    @property
    def key(self) -> str:
        return f"{self.app.app_id}/{self.spec.path}" if self.spec.path else self.app.app_id

    @property
    def max_batch_size(self) -> int:
        return self.spec.max_batch_size

    def admit(self, inp: BaseModel) -> None:
        """The app's :meth:`App.admit` for this endpoint: AppError refuses ``inp``; any other
        exception (a bug in the check) refuses only ``inp`` too, as an :class:`EngineError`."""
        try:
            self.app.admit(self.spec.path, inp)
        except AppError:
            raise
        except Exception as exc:
            _log.exception("%s failed to admit an input", self.key)
            raise EngineError(f"{self.key} failed on this input ({type(exc).__name__}); see the server log") from None

    def call(self, inputs: list[BaseModel], progress: Progress = NO_PROGRESS) -> list[BaseModel | AppError]:
        """Run the handler on one batch; the result has one element per input."""
        kwargs: dict[str, Any] = {}
        if self.batched:
            if self.takes_progress:
                kwargs["progress"] = progress
            outputs = list(self.handler(inputs, **kwargs))
        else:
            outputs = []
            for i, inp in enumerate(inputs):
                if self.takes_progress:
                    kwargs["progress"] = _OneProgress(progress, i)
                try:
                    outputs.append(self.handler(inp, **kwargs))
                except AppError as exc:
                    outputs.append(exc)
        if len(outputs) != len(inputs):
            raise EngineError(f"{self.key} returned {len(outputs)} outputs for {len(inputs)} inputs")
        return outputs


class _OneProgress(Progress):
    """A batch's progress seen from an unbatched handler (its input is always index 0)."""

    def __init__(self, batch: Progress, index: int) -> None:
        self._batch, self._index = batch, index

    def wanted(self, index: int) -> bool:
        return self._batch.wanted(self._index)

    def cancelled(self, index: int) -> bool:
        return self._batch.cancelled(self._index)

    def __call__(self, index: int, partial: BaseModel) -> None:
        self._batch(self._index, partial)


@dataclass(eq=False)
class SocketEndpoint:
    """One raw WebSocket endpoint of one app instance (see :func:`websocket`)."""

    app: App
    spec: SocketSpec
    handler: Callable[[Socket], Awaitable[None]]

    @property
    def key(self) -> str:
        return f"{self.app.app_id}/{self.spec.path}" if self.spec.path else self.app.app_id


class SocketClosed(Exception):
    """The other side closed the socket (``code``, ``reason`` as in a WebSocket close)."""

    def __init__(self, code: int = 1000, reason: str = "") -> None:
        super().__init__(f"socket closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class Socket(abc.ABC):
    """An app's side of a raw WebSocket; the counterpart of the socket a fal app's
    ``is_websocket=True`` endpoint is handed (Starlette's method names).

    Messages are text (``str``) or binary (``bytes``), each at most the server's frame
    limit. :meth:`send` waits while the client is behind, :meth:`receive` while it sends
    nothing; both raise :class:`SocketClosed` once the client has gone. ``query`` holds the
    URL's query parameters (without the caller's token).
    """

    path: str = ""
    query: Mapping[str, str] = {}

    async def accept(self) -> None:  # noqa: B027 (a no-op on purpose, for apps written for fal)
        """Nothing to do: the server accepted the socket once it had checked the caller."""

    @abc.abstractmethod
    async def receive(self) -> str | bytes:
        """The client's next message."""

    @abc.abstractmethod
    async def send(self, message: str | bytes) -> None:
        """Send one message to the client."""

    @abc.abstractmethod
    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket; later sends raise :class:`SocketClosed`."""

    async def receive_text(self) -> str:
        message = await self.receive()
        if not isinstance(message, str):
            raise TypeError(f"expected a text message, got {len(message)} bytes of binary")
        return message

    async def receive_bytes(self) -> bytes:
        message = await self.receive()
        if not isinstance(message, bytes):
            raise TypeError("expected a binary message, got text")
        return message

    async def receive_json(self) -> Any:
        message = await self.receive()
        return json.loads(message)

    async def send_text(self, text: str) -> None:
        await self.send(str(text))

    async def send_bytes(self, data: bytes) -> None:
        await self.send(bytes(data))

    async def send_json(self, value: Any) -> None:
        await self.send(json.dumps(value, separators=(",", ":")))

    async def iter_text(self) -> AsyncIterator[str]:
        """Text messages until the client closes."""
        try:
            while True:
                yield await self.receive_text()
        except SocketClosed:
            return

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Binary messages until the client closes."""
        try:
            while True:
                yield await self.receive_bytes()
        except SocketClosed:
            return


class SocketLine(Protocol):
    """The server's end of one app socket, handed out by :meth:`EngineClient.open_socket`.

    :meth:`send` passes a client message to the app, waiting while the app has a window
    of messages unread; :meth:`receive` returns the app's next message; both raise
    :class:`SocketClosed` once the app has closed (or ended, or failed: code 1011).
    :meth:`close` says the client has gone; it never waits.
    """

    async def send(self, message: str | bytes) -> None: ...

    async def receive(self) -> str | bytes: ...

    def close(self, code: int = 1000, reason: str = "") -> None: ...


def split_app_id(app_id: str) -> tuple[str, str, str]:
    """Split an endpoint id into (``[namespace/]owner/alias``, alias, sub-path).

    Follows the fal clients: a leading ``workflows/`` or ``comfy/`` namespace is kept
    with the app; the legacy form ``123-alias`` means ``123/alias``. Raises
    ``ValueError`` for an id without owner and alias.
    """
    parts = [p for p in app_id.split("/") if p]
    namespace = ""
    if parts and parts[0] in ("workflows", "comfy"):
        namespace, parts = parts[0] + "/", parts[1:]
    if len(parts) == 1 and "-" in parts[0] and parts[0].split("-", 1)[0].isdigit():
        parts = parts[0].split("-", 1)
    if len(parts) < 2:
        raise ValueError(f"app id {app_id!r} must have the form owner/alias[/path]")
    owner, alias, rest = parts[0], parts[1], parts[2:]
    return f"{namespace}{owner}/{alias}", alias, "/".join(rest)


class AppRegistry:
    """Apps by id and alias; resolves request paths to endpoints."""

    def __init__(self, apps: Sequence[App] = ()) -> None:
        self._apps: dict[str, App] = {}
        self._names: dict[str, App] = {}
        self._endpoints: dict[int, dict[str, Endpoint]] = {}
        self._sockets: dict[int, dict[str, SocketEndpoint]] = {}
        for app in apps:
            self.add(app)

    def add(self, app: App) -> None:
        if not app.app_id:
            raise ValueError(f"{type(app).__name__} has no app_id")
        endpoints = app.endpoints()
        sockets = app.sockets()
        if not endpoints and not sockets:
            raise ValueError(f"{app.app_id} declares no endpoint")
        taken = {q for p, ep in endpoints.items() if ep.spec.realtime and ep.video is None for q in _websocket_paths(p)}
        for path in sockets:
            if path in taken:
                raise ValueError(f"{app.app_id}: the websocket path {'/' + path!r} is a realtime endpoint's path")
        for name in (app.app_id, *app.aliases):
            base, _, sub = split_app_id(name)
            if sub:
                raise ValueError(f"app id or alias {name!r} must be owner/alias without a path")
            if base in self._names:
                raise ValueError(f"app id {name!r} is already taken by {self._names[base].app_id}")
            self._names[base] = app
        self._apps[app.app_id] = app
        self._endpoints[id(app)] = endpoints
        self._sockets[id(app)] = sockets

    def __iter__(self) -> typing.Iterator[App]:
        return iter(self._apps.values())

    def __len__(self) -> int:
        return len(self._apps)

    def get(self, name: str) -> App | None:
        """The app called ``name`` (its id or an alias), or None."""
        return self._names.get(name)

    def names_of(self, app: App) -> list[str]:
        return [name for name, other in self._names.items() if other is app]

    def endpoints_of(self, app: App) -> dict[str, Endpoint]:
        """Every batched endpoint of ``app`` (video endpoints included) by path."""
        return self._endpoints[id(app)]

    def request_endpoints(self, app: App) -> dict[str, Endpoint]:
        """The endpoints of ``app`` that take inputs as requests or realtime frames (not video)."""
        return {p: ep for p, ep in self._endpoints[id(app)].items() if ep.video is None}

    def video_endpoints(self, app: App) -> dict[str, Endpoint]:
        return {p: ep for p, ep in self._endpoints[id(app)].items() if ep.video is not None}

    def sockets_of(self, app: App) -> dict[str, SocketEndpoint]:
        return self._sockets[id(app)]

    def _app_of(self, path: str) -> tuple[App, str]:
        base, _, sub = split_app_id(path)
        app = self._names.get(base)
        if app is None:
            raise LookupError(f"no app named {base!r}")
        return app, sub

    def resolve(self, path: str, *, realtime: bool = False) -> Endpoint:
        """The endpoint for a request path such as ``fal-ai/fast-lcm-diffusion/image-to-image``.

        With ``realtime`` the path is the WebSocket URL's path without its ``/realtime``
        suffix: an endpoint declared at ``<sub>/realtime`` wins, else the one at ``<sub>``.
        Video endpoints are not found here (see :meth:`resolve_video`). Raises
        ``LookupError`` with a readable message when nothing matches.
        """
        app, sub = self._app_of(path)
        endpoints = self._endpoints[id(app)]
        candidates = ["/".join(p for p in (sub, "realtime") if p), sub] if realtime else [sub]
        for candidate in candidates:
            found = endpoints.get(candidate)
            if found is not None and found.video is None:
                return found
        raise LookupError(f"app {app.app_id!r} has no endpoint at path {'/' + sub!r}")

    def resolve_video(self, path: str) -> Endpoint:
        """The video endpoint for ``owner/alias[/sub]``: the one at ``sub``, or, without a
        sub-path, the app's only video endpoint. ``LookupError`` names what exists."""
        app, sub = self._app_of(path)
        videos = {p: ep for p, ep in self._endpoints[id(app)].items() if ep.video is not None}
        if sub in videos:
            return videos[sub]
        if not sub and len(videos) == 1:
            return next(iter(videos.values()))
        if not videos:
            raise LookupError(f"app {app.app_id!r} does not take video: it declares no @video endpoint")
        where = ", ".join("/" + "/".join(q for q in (app.app_id, p, "start-session") if q) for p in videos)
        raise LookupError(f"app {app.app_id!r} has no video endpoint at path {'/' + sub!r}; it has {where}")

    def resolve_socket(self, path: str) -> SocketEndpoint | None:
        """The raw WebSocket endpoint at exactly ``owner/alias[/sub]``, or None."""
        try:
            app, sub = self._app_of(path)
        except (LookupError, ValueError):
            return None
        return self._sockets[id(app)].get(sub)


def _websocket_paths(path: str) -> set[str]:
    """The sub-paths a realtime endpoint declared at ``path`` is opened at (``…/realtime``, legacy ``…/ws``)."""
    found = {"/".join(p for p in (path, suffix) if p) for suffix in ("realtime", "ws")}
    if path == "realtime" or path.endswith("/realtime"):
        found.add(path)
    return found


@dataclass(frozen=True)
class FrameResult:
    """What the engine hands back for one input: an output model or an error.

    ``latency_ms`` is the engine's time for the frame (queued → result ready), which the
    session's ``target_latency_ms`` (None: no target) is measured against. ``degraded`` is
    the degradation level the frame ran at (0: as sent) and ``degradation`` what that
    changed; ``skipped`` is ``"exact"`` or ``"similar"`` when the session's previous output
    was returned without running the model (``batch_size`` is then 0).
    """

    output: BaseModel | None
    error: AppError | None
    queue_ms: float
    inference_ms: float
    batch_size: int
    tag: Any = None
    latency_ms: float | None = None
    target_latency_ms: float | None = None
    degraded: int = 0
    degradation: str = ""
    skipped: str = ""

    @property
    def target_met(self) -> bool | None:
        if self.target_latency_ms is None or self.latency_ms is None:
            return None
        return self.latency_ms <= self.target_latency_ms

    @property
    def timings(self) -> dict[str, float | bool | str]:
        """Per-frame engine timings, merged into an output's ``timings``."""
        out: dict[str, float | bool | str] = {
            "queue_ms": round(self.queue_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "batch_size": self.batch_size,
        }
        if self.latency_ms is not None:
            out["engine_ms"] = round(self.latency_ms, 3)
        met = self.target_met
        if met is not None:
            assert self.target_latency_ms is not None
            out["target_latency_ms"] = self.target_latency_ms
            out["target_met"] = met
        if self.degraded:
            out["degraded"] = self.degraded
            out["degradation"] = self.degradation
        if self.skipped:
            out["skipped"] = self.skipped
        return out


#: The JSON Schema of :attr:`FrameResult.timings`, the keys an output's ``timings`` gains.
FRAME_TIMINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "queue_ms": {"type": "number", "description": "Waiting for a batch."},
        "inference_ms": {"type": "number", "description": "The batch's run."},
        "batch_size": {"type": "integer", "minimum": 0, "description": "0: answered without running the model."},
        "engine_ms": {"type": "number", "description": "Queued to ready."},
        "target_latency_ms": {"type": "number"},
        "target_met": {"type": "boolean"},
        "degraded": {"type": "integer", "minimum": 1, "description": "The degradation level it ran at."},
        "degradation": {"type": "string"},
        "skipped": {"enum": ["exact", "similar"]},
    },
    "required": ["queue_ms", "inference_ms", "batch_size"],
}


ResultCallback = Callable[[FrameResult], None]
ProgressCallback = Callable[[BaseModel], None]


class Stream(Protocol):
    """The engine side of one realtime session: a bounded buffer of pending frames."""

    @property
    def dropped(self) -> int: ...

    @property
    def capacity(self) -> int: ...


class EngineClient(Protocol):
    """What the gateway needs from an engine. In-process and remote engines implement it.

    Result callbacks always run on the event loop that called :meth:`start`.
    """

    registry: AppRegistry

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None:
        """Set up every app (weights, warm-up) and start the workers."""

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish in-flight batches (bounded by ``timeout_s``) and stop the workers."""

    def open_stream(
        self,
        endpoint: Endpoint,
        capacity: int,
        on_result: ResultCallback,
        *,
        target_latency_ms: float | None = None,
        similarity_threshold: float = 0.0,
    ) -> Stream:
        """Open a session's frame buffer holding at most ``capacity`` pending frames.

        ``target_latency_ms`` is the session's latency target (None: the endpoint's
        default, if any); batches are ordered and sized for the tightest targets first.
        ``similarity_threshold`` above 0 also skips a frame whose image differs from the
        last one run by less than that (see :data:`SIMILARITY_RANGE`; 0, the default,
        skips exact repeats only).
        """

    def submit(self, stream: Stream, inp: BaseModel, tag: Any) -> Any:
        """Queue one frame; ``tag`` (not None) comes back in its :class:`FrameResult`.

        Returns the tag of an older pending frame dropped to make room, else None.
        """

    def close_stream(self, stream: Stream) -> int:
        """Close a session's buffer; returns how many pending frames were discarded."""

    def weights_of(self, app: App) -> WeightsInfo | None:
        """What ``app``'s weights are where it runs (see :meth:`App.weights_info`); None when
        the app has no weights or nothing that runs it has said yet."""

    async def open_socket(self, endpoint: SocketEndpoint, query: Mapping[str, str]) -> SocketLine:
        """Start ``endpoint``'s handler on a new socket; the line carries its messages.

        Raises :class:`EngineUnavailable` when no engine can take it now."""

    async def call(
        self,
        endpoint: Endpoint,
        inp: BaseModel,
        *,
        priority: int = 0,
        on_progress: ProgressCallback | None = None,
        start_timeout_s: float | None = None,
    ) -> FrameResult:
        """Run one request (sync run, queue job) through the same batcher as frames.

        Lower ``priority`` runs first; realtime frames always go before requests.
        ``on_progress`` receives partial outputs on the event loop. Cancelling the
        awaiting task removes a request still queued, or tells the handler (through
        :meth:`Progress.cancelled`) that nobody waits for it any more. A request still
        queued after ``start_timeout_s`` is removed and raises :class:`StartTimeout`;
        one that started in time runs to its end.
        """


@dataclass(frozen=True)
class WorkerStatus:
    """One engine worker as the gateway's engine client sees it (readiness, metrics, catalog).

    ``state`` is the worker's own (``starting``, ``ready``, ``restarting``, ``draining``) or
    the link's (``connecting``, ``lost``, ``refused``); only ``ready`` workers take new work.
    Per-endpoint figures are moving averages the worker reports.
    """

    name: str  # the link address, host:port
    label: str  # what the operator calls it: its device for a local worker, else its id
    device: str | None
    state: str
    apps: tuple[str, ...]
    sessions: int  # realtime streams this edge has there
    sessions_total: int  # streams open there from every edge, as last reported
    requests: int  # requests this edge has there
    batch_fill: Mapping[str, float] = field(default_factory=dict)  # endpoint -> mean batch / max batch
    batch_size: Mapping[str, float] = field(default_factory=dict)  # endpoint -> mean batch size
    queue_ms: Mapping[str, float] = field(default_factory=dict)  # endpoint -> mean queue delay
    rtt_ms: float | None = None
    failovers: int = 0  # times the link was lost while it held work of this edge
    error: str | None = None  # why it is lost or refused


@runtime_checkable
class WorkerView(Protocol):
    """An engine client made of workers in other processes tells the gateway about them."""

    def worker_status(self) -> list[WorkerStatus]:
        """Every worker the engine knows, in a stable order."""
