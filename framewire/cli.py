"""``framewire``: the command line and the composition root (settings → engine → uvicorn).

It sits above both the gateway and the engine, and is the one place that wires the
engine's runtime into the server; the gateway itself sees only ``framewire.engine.api``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from framewire.engine.api import App, AppRegistry
from framewire.engine.config import Backend, DiffusionConfig, LoraSpec, default_cache_dir, parse_size
from framewire.gateway import settings as settings_mod
from framewire.gateway.settings import Settings

log = logging.getLogger("framewire")

#: Built-in apps by short name: ``module:ClassName``.
BUILTIN_APPS: dict[str, str] = {
    "echo": "framewire.engine.apps.echo:EchoApp",
    "lcm": "framewire.engine.apps.lcm:LcmApp",
    "sdxl-turbo": "framewire.engine.apps.sdxl_turbo:SdxlTurboApp",
}
#: The built-in apps that take a :class:`framewire.engine.config.DiffusionConfig` (weights, device, backend).
DIFFUSION_APPS = ("lcm", "sdxl-turbo")


def load_object(spec: str) -> object:
    """Import ``module:attr`` (``attr`` may be dotted). Errors name the spec."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--app {spec!r}: expected module:object")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--app {spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"--app {spec!r}: {module_name!r} has no attribute {attr!r}") from None
    return obj


def instantiate_app(obj: object, spec: str) -> App:
    if isinstance(obj, type) and issubclass(obj, App):
        return obj()
    if isinstance(obj, App):
        return obj
    if callable(obj):
        made = obj()
        if isinstance(made, App):
            return made
    raise ValueError(f"--app {spec!r}: expected an framewire.engine.api.App subclass or instance")


def diffusion_configs(settings: Settings) -> dict[str, DiffusionConfig]:
    """The engine settings of each built-in diffusion app, by short name."""
    weights: dict[str, str] = {}
    loras: dict[str, list[LoraSpec]] = {name: [] for name in DIFFUSION_APPS}
    for spec in settings.weights:
        if spec == "random":
            weights.update(dict.fromkeys(DIFFUSION_APPS, "random"))
            continue
        name, _, where = spec.partition("=")
        if name not in DIFFUSION_APPS:
            raise ValueError(f"--weights {spec!r}: no diffusion app {name!r}; choose from {', '.join(DIFFUSION_APPS)}")
        weights[name] = where
    for spec in settings.loras:
        name, _, where = spec.partition("=")
        if name not in DIFFUSION_APPS:
            raise ValueError(f"--lora {spec!r}: no diffusion app {name!r}; choose from {', '.join(DIFFUSION_APPS)}")
        try:
            loras[name].append(LoraSpec.parse(where))
        except ValueError as exc:
            raise ValueError(f"--lora {exc}") from None
    cache_dir = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    common = {
        "offline": settings.offline,
        "hub_timeout_s": settings.hub_timeout_s,
        "device": settings.device,
        "backend": Backend(settings.backend),
        "dtype": settings.dtype,
        "tiny_vae": settings.tiny_vae,
        "cache_dir": cache_dir,
        "batch_buckets": settings.batch_buckets,
        "warmup_sizes": tuple(parse_size(s) for s in settings.warmup_sizes) or None,
        "max_megapixel_steps": settings.max_megapixel_steps,
        "max_decode_megapixels": settings.max_decode_megapixels,
    }
    return {
        name: DiffusionConfig(weights=weights.get(name), loras=tuple(loras[name]), **common)  # type: ignore[arg-type]
        for name in DIFFUSION_APPS
    }


def build_registry(settings: Settings) -> AppRegistry:
    registry = AppRegistry()
    configs = diffusion_configs(settings)
    for name in settings.builtin_apps:
        if name not in BUILTIN_APPS:
            raise ValueError(f"unknown built-in app {name!r}; choose from {', '.join(BUILTIN_APPS)}")
        spec = BUILTIN_APPS[name]
        obj = load_object(spec)
        if name in configs and isinstance(obj, type):
            obj = obj(configs[name])  # diffusion apps take their engine settings
        registry.add(instantiate_app(obj, spec))
    for spec in settings.apps:
        registry.add(instantiate_app(load_object(spec), spec))
    if not len(registry):
        raise ValueError("no apps to serve: give --builtin-apps or --app")
    return registry


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"framewire: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def configure_kernels(settings: Settings) -> None:
    """Hand the kernels switch to the kernels package before any model loads (it never reads it again)."""
    from framewire.kernels import runtime

    runtime.configure(enabled=settings.kernels)


