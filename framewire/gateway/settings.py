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


def _entries(value: str) -> tuple[str, ...]:
    """Items separated by spaces or semicolons (each item may hold commas)."""
    return tuple(item for item in value.replace(";", " ").split() if item)


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
    # limits enforced before any work (see the README's "Security and limits")
    max_header_bytes: int = 32 * 1024
    read_timeout_s: float = 15.0
    max_connections: int = 2048
    max_body_bytes: int = 8 * 1024 * 1024
    max_input_items: int = 10_000
    allowed_hosts: tuple[str, ...] = ()
    apps: tuple[str, ...] = ()
    builtin_apps: tuple[str, ...] = ("echo", "lcm", "sdxl-turbo")
    max_queue_delay_ms: float | None = None
    demo_dir: str | None = None
    log_level: str = "info"
    # kernels
    kernels: bool = True
    # storage/queue
    data_dir: str = "./var"
    max_upload_bytes: int = 512 * 1024 * 1024
    file_ttl_s: float = 7 * 24 * 3600.0
    upload_url_expiration_s: int = 3600
    fetch_timeout_s: float = 30.0
    max_fetch_bytes: int = 64 * 1024 * 1024
    private_networks: bool = False
    max_queue_length: int = 10_000
    queue_jobs_in_flight: int = 0
    max_job_attempts: int = 3
    job_retention_s: float = 7 * 24 * 3600.0
    webhook_timeout_s: float = 15.0
    webhook_max_attempts: int = 10
    webhook_retry_base_s: float = 14.0
    webhook_secret: str | None = None
    # batching
    max_batch_size: int | None = None
    # platform
    log_format: str = "json"
    shutdown_timeout_s: float = 30.0
    usage_flush_interval_s: float = 5.0
    usage_retention_s: float = 400 * 24 * 3600.0
    # engine
    weights: tuple[str, ...] = ()
    loras: tuple[str, ...] = ()
    offline: bool = False
    hub_timeout_s: float = 10.0
    device: str = "auto"
    backend: str = "eager"
    dtype: str = "auto"
    tiny_vae: bool = False
    cache_dir: str | None = None
    batch_buckets: tuple[int, ...] = (1, 2, 4, 8)
    warmup_sizes: tuple[str, ...] = ()
    max_megapixel_steps: float = 64.0
    max_decode_megapixels: float = 16.0
    # engine workers
    workers: tuple[str, ...] = ()
    devices: str | None = None
    app_devices: tuple[str, ...] = ()
    worker_secret: str | None = None
    worker_cafile: str | None = None
    worker_heartbeat_s: float = 0.5
    worker_timeout_s: float = 1.5

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
    Option("max_header_bytes", "largest HTTP request head (request line and headers), bytes", int),
    Option(
        "read_timeout_s", "a request head must arrive within this, and a request body may pause no longer, s", float
    ),
    Option("max_connections", "open connections (HTTP and WebSocket) before new ones get 503", int),
    Option("max_body_bytes", "largest JSON request body (runs, submits, tokens, keys, uploads' JSON), bytes", int),
    Option("max_input_items", "most values (map entries, list items, scalars) one input may hold", int),
    Option(
        "allowed_hosts",
        "with auth off, host names browsers may reach this server by besides localhost and IP addresses ('*' for any);"
        " comma separated",
        _list,
        repeatable=True,
    ),
    Option("apps", "extra app to load, module:object (repeatable)", _list, repeatable=True),
    Option("builtin_apps", "built-in apps to load, comma separated", _list),
    Option("max_queue_delay_ms", "override every app's batching delay, ms", float),
    Option("demo_dir", "folder served at / (default: the bundled demo page)"),
    Option("log_level", "log level (debug, info, warning, error)"),
    # kernels
    Option("kernels", "fused Triton kernels for the frame path on CUDA (1/0); off runs their torch references", _bool),
    # storage/queue
    Option("data_dir", "folder for the job database, stored files and server keys", str),
    Option("max_upload_bytes", "largest file accepted by storage uploads, bytes", int),
    Option("file_ttl_s", "seconds stored files are kept unless the upload asks otherwise (0 = forever)", float),
    Option("upload_url_expiration_s", "lifetime of signed upload URLs, seconds", int),
    Option("fetch_timeout_s", "timeout for fetching an input's http(s) *_url, seconds", float),
    Option("max_fetch_bytes", "largest file fetched for an input's *_url, bytes", int),
    Option(
        "private_networks",
        "let input URLs and webhooks reach loopback, private and link-local addresses (1/0; off: public only)",
        _bool,
    ),
    Option("max_queue_length", "queued jobs per app before submits get 429", int),
    Option("queue_jobs_in_flight", "queue jobs handed to the engine at once per app (0 = 2 x max batch)", int),
    Option("max_job_attempts", "runs of a job interrupted by server restarts before it fails", int),
    Option("job_retention_s", "seconds finished jobs (and their results) are kept", float),
    Option("webhook_timeout_s", "timeout of one webhook delivery, seconds", float),
    Option("webhook_max_attempts", "webhook delivery tries before giving up", int),
    Option("webhook_retry_base_s", "first webhook retry delay; doubles per try, with jitter, seconds", float),
    Option("webhook_secret", "whsec_... secret: also sign webhooks with Standard Webhooks v1 (HMAC)"),
    # batching
    Option("max_batch_size", "cap every app's batch size (e.g. for a smaller GPU, or a benchmark sweep)", int),
    # platform
    Option("log_format", "log lines as json (one object per line) or text"),
    Option("shutdown_timeout_s", "longest a SIGTERM drain and shutdown may take, seconds", float),
    Option("usage_flush_interval_s", "seconds between writes of usage tallies to the store", float),
    Option("usage_retention_s", "seconds usage records are kept (0 = forever)", float),
    # engine
    Option(
        "weights",
        "weights of a diffusion app, APP=FOLDER, APP=OWNER/REPO or APP=random; `random` alone for every app "
        "(repeatable; default: each app's real weights, from the Hugging Face cache or downloaded on first use)",
        _list,
        repeatable=True,
    ),
    Option(
        "loras",
        "a LoRA fused into an app's weights at load, APP=REPO_OR_PATH[:scale] (repeatable; an LCM-LoRA, named "
        "lcm..., makes the app sample with LCM)",
        _list,
        repeatable=True,
    ),
    Option(
        "offline",
        "never touch the network: weights from the Hugging Face cache or folders only; tiny random weights "
        "stand in for missing default weights (1/0)",
        _bool,
    ),
    Option("hub_timeout_s", "longest wait for the Hugging Face Hub's first answer, seconds", float),
    Option("device", "device of the diffusion apps: auto, cpu, cuda, cuda:N"),
    Option("backend", "how the models run: eager, compile (CUDA: torch.compile + graphs; CPU: AOTInductor), tensorrt"),
    Option("dtype", "model dtype: auto (float16 on CUDA, float32 on CPU), float32, float16, bfloat16"),
    Option("tiny_vae", "use the tiny VAE (TAESD/TAESDXL) for speed (1/0)", _bool),
    Option("cache_dir", "folder for random weights and compile/TensorRT artefacts (default ~/.cache/framewire)"),
    Option("batch_buckets", "batch sizes to compile and pad to, comma separated", _int_list),
    Option("warmup_sizes", "image sizes to warm (and compile) before ready, WxH, comma separated", _list),
    Option(
        "max_megapixel_steps",
        "compute budget of one diffusion input: output megapixels x steps x images (x2 with guidance)",
        float,
    ),
    Option(
        "max_decode_megapixels",
        "input-image megapixels diffusion apps decode at once (also one image's most); JPEGs count at reduced scale",
        float,
    ),
    # engine workers
    Option(
        "workers",
        "run the apps on these engine workers (`framewire worker`), HOST:PORT, comma separated (repeatable)",
        _list,
        repeatable=True,
    ),
    Option("devices", "start one engine worker process per device: cuda:0,cuda:1,... or auto (every GPU) or cpu"),
    Option(
        "app_devices",
        "with --devices, which devices run an app: APP=DEV[,DEV...] (repeatable; default: every app everywhere)",
        _entries,
        repeatable=True,
    ),
    Option("worker_secret", "secret shared by edges and workers, >= 32 bytes (needed with --workers)"),
    Option("worker_cafile", "CA bundle (PEM) that signed the workers' certificates: links to --workers use TLS"),
    Option("worker_heartbeat_s", "seconds between heartbeats on each worker link", float),
    Option("worker_timeout_s", "a worker silent this long is lost: its sessions move, its requests run again", float),
)

