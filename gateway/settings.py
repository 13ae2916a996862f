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
    builtin_apps: tuple[str, ...] = ("echo",)
    max_queue_delay_ms: float | None = None
    demo_dir: str | None = None
    log_level: str = "info"
    # batching
    max_batch_size: int | None = None

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
    # batching
    Option("max_batch_size", "cap every app's batch size (e.g. for a smaller GPU, or a benchmark sweep)", int),
)

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
    if settings.max_batch_size is not None and settings.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be >= 1, got {settings.max_batch_size}")
    if settings.auth and not settings.api_keys:
        raise ValueError("--auth needs at least one key (--api-key id:secret or FRAMEWIRE_API_KEYS)")