# -- engine workers ------------------------------------------------------------------------------

#: Default port of `framewire worker` (FRAMEWIRE_WORKER_PORT overrides it).
DEFAULT_WORKER_PORT = 7100
#: Settings a local worker inherits from its edge, passed as flags: its apps and how they run.
WORKER_INHERITED = (
    "apps",
    "builtin_apps",
    "max_queue_delay_ms",
    "log_level",
    "log_format",
    "kernels",
    "max_batch_size",
    "weights",
    "backend",
    "dtype",
    "tiny_vae",
    "cache_dir",
    "batch_buckets",
    "warmup_sizes",
    "max_megapixel_steps",
    "max_decode_megapixels",
)
#: Options of `framewire worker` shared with serve.
WORKER_OPTIONS = (
    *WORKER_INHERITED,
    "host",
    "ssl_certfile",
    "ssl_keyfile",
    "shutdown_timeout_s",
    "device",
    "worker_secret",
    "worker_timeout_s",
)


def settings_flags(settings: Settings, names: Sequence[str]) -> list[str]:
    """The command-line flags that reproduce ``settings``' values of ``names`` (defaults omitted)."""
    defaults = Settings()
    flags: list[str] = []
    for option in settings_mod.OPTIONS:
        if option.name not in names:
            continue
        value = getattr(settings, option.name)
        if value == getattr(defaults, option.name) or value is None:
            continue
        flag = settings_mod.flag_of(option)
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple) and option.repeatable:
            for item in value:
                flags += [flag, str(item)]
        elif isinstance(value, tuple):
            flags += [flag, ",".join(str(v) for v in value)]
        else:
            flags += [flag, str(value)]
    return flags


def app_names(registry: AppRegistry) -> dict[str, str]:
    """Every name an app answers to (id, aliases, built-in short name) → its id."""
    names = {name: app.app_id for app in registry for name in registry.names_of(app)}
    for short, spec in BUILTIN_APPS.items():
        app_id = getattr(load_object(spec), "app_id", None)
        if isinstance(app_id, str) and app_id in names:
            names[short] = app_id
    return names


def local_worker_commands(settings: Settings, registry: AppRegistry) -> list[Any]:
    """One ``framewire worker`` command per device of ``--devices`` (apps placed by ``--app-devices``)."""
    import socket

    from framewire.cluster import placement
    from framewire.cluster.spawn import WorkerCommand, visible_gpus

    assert settings.devices is not None
    devices = placement.parse_devices(settings.devices)
    if devices == ["auto"]:
        devices = placement.auto_devices(visible_gpus())
    assignment = placement.assign_apps(
        [app.app_id for app in registry],
        devices,
        placement.parse_app_devices(settings.app_devices),
        app_names(registry),
    )
    inherited = settings_flags(settings, WORKER_INHERITED)
    host = socket.gethostname()
    commands = []
    for label, device, apps in zip(placement.worker_labels(devices), devices, assignment, strict=True):
        argv = [sys.executable, "-m", "framewire.cli", "worker", *inherited, "--device", device]
        argv += ["--only-apps", ",".join(apps), "--worker-id", f"{host}/{label}"]
        argv += ["--worker-timeout-s", str(settings.worker_timeout_s)]
        commands.append(WorkerCommand(label, argv))
    return commands


