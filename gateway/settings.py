"""Server settings: one frozen object, read once at start.

Precedence: command-line flag > ``FRAMEWIRE_<NAME>`` environment variable > default.
Every option is declared once in :data:`OPTIONS`; the CLI flags, the environment names
and the README's table all come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "FRAMEWIRE_"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, true/false, on/off), got {value!r}")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(item) for item in _list(value))
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {value!r}") from None


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    queue_port: int | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    auth: bool = False
    api_keys: tuple[str, ...] = ()
    token_secret: str | None = None
    max_token_expiration_s: int = 3600
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 4 * 1024 * 1024
    apps: tuple[str, ...] = ()
    builtin_apps: tuple[str, ...] = ("echo", "lcm", "sdxl-turbo")
    max_queue_delay_ms: float | None = None
    demo_dir: str | None = None
    log_level: str = "info"
    # engine
    weights: tuple[str, ...] = ()
    device: str = "auto"
    backend: str = "eager"
    dtype: str = "auto"
    tiny_vae: bool = False
    cache_dir: str | None = None
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8)
    warmup_sizes: tuple[str, ...] = ()

    def with_changes(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Option:
    name: str
    help: str
    parse: Any = str
    repeatable: bool = False
    flag_only: bool = False


OPTIONS: tuple[Option, ...] = (
    Option("host", "interface to listen on"),
    Option("port", "port of the run/realtime/REST listener", int),
    Option("queue_port", "also listen on this port for the queue surface (fal's queue.fal.run)", int),
    Option("ssl_certfile", "TLS certificate (PEM) for wss:// and https://"),
    Option("ssl_keyfile", "TLS private key (PEM)"),
    Option("auth", "require an API key or token on every surface (1/0)", _bool),
    Option("api_keys", "accepted API keys, id:secret, comma separated", _list, repeatable=True),
    Option("token_secret", "secret that signs realtime tokens (random per process if unset)"),
    Option("max_token_expiration_s", "longest token lifetime /tokens/ grants, seconds", int),
    Option(
        "allowed_origins", "Origins allowed to open WebSockets ('*' for any); comma separated", _list, repeatable=True
    ),
    Option("max_frame_bytes", "largest realtime input frame accepted, bytes", int),
    Option("apps", "extra app to load, module:object (repeatable)", _list, repeatable=True),
    Option("builtin_apps", "built-in apps to load, comma separated", _list),
    Option("max_queue_delay_ms", "override every app's batching delay, ms", float),
    Option("demo_dir", "folder served at / (default: the bundled demo page)"),
    Option("log_level", "log level (debug, info, warning, error)"),
    # engine
    Option(
        "weights",
        "weights of a diffusion app, APP=FOLDER or APP=OWNER/REPO (repeatable; default: tiny random weights)",
        _list,
        repeatable=True,
    ),
    Option("device", "device of the diffusion apps: auto, cpu, cuda, cuda:N"),
    Option("backend", "how the models run: eager, compile (torch.compile, CUDA graphs), tensorrt"),
    Option("dtype", "model dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16"),
    Option("tiny_vae", "use the tiny VAE (TAESD/TAESDXL) for speed (1/0)", _bool),
    Option("cache_dir", "folder for random weights and compile/TensorRT artefacts (default ~/.cache/framewire)"),
    Option("batch_buckets", "batch sizes to compile and pad to, comma separated", _int_list),
    Option("warmup_sizes", "image sizes to warm (and compile) before ready, WxH, comma separated", _list),
)

BACKENDS = ("eager", "compile", "tensorrt")
DTYPES = ("auto", "float32", "float16", "bfloat16")

_FLAG_NAMES = {"apps": "app", "api_keys": "api-key", "allowed_origins": "allowed-origin"}


def flag_of(option: Option) -> str:
    return "--" + _FLAG_NAMES.get(option.name, option.name).replace("_", "-")


def env_of(option: Option) -> str:
    return ENV_PREFIX + option.name.upper()


def add_arguments(parser: argparse.ArgumentParser, options: Sequence[Option] = OPTIONS) -> None:
    """Add one flag per option; defaults stay None so the environment can fill them."""
    for option in options:
        kwargs: dict[str, Any] = {"dest": option.name, "default": None, "help": f"{option.help} [{env_of(option)}]"}
        if option.repeatable:
            kwargs["action"] = "append"
        elif option.parse is _bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.parse is not _list:
            kwargs["type"] = option.parse
        parser.add_argument(flag_of(option), **kwargs)


def from_sources(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    options: Sequence[Option] = OPTIONS,
) -> Settings:
    """Build :class:`Settings` from parsed flags and an environment mapping.

    Raises ``ValueError`` naming the flag or variable when a value does not parse.
    """
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    env = os.environ if env is None else env
    changes: dict[str, Any] = {}
    for option in options:
        value = values.get(option.name)
        if value is not None:
            if option.repeatable:
                value = tuple(item for entry in value for item in _list(entry))
            elif option.parse is _list:
                value = _list(value)
        elif env_of(option) in env:
            raw = env[env_of(option)]
            try:
                value = option.parse(raw)
            except ValueError as exc:
                raise ValueError(f"{env_of(option)}={raw!r}: {exc}") from None
        else:
            continue
        changes[option.name] = value
    settings = Settings(**changes)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Fail early, naming the fix."""
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile must be given together")
    if settings.max_frame_bytes < 1024:
        raise ValueError(f"--max-frame-bytes must be at least 1024, got {settings.max_frame_bytes}")
    if settings.queue_port is not None and settings.queue_port == settings.port:
        raise ValueError("--queue-port must differ from --port (fal clients use the same paths on both)")
    if settings.token_secret is not None and len(settings.token_secret.encode()) < 32:
        raise ValueError("--token-secret must be at least 32 bytes (HS256 keys shorter than the hash are weak)")
    if settings.max_token_expiration_s < 1:
        raise ValueError("--max-token-expiration-s must be >= 1")
    for key in settings.api_keys:
        key_id, sep, secret = key.partition(":")
        if not sep or not key_id or not secret:
            raise ValueError("each API key must have the form id:secret")
    if settings.auth and not settings.api_keys:
        raise ValueError("--auth needs at least one key (--api-key id:secret or FRAMEWIRE_API_KEYS)")
    for spec in settings.weights:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise ValueError(f"--weights {spec!r}: expected APP=FOLDER or APP=OWNER/REPO, e.g. lcm=/models/lcm")
    if settings.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {settings.backend!r}")
    if settings.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    if not settings.batch_buckets or min(settings.batch_buckets) < 1 or max(settings.batch_buckets) > 64:
        raise ValueError(f"--batch-buckets must be integers in 1..64, got {settings.batch_buckets}")
    for size in settings.warmup_sizes:
        width, sep, height = size.lower().partition("x")
        if not (
            sep and width.isdigit() and height.isdigit() and 64 <= int(width) <= 2048 and 64 <= int(height) <= 2048
        ):
            raise ValueError(f"--warmup-sizes: expected WIDTHxHEIGHT with sides in 64..2048, got {size!r}")
