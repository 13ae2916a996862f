"""What every result is stamped with: the machine, the accelerator, the versions, the
code revision and how busy the machine was. Reads files and runs ``nvidia-smi`` and
``git`` when present; never imports torch (a GPU is found without it)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: Distributions whose versions change what a benchmark measures.
PACKAGES = (
    "framewire",
    "starlette",
    "uvicorn",
    "websockets",
    "uvloop",
    "httptools",
    "msgpack",
    "pydantic",
    "pydantic-core",
    "torch",
    "diffusers",
    "triton",
    "psutil",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as ``nvidia-smi`` reports them; empty when there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    out = []
    for line in done.stdout.strip().splitlines():
        name, memory, driver = (part.strip() for part in line.split(",", 2))
        out.append({"name": name, "memory": memory, "driver": driver})
    return out


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, Any]:
    if shutil.which("git") is None:
        return {}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def stamp() -> dict[str, Any]:
    """The stamp for one benchmark invocation."""
    import psutil

    return {
        "time_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": {
            "model": cpu_model(),
            "logical_cores": os.cpu_count(),
            "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        },
        "gpus": gpus(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions(),
        "git": git_revision(),
        "load_average_at_start": list(os.getloadavg()),
    }


def describe(stamp_: dict[str, Any]) -> str:
    """One line naming the machine, e.g. for a table caption."""
    cpu = stamp_["cpu"]
    gpu = ", ".join(g["name"] for g in stamp_.get("gpus", [])) or "no GPU"
    return f"{cpu['model']} ({cpu['logical_cores']} logical cores, {cpu['memory_gb']} GB), {gpu}"