def build_engine(settings: Settings, registry: AppRegistry, on_batch: Callable[[Any], None] | None) -> Any:
    """The engine the gateway talks to: in this process, or over links to worker processes."""
    if not settings.workers and not settings.devices:
        from framewire.engine.host import LocalEngine

        return LocalEngine(
            registry,
            queue_delay_override_ms=settings.max_queue_delay_ms,
            max_batch_size_cap=settings.max_batch_size,
            on_batch=on_batch,
        )
    import ssl

    from framewire.cluster import wire
    from framewire.cluster.directory import Directories, Directory, StaticDirectory, parse_addresses
    from framewire.cluster.edge import LinkOptions, RemoteEngine
    from framewire.cluster.spawn import LocalWorkers

    secret = wire.parse_secret(settings.worker_secret) if settings.worker_secret else wire.new_secret()
    parts: list[Directory] = []
    if settings.devices:
        parts.append(LocalWorkers(local_worker_commands(settings, registry), secret))
    if settings.workers:
        parts.append(StaticDirectory(parse_addresses(settings.workers, tls=settings.worker_cafile is not None)))
    context = None
    if settings.worker_cafile is not None:
        try:
            context = ssl.create_default_context(cafile=settings.worker_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--worker-cafile {settings.worker_cafile!r}: {exc}") from None
    options = LinkOptions(
        secret,
        heartbeat_s=settings.worker_heartbeat_s,
        timeout_s=settings.worker_timeout_s,
        ssl_context=context,
    )
    return RemoteEngine(registry, Directories(parts), options)


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM (the first one drains: :mod:`framewire.gateway.drain`)."""
    from framewire.gateway.app import create_gateway
    from framewire.gateway.drain import DrainingServer
    from framewire.gateway.listener import ensure_fd_limit, server_config
    from framewire.gateway.platform.metrics import Metrics

    ensure_fd_limit(settings.max_connections)
    registry = build_registry(settings)
    metrics = Metrics()  # platform: an in-process engine reports each batch to the metrics
    if not settings.workers and not settings.devices:
        configure_kernels(settings)  # workers configure their own
    engine = build_engine(settings, registry, metrics.on_batch)
    gateway = create_gateway(settings, engine, metrics=metrics)
    config = server_config(
        gateway.app,
        settings,
        on_refused=metrics.refused,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        log_config=None,  # our formatter (gateway.platform.logs) handles uvicorn's loggers too
        access_log=False,  # uvicorn logs query strings (tokens); platform.logs logs requests
    )
    sockets = [_bind(settings.host, settings.port)]
    if settings.queue_port is not None:
        sockets.append(_bind(settings.host, settings.queue_port))
    scheme = "https" if settings.ssl_certfile else "http"
    where = ""
    if settings.devices:
        where += f"; engine workers on {settings.devices}"
    if settings.workers:
        where += f"; engine workers at {', '.join(settings.workers)}"
    print(
        f"FrameWire serving {', '.join(a.app_id for a in registry)} on {scheme}://{settings.host}:{settings.port}"
        + (f" (queue on port {settings.queue_port})" if settings.queue_port else "")
        + (" with auth" if settings.auth else " without auth")
        + where,
        flush=True,
    )
    DrainingServer(config, gateway.drain, settings.shutdown_timeout_s).run(sockets=sockets)


def _cmd_serve(args: argparse.Namespace) -> int:
    from framewire.gateway.platform import logs

    try:
        settings = settings_mod.from_sources(args)
        logs.configure(settings.log_level, settings.log_format)
        serve(settings)
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    """``framewire worker``: one engine (a device, a set of apps) serving edges over the link."""
    import asyncio
    import socket
    import ssl

    from framewire.cluster import wire
    from framewire.cluster import worker as worker_mod
    from framewire.engine.host import LocalEngine
    from framewire.gateway.platform import logs

    try:
        options = [o for o in settings_mod.OPTIONS if o.name in WORKER_OPTIONS]
        settings = settings_mod.from_sources(args, options=options)
        logs.configure(settings.log_level, settings.log_format)
        if settings.worker_secret is None:
            raise ValueError(
                "framewire worker needs --worker-secret (or FRAMEWIRE_WORKER_SECRET), the same as its edges'"
            )
        secret = wire.parse_secret(settings.worker_secret)
        configure_kernels(settings)
        registry = build_registry(settings)
        if args.only_apps:
            names = app_names(registry)
            wanted = set()
            for name in settings_mod._list(args.only_apps):
                if name not in names:
                    raise ValueError(f"--only-apps: no app {name!r} is loaded")
                wanted.add(names[name])
            registry = AppRegistry([app for app in registry if app.app_id in wanted])
        port = args.port if args.port is not None else int(os.environ.get("FRAMEWIRE_WORKER_PORT", DEFAULT_WORKER_PORT))
        context = None
        if settings.ssl_certfile is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"--ssl-certfile/--ssl-keyfile: {exc}") from None
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
        port = sock.getsockname()[1]
    else:
        sock = _bind(settings.host, port)
    cap = settings.max_batch_size
    stats = worker_mod.BatchStats(
        {
            ep.key: ep.max_batch_size if cap is None else min(cap, ep.max_batch_size)
            for app in registry
            for ep in registry.endpoints_of(app).values()
        }
    )
    engine = LocalEngine(
        registry,
        queue_delay_override_ms=settings.max_queue_delay_ms,
        max_batch_size_cap=cap,
        on_batch=stats.on_batch,
    )
    worker_id = args.worker_id or f"{socket.gethostname()}:{port}"
    server = worker_mod.WorkerServer(
        engine,
        secret=secret,
        worker_id=worker_id,
        device=settings.device,
        stats=stats,
        edge_timeout_s=settings.worker_timeout_s,
    )
    scheme = "tls" if context is not None else "tcp"

    def ready() -> None:
        print(
            f"FrameWire worker {worker_id} serving {', '.join(a.app_id for a in registry)} "
            f"on {settings.device} at {scheme}://{settings.host}:{port}",
            flush=True,
        )

    main = worker_mod.run(
        server,
        [sock],
        ssl_context=context,
        drain_timeout_s=settings.shutdown_timeout_s,
        on_ready=ready,
        parent_pid=args.parent_pid,
    )
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def _cmd_apps(args: argparse.Namespace) -> int:
    try:
        registry = build_registry(settings_mod.from_sources(args))
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    for app in registry:
        names = registry.names_of(app)
        for path, ep in registry.endpoints_of(app).items():
            kind = "realtime" if ep.spec.realtime else "endpoint"
            print(f"{'/'.join(p for p in (app.app_id, path) if p)}\t{kind}\tmax_batch_size={ep.max_batch_size}")
        if len(names) > 1:
            print(f"  aliases: {', '.join(n for n in names if n != app.app_id)}")
    return 0


def _cmd_webhook_key(args: argparse.Namespace) -> int:
    """Print the webhook signing key's public forms (created on first use)."""
    import json
    from pathlib import Path

    from framewire.gateway.requests.webhooks import WebhookSigner, load_signing_key

    try:
        settings = settings_mod.from_sources(args)
        signer = WebhookSigner(load_signing_key(Path(settings.data_dir) / "webhook_ed25519.pem"))
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"jwks": signer.jwks(), "standard_webhooks_public_key": signer.standard_public_key}, indent=2))
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    from framewire.bench.bench import main as bench_main  # the harness and its plotting stack load only here

    return bench_main(argv)


