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

from engine.api import App, AppRegistry
from gateway import settings as settings_mod
from gateway.settings import Settings

log = logging.getLogger("framewire")

#: Built-in apps by short name: ``module:ClassName``.
BUILTIN_APPS: dict[str, str] = {
    "echo": "engine.apps.echo:EchoApp",
}


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


def build_registry(settings: Settings) -> AppRegistry:
    registry = AppRegistry()
    for name in settings.builtin_apps:
        if name not in BUILTIN_APPS:
            raise ValueError(f"unknown built-in app {name!r}; choose from {', '.join(BUILTIN_APPS)}")
        spec = BUILTIN_APPS[name]
        registry.add(instantiate_app(load_object(spec), spec))
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
    from kernels import runtime

    runtime.configure(enabled=settings.kernels)


def serve(settings: Settings) -> None:
    """Run the server until SIGINT/SIGTERM."""
    import uvicorn

    from engine.host import LocalEngine
    from gateway.app import create_app

    configure_kernels(settings)
    registry = build_registry(settings)
    engine = LocalEngine(
        registry,
        queue_delay_override_ms=settings.max_queue_delay_ms,
        max_batch_size_cap=settings.max_batch_size,
    )
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


def _cmd_webhook_key(args: argparse.Namespace) -> int:
    """Print the webhook signing key's public forms (created on first use)."""
    import json
    from pathlib import Path

    from gateway.webhooks import WebhookSigner, load_signing_key

    try:
        settings = settings_mod.from_sources(args)
        signer = WebhookSigner(load_signing_key(Path(settings.data_dir) / "webhook_ed25519.pem"))
    except ValueError as exc:
        print(f"framewire: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"jwks": signer.jwks(), "standard_webhooks_public_key": signer.standard_public_key}, indent=2))
    return 0


def _cmd_bench(argv: Sequence[str]) -> int:
    from benchmarks.bench import main as bench_main  # the harness and its plotting stack load only here

    return bench_main(argv)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="framewire", description="Self-hosted realtime inference edge.")
    sub = root.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server (realtime, REST, demo page)")
    settings_mod.add_arguments(p_serve)
    p_serve.set_defaults(func=_cmd_serve)
    p_apps = sub.add_parser("apps", help="list the apps and endpoints a serve would load")
    settings_mod.add_arguments(p_apps, [o for o in settings_mod.OPTIONS if o.name in ("apps", "builtin_apps")])
    p_apps.set_defaults(func=_cmd_apps)
    p_key = sub.add_parser("webhook-key", help="print the public key webhooks are signed with (JWKS and whpk_)")
    settings_mod.add_arguments(p_key, [o for o in settings_mod.OPTIONS if o.name == "data_dir"])
    p_key.set_defaults(func=_cmd_webhook_key)
    p_bench = sub.add_parser(
        "bench", help="latency benchmark against baselines (`framewire bench --help`)", add_help=False
    )
    p_bench.add_argument("bench_args", nargs=argparse.REMAINDER)  # listed here; main() hands them over whole
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