BACKENDS = ("eager", "compile", "tensorrt")
DTYPES = ("auto", "float32", "float16", "bfloat16")

_FLAG_NAMES = {
    "apps": "app",
    "api_keys": "api-key",
    "allowed_origins": "allowed-origin",
    "allowed_hosts": "allowed-host",
    "loras": "lora",
}


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
                value = tuple(item for entry in value for item in option.parse(entry))
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
    if settings.max_header_bytes < 1024:
        raise ValueError(f"--max-header-bytes must be at least 1024, got {settings.max_header_bytes}")
    if settings.max_body_bytes < 1024 or settings.max_input_items < 16:
        raise ValueError("--max-body-bytes must be at least 1024 and --max-input-items at least 16")
    if not settings.read_timeout_s > 0 or settings.max_connections < 1:
        raise ValueError("--read-timeout-s must be > 0 and --max-connections >= 1")
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
    for name in ("max_upload_bytes", "upload_url_expiration_s", "max_fetch_bytes", "max_queue_length"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("fetch_timeout_s", "webhook_timeout_s"):
        if getattr(settings, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    if settings.max_job_attempts < 1 or settings.webhook_max_attempts < 1:
        raise ValueError("--max-job-attempts and --webhook-max-attempts must be >= 1")
    if settings.queue_jobs_in_flight < 0 or settings.file_ttl_s < 0 or settings.webhook_retry_base_s < 0:
        raise ValueError("--queue-jobs-in-flight, --file-ttl-s and --webhook-retry-base-s must be >= 0")
    if settings.webhook_secret is not None and not settings.webhook_secret.startswith("whsec_"):
        raise ValueError("--webhook-secret must be a Standard Webhooks secret: whsec_ followed by base64")
    if not (settings.max_megapixel_steps > 0 and settings.max_decode_megapixels > 0):
        raise ValueError("--max-megapixel-steps and --max-decode-megapixels must be > 0")
    if settings.max_batch_size is not None and settings.max_batch_size < 1:
        raise ValueError(f"--max-batch-size must be >= 1, got {settings.max_batch_size}")
    # platform (--auth with keys only in the key store is checked at start, when the store is open)
    if settings.log_format not in ("json", "text"):
        raise ValueError(f"--log-format must be json or text, got {settings.log_format!r}")
    if settings.shutdown_timeout_s < 1:
        raise ValueError(f"--shutdown-timeout-s must be >= 1, got {settings.shutdown_timeout_s}")
    if settings.usage_flush_interval_s <= 0 or settings.usage_retention_s < 0:
        raise ValueError("--usage-flush-interval-s must be > 0 and --usage-retention-s >= 0")
    for spec in settings.weights:
        name, sep, where = spec.partition("=")
        if spec != "random" and (not sep or not name or not where):
            raise ValueError(
                f"--weights {spec!r}: expected APP=FOLDER, APP=OWNER/REPO, APP=random or random, e.g. lcm=/models/lcm"
            )
    for spec in settings.loras:
        name, sep, where = spec.partition("=")
        if not sep or not name or not where:
            raise ValueError(
                f"--lora {spec!r}: expected APP=REPO_OR_PATH[:scale], e.g. lcm=latent-consistency/lcm-lora-sdv1-5"
            )
    if settings.hub_timeout_s <= 0:
        raise ValueError(f"--hub-timeout-s must be > 0, got {settings.hub_timeout_s}")
    if settings.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {settings.backend!r}")
    if settings.dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {settings.dtype!r}")
    if not settings.batch_buckets or min(settings.batch_buckets) < 1 or max(settings.batch_buckets) > 64:
        raise ValueError(f"--batch-buckets must be integers in 1..64, got {settings.batch_buckets}")
    if settings.worker_secret is not None and len(settings.worker_secret.encode()) < 32:
        raise ValueError(
            "--worker-secret must be at least 32 bytes; make one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    if settings.workers and settings.worker_secret is None:
        raise ValueError("--workers needs --worker-secret (or FRAMEWIRE_WORKER_SECRET), the one the workers use")
    if settings.app_devices and not settings.devices:
        raise ValueError("--app-devices places apps on the workers of --devices; give --devices too")
    if settings.worker_cafile is not None and not settings.workers:
        raise ValueError("--worker-cafile is for TLS links to --workers; give --workers too")
    if not 0 < settings.worker_heartbeat_s < settings.worker_timeout_s:
        raise ValueError("--worker-heartbeat-s must be > 0 and below --worker-timeout-s")
    for size in settings.warmup_sizes:
        width, sep, height = size.lower().partition("x")
        if not (
            sep and width.isdigit() and height.isdigit() and 64 <= int(width) <= 2048 and 64 <= int(height) <= 2048
        ):
            raise ValueError(f"--warmup-sizes: expected WIDTHxHEIGHT with sides in 64..2048, got {size!r}")