# -- platform: keys, usage, health -----------------------------------------------------------


def _run_with_db(settings: Settings, work: Callable[[Any], Awaitable[int]]) -> int:
    """Open the data dir's store (migrating it), run ``work(db)``, close it."""
    import asyncio
    from pathlib import Path

    from framewire.gateway.app import MIGRATIONS
    from framewire.gateway.db import Database

    async def main() -> int:
        db = Database(Path(settings.data_dir) / "framewire.db", MIGRATIONS)
        await db.open()
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())


def _cmd_keys(args: argparse.Namespace) -> int:
    """``framewire keys create|list|revoke``: works on the store directly, with or without a running server."""
    import json

    from framewire.gateway.platform.auth import Limits
    from framewire.gateway.platform.keys import KeyStore, NewKey, parse_apps

    try:
        settings = settings_mod.from_sources({"data_dir": args.data_dir})
        new = None
        if args.keys_command == "create":
            limits = Limits(args.requests_per_s, args.max_sessions, args.frames_per_s)
            new = NewKey(args.name or "", parse_apps(args.app), args.admin, limits)
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2

    async def work(db: Any) -> int:
        store = KeyStore(db)
        if new is not None:
            record, key = await store.create(new)
            if args.json:
                print(json.dumps({**record.to_json(), "key": key}, indent=2))
            else:
                print(key)
                print(f"  id {record.id}; the secret is shown only now: store it safely", file=sys.stderr)
            return 0
        if args.keys_command == "list":
            records = await store.list(include_revoked=args.all)
            if args.json:
                print(json.dumps([r.to_json() for r in records], indent=2))
                return 0
            print("ID\tNAME\tAPPS\tADMIN\tREQ/S\tSESSIONS\tFRAMES/S\tCREATED\tREVOKED")
            for r in records:
                lim = r.limits
                cells = [
                    r.id,
                    r.name or "-",
                    ",".join(r.apps) if r.apps is not None else "*",
                    "yes" if r.admin else "no",
                    *("-" if v is None else f"{v:g}" for v in (lim.requests_per_s, lim.max_sessions, lim.frames_per_s)),
                    r.to_json()["created_at"],
                    r.to_json()["revoked_at"] or "-",
                ]
                print("\t".join(cells))
            return 0
        revoked = await store.revoke(args.key_id)
        if revoked is None:
            print(f"framewire: no key with id {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked {revoked.id} (a running server stops accepting it within a second)")
        return 0

    return _run_with_db(settings, work)


