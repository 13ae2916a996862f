"""``framewire``: the command line and the composition root (settings → engine → uvicorn).

This is the one module of the gateway package that wires in the engine's runtime; the
rest of the gateway sees only ``engine.api``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from engine.api import App, AppRegistry
from engine.config import Backend, DiffusionConfig, default_cache_dir, parse_size
from gateway import settings as settings_mod
from gateway.settings import Settings

log = logging.getLogger("framewire")

#: Built-in apps by short name: ``module:ClassName``.
BUILTIN_APPS: dict[str, str] = {
    "echo": "engine.apps.echo:EchoApp",
    "lcm": "engine.apps.lcm:LcmApp",
    "sdxl-turbo": "engine.apps.sdxl_turbo:SdxlTurboApp",
}
#: The built-in apps that take a :class:`engine.config.DiffusionConfig` (weights, device, backend).
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
    raise ValueError(f"--app {spec!r}: expected an engine.api.App subclass or instance")


def diffusion_configs(settings: Settings) -> dict[str, DiffusionConfig]:
    """The engine settings of each built-in diffusion app, by short name."""
    weights: dict[str, str] = {}
    for spec in settings.weights:
        name, _, where = spec.partition("=")
        if name not in DIFFUSION_APPS:
            raise ValueError(f"--weights {spec!r}: no diffusion app {name!r}; choose from {', '.join(DIFFUSION_APPS)}")
        weights[name] = where
    cache_dir = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir()
    common = {
        "device": settings.device,
        "backend": Backend(settings.backend),
        "dtype": settings.dtype,
        "tiny_vae": settings.tiny_vae,
        "cache_dir": cache_dir,
        "batch_buckets": settings.batch_buckets,
        "warmup_sizes": tuple(parse_size(s) for s in settings.warmup_sizes) or None,
    }
    return {name: DiffusionConfig(weights=weights.get(name), **common) for name in DIFFUSION_APPS}  # type: ignore[arg-type]


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


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM."""
    import uvicorn

    from engine.host import LocalEngine
    from gateway.app import create_app

    registry = build_registry(settings)
    engine = LocalEngine(registry, queue_delay_override_ms=settings.max_queue_delay_ms)
    app = create_app(settings, engine)
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        ws_per_message_deflate=False,  # ~7 ms per 100 KB JPEG frame, for no gain on JPEG
        ws_max_size=4 * settings.max_frame_bytes,  # hard cap (close 1009); the soft cap is per frame
        timeout_graceful_shutdown=10,
    )
    sockets = [_bind(settings.host, settings.port)]
    if settings.queue_port is not None:
        sockets.append(_bind(settings.host, settings.queue_port))
    scheme = "https" if settings.ssl_certfile else "http"
    print(
        f"FrameWire serving {', '.join(a.app_id for a in registry)} on {scheme}://{settings.host}:{settings.port}"
        + (f" (queue on port {settings.queue_port})" if settings.queue_port else "")
        + (" with auth" if settings.auth else " without auth"),
        flush=True,
    )
    uvicorn.Server(config).run(sockets=sockets)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.from_sources(args)
        logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(settings)
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    return 0


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


def _cmd_pull(args: argparse.Namespace) -> int:
    from engine import weights

    try:
        folders = weights.pull(args.app, local_dir=Path(args.dir) if args.dir else None, tiny_vae=not args.no_tiny_vae)
    except weights.WeightsError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    print(f"{args.app}: weights in {folders[0]}")
    print(f"start with: framewire serve --weights {args.app}={folders[0]}")
    return 0


def _cmd_init_weights(args: argparse.Namespace) -> int:
    from engine import weights

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
    p_apps = sub.add_parser("apps", help="list the apps and endpoints a serve would load")
    settings_mod.add_arguments(p_apps, [o for o in settings_mod.OPTIONS if o.name in ("apps", "builtin_apps")])
    p_apps.set_defaults(func=_cmd_apps)
    p_pull = sub.add_parser("pull", help="download an app's default real weights (needs network)")
    p_pull.add_argument("app", choices=DIFFUSION_APPS)
    p_pull.add_argument("--dir", help="download into this folder instead of the hub cache")
    p_pull.add_argument("--no-tiny-vae", action="store_true", help="skip the tiny VAE (TAESD/TAESDXL)")
    p_pull.set_defaults(func=_cmd_pull)
    p_init = sub.add_parser("init-weights", help="write random weights built from a config (outputs are noise)")
    p_init.add_argument("--arch", required=True, choices=("tiny", "tiny-sdxl", "sd15", "sdxl"))
    p_init.add_argument("dir", help="folder to write (replaced if it exists)")
    p_init.add_argument("--seed", type=int, default=0)
    p_init.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    p_init.add_argument("--device", default="cpu", help="build on this device (cuda is much faster for sd15/sdxl)")
    p_init.set_defaults(func=_cmd_init_weights)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
