"""The layers of DESIGN §2: gateway → framewire.engine.api → engine → kernels, never upwards.

framewire.cluster (engine workers and the link to them) sits beside the gateway: it reaches
engines only through framewire.engine.api, never imports torch, a web framework or the
gateway, and the gateway reaches it only through the EngineClient the CLI hands it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "triton", "numpy")
WEB = ("starlette", "uvicorn", "fastapi", "websockets", "httpx", "sse_starlette", "framewire.gateway")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((ROOT / "framewire" / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


def within(name: str, package: str) -> bool:
    """``name`` is ``package`` or one of its modules (``package`` may be dotted)."""
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("path", modules("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateway_imports_only_the_torch_free_engine_api(path: Path) -> None:
    found = imports_of(path)
    assert not {n for n in found if top(n) in HEAVY}, f"{path.name} imports a heavy library"
    engine_imports = {n for n in found if within(n, "framewire.engine") or within(n, "framewire.kernels")}
    assert engine_imports <= {"framewire.engine.api"}, f"{path.name} imports {engine_imports}"


@pytest.mark.parametrize("path", modules("engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_no_web_framework(path: Path) -> None:
    found = imports_of(path)
    assert not {n for n in found if any(within(n, web) for web in WEB)}
    assert not {n for n in found if within(n, "framewire.bench") or within(n, "framewire.cli")}
    assert not {n for n in found if within(n, "framewire.cluster")}, f"{path.name} imports the cluster"


@pytest.mark.parametrize("path", modules("cluster"), ids=lambda p: str(p.relative_to(ROOT)))
def test_cluster_reaches_engines_only_through_the_engine_api(path: Path) -> None:
    found = imports_of(path)
    assert not {n for n in found if top(n) in HEAVY}, f"{path.name} imports a heavy library"
    assert not {n for n in found if any(within(n, web) for web in WEB)}, f"{path.name} imports a web framework"
    own = {n for n in found if top(n) == "framewire"}
    outside = {n for n in own if not within(n, "framewire.cluster")}
    assert outside <= {"framewire.engine.api"}, f"{path.name} imports {outside}"


@pytest.mark.parametrize("path", modules("gateway"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateway_never_imports_the_cluster(path: Path) -> None:
    assert not {n for n in imports_of(path) if within(n, "framewire.cluster")}, f"{path.name} imports the cluster"


@pytest.mark.parametrize("path", modules("kernels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernels_depend_only_on_torch_and_triton(path: Path) -> None:
    allowed = {"torch", "triton", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    found = imports_of(path)
    own = {n for n in found if top(n) == "framewire"}
    assert all(within(n, "framewire.kernels") for n in own), f"{path.name} imports {own}"
    assert {top(n) for n in found - own} <= allowed | stdlib


def test_importing_the_gateway_loads_no_torch() -> None:
    code = (
        "import sys, framewire.gateway.app, framewire.cli, framewire.gateway.realtime.endpoint\n"
        "import framewire.gateway.realtime.session, framewire.engine.host, framewire.engine.apps.echo\n"
        "import framewire.engine.apps.lcm, framewire.engine.apps.sdxl_turbo, framewire.gateway.settings\n"
        "import framewire.cluster.edge, framewire.cluster.worker, framewire.cluster.spawn\n"
        "settings = framewire.gateway.settings.Settings(workers=('127.0.0.1:7100',), worker_secret='s' * 32)\n"
        "framewire.cli.build_engine(settings, framewire.cli.build_registry(settings), None)  # an edge's engine\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