def _cmd_usage(args: argparse.Namespace) -> int:
    """``framewire usage``: usage from the store (a running server writes it every few seconds)."""
    import json
    import time

    from framewire.gateway.platform.usage import UsageQuery, parse_time, report_json, select

    try:
        settings = settings_mod.from_sources({"data_dir": args.data_dir})
        end = parse_time(args.end, "--end") if args.end else None
        start = parse_time(args.start, "--start") if args.start else (end or time.time()) - 24 * 3600
        query = UsageQuery(key_id=args.key_id, app=args.app, start=start, end=end, granularity=args.granularity)
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2

    async def work(db: Any) -> int:
        rows = await db.read(lambda conn: select(conn, query))
        report = report_json(query, rows)
        if args.json:
            print(json.dumps(report, indent=2))
            return 0
        print("BUCKET\tKEY\tAPP\tREQUESTS\tOUTPUTS\tERRORS\tCOMPUTE_MS")
        for entry in report["time_series"]:
            for r in entry["results"]:
                cells = (entry["bucket"] or "total", r["key_id"], r["app"], r["requests"], r["outputs"], r["errors"])
                print("\t".join(str(c) for c in cells) + f"\t{r['compute_ms']:.1f}")
        t = report["totals"]
        print(f"total\t*\t*\t{t['requests']}\t{t['outputs']}\t{t['errors']}\t{t['compute_ms']:.1f}")
        return 0

    return _run_with_db(settings, work)


def _cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the server answers ``/health`` (or ``/ready`` with ``--ready``) with 200.

    Without ``--url`` it asks this machine's server, on the port and scheme the
    ``FRAMEWIRE_*`` settings give (a container's health check needs no arguments). It does
    not verify a TLS certificate: it checks that the server answers, not who it is.
    """
    import ssl
    import urllib.error
    import urllib.request

    base = args.url
    if base is None:
        names = ("host", "port", "ssl_certfile", "ssl_keyfile")
        try:
            settings = settings_mod.from_sources({}, options=[o for o in settings_mod.OPTIONS if o.name in names])
        except ValueError as exc:
            print(f"framewire: {exc}", file=sys.stderr)
            return 2
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        base = f"{'https' if settings.ssl_certfile else 'http'}://{host}:{settings.port}"
    url = base.rstrip("/") + ("/ready" if args.ready else "/health")
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=args.timeout_s, context=context) as response:
            ok = response.status == 200
    except urllib.error.HTTPError as exc:
        print(f"framewire: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"framewire: {url} did not answer ({exc})", file=sys.stderr)
        return 1
    return 0 if ok else 1


def _add_platform_commands(sub: Any) -> None:
    data_dir = [o for o in settings_mod.OPTIONS if o.name == "data_dir"]
    p_keys = sub.add_parser("keys", help="create, list and revoke API keys (in the data dir's store)")
    keys_sub = p_keys.add_subparsers(dest="keys_command", required=True)
    p_create = keys_sub.add_parser("create", help="create a key; prints id:secret once")
    p_create.add_argument("--name", help="a label for the key")
    p_create.add_argument("--app", action="append", help="app the key may use (repeatable; default: every app)")
    p_create.add_argument("--admin", action="store_true", help="may manage keys and read every key's usage")
    p_create.add_argument("--requests-per-s", type=float, help="limit on runs, streams and queue submits per second")
    p_create.add_argument("--max-sessions", type=int, help="limit on realtime sessions open at once")
    p_create.add_argument("--frames-per-s", type=float, help="limit on realtime frames per second (all sessions)")
    p_create.add_argument("--json", action="store_true", help="print the record as JSON")
    p_list = keys_sub.add_parser("list", help="list keys (never their secrets)")
    p_list.add_argument("--all", action="store_true", help="include revoked keys")
    p_list.add_argument("--json", action="store_true")
    p_revoke = keys_sub.add_parser("revoke", help="revoke a key at once")
    p_revoke.add_argument("key_id")
    for p in (p_create, p_list, p_revoke):
        settings_mod.add_arguments(p, data_dir)
    p_keys.set_defaults(func=_cmd_keys)
    p_usage = sub.add_parser("usage", help="print usage by key and app")
    p_usage.add_argument("--key-id", help="only this key")
    p_usage.add_argument("--app", help="only this app id")
    p_usage.add_argument("--start", help="from (unix seconds or ISO 8601; default: 24 h ago)")
    p_usage.add_argument("--end", help="until, exclusive (default: now)")
    p_usage.add_argument("--granularity", default="hour", choices=("minute", "hour", "day", "total"))
    p_usage.add_argument("--json", action="store_true", help="print the GET /v1/usage document")
    settings_mod.add_arguments(p_usage, data_dir)
    p_usage.set_defaults(func=_cmd_usage)
    p_health = sub.add_parser("health", help="exit 0 when a server answers /health (container health checks)")
    p_health.add_argument("--url", help="the server's base URL (default: this machine, port from the settings)")
    p_health.add_argument("--ready", action="store_true", help="check /ready (warm and not draining) instead")
    p_health.add_argument("--timeout-s", type=float, default=5.0)
    p_health.set_defaults(func=_cmd_health)


def _cmd_mcp(args: argparse.Namespace) -> int:
    """``framewire mcp``: the stdio bridge to a server's ``/mcp`` (stdout carries the protocol)."""
    from framewire.gateway.mcp import bridge

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="framewire mcp: %(message)s")
    key = args.key or os.environ.get("FRAMEWIRE_KEY") or None
    try:
        bridge.run(bridge.mcp_url(args.url), key)
    except (bridge.BridgeError, ValueError) as exc:
        print(f"framewire mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from framewire.engine import weights

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("framewire.engine").setLevel(logging.INFO)  # the size of each download, before it starts
    try:
        loras = tuple(LoraSpec.parse(text) for text in args.lora or ())
        pulled = weights.pull(
            args.app,
            repo=args.repo,
            local_dir=Path(args.dir) if args.dir else None,
            tiny_vae=not args.no_tiny_vae,
            loras=loras,
            timeout_s=args.hub_timeout_s,
        )
    except (weights.WeightsError, ValueError) as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    for what, where in pulled:
        print(f"{what}: {where}")
    flags: list[str] = []
    if args.dir:
        flags.append(f"--weights {args.app}={pulled[0][1]}")
    elif args.repo:
        flags.append(f"--weights {args.app}={args.repo}")
    if not args.no_tiny_vae:
        flags.append("--tiny-vae")
    for spec, (_, where) in zip(loras, pulled[len(pulled) - len(loras) :], strict=True):
        source = str(where) if args.dir else spec.source
        flags.append(f"--lora {args.app}={source}" + (f":{spec.scale:g}" if spec.scale != 1.0 else ""))
    print(f"start with: framewire serve {' '.join(flags)}".rstrip())
    return 0


def _cmd_init_weights(args: argparse.Namespace) -> int:
    from framewire.engine import weights

    try:
        folder = weights.init_weights(args.arch, Path(args.dir), seed=args.seed, dtype=args.dtype, device=args.device)
    except (weights.WeightsError, ValueError, RuntimeError) as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    app = "sdxl-turbo" if "sdxl" in args.arch else "lcm"
    print(f"random {args.arch} weights (outputs are noise) in {folder}")
    print(f"start with: framewire serve --weights {app}={folder}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="framewire", description="Self-hosted realtime inference edge.")
    sub = root.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (realtime, REST, demo page)")
    settings_mod.add_arguments(p_serve)
    p_serve.set_defaults(func=_cmd_serve)
    p_worker = sub.add_parser("worker", help="run an engine worker (one device) that edges reach over a link")
    settings_mod.add_arguments(p_worker, [o for o in settings_mod.OPTIONS if o.name in WORKER_OPTIONS])
    p_worker.add_argument(
        "--port", type=int, help=f"port edges connect to [FRAMEWIRE_WORKER_PORT, default {DEFAULT_WORKER_PORT}]"
    )
    p_worker.add_argument("--worker-id", help="name shown by edges (default: HOSTNAME:PORT)")
    p_worker.add_argument("--only-apps", help="serve only these of the loaded apps (ids or names, comma separated)")
    p_worker.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a listening socket from the edge
    p_worker.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # stop when this edge is gone
    p_worker.set_defaults(func=_cmd_worker)
    p_apps = sub.add_parser("apps", help="list the apps and endpoints a serve would load")
    settings_mod.add_arguments(p_apps, [o for o in settings_mod.OPTIONS if o.name in ("apps", "builtin_apps")])
    p_apps.set_defaults(func=_cmd_apps)
    p_pull = sub.add_parser("pull", help="download an app's weights ahead of time (needs the Hugging Face Hub)")
    p_pull.add_argument("app", choices=DIFFUSION_APPS)
    p_pull.add_argument("--repo", help="another diffusers pipeline repo OWNER/NAME instead of the app's default")
    p_pull.add_argument(
        "--lora", action="append", help="a LoRA to fetch too, OWNER/NAME[/FILE.safetensors][:scale] (repeatable)"
    )
    p_pull.add_argument("--dir", help="download into this folder instead of the Hugging Face cache")
    p_pull.add_argument("--no-tiny-vae", action="store_true", help="skip the tiny VAE (TAESD/TAESDXL)")
    p_pull.add_argument("--hub-timeout-s", type=float, default=30.0, help="longest wait for the Hub's first answer")
    p_pull.set_defaults(func=_cmd_pull)
    p_init = sub.add_parser("init-weights", help="write random weights built from a config (outputs are noise)")
    p_init.add_argument("--arch", required=True, choices=("tiny", "tiny-sdxl", "sd15", "sdxl"))
    p_init.add_argument("dir", help="folder to write (replaced if it exists)")
    p_init.add_argument("--seed", type=int, default=0)
    p_init.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p_init.add_argument("--device", default="cpu", help="build on this device (cuda is much faster for sd15/sdxl)")
    p_init.set_defaults(func=_cmd_init_weights)
    p_mcp = sub.add_parser(
        "mcp", help="stdio MCP server for an assistant that launches local servers; calls go to a server's /mcp"
    )
    p_mcp.add_argument(
        "--url", required=True, help="the server's MCP URL, e.g. https://host:8000/mcp (or its base URL)"
    )
    p_mcp.add_argument("--key", help="API key id:secret (default: $FRAMEWIRE_KEY; none for a server without --auth)")
    p_mcp.set_defaults(func=_cmd_mcp)
    p_key = sub.add_parser("webhook-key", help="print the public key webhooks are signed with (JWKS and whpk_)")
    settings_mod.add_arguments(p_key, [o for o in settings_mod.OPTIONS if o.name == "data_dir"])
    p_key.set_defaults(func=_cmd_webhook_key)
    p_bench = sub.add_parser(
        "bench", help="latency benchmark against baselines (`framewire bench --help`)", add_help=False
    )
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)  # listed here; main() hands them over whole

    _add_platform_commands(sub)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # the harness parses its own flags (`--help` included)
        return _cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
