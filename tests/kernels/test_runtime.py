"""The switch, the guard and fallback reports; the ops without Triton; the name shared with a hub package."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from framewire.kernels import runtime

ROOT = Path(__file__).resolve().parents[2]


def fake_tensor(device: str) -> SimpleNamespace:
    return SimpleNamespace(device=SimpleNamespace(type=device))


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("on", True), (" TRUE ", True), ("0", False), ("off", False)])
def test_switch_words(raw: str, value: bool) -> None:
    assert runtime.parse_switch(raw) is value


def test_a_bad_switch_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="FRAMEWIRE_KERNELS='maybe'"):
        runtime.parse_switch("maybe")


def test_switch_is_read_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_enabled", None)
    monkeypatch.setenv(runtime.ENV_VAR, "0")
    assert runtime.enabled() is False
    monkeypatch.setenv(runtime.ENV_VAR, "1")
    assert runtime.enabled() is False, "a later change of the environment must not flip the kernels mid-run"
    runtime.configure(enabled=True)
    assert runtime.enabled() is True


def test_switch_defaults_to_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_enabled", None)
    monkeypatch.delenv(runtime.ENV_VAR, raising=False)
    assert runtime.enabled() is True


def test_guard_names_why_a_kernel_cannot_run() -> None:
    compiled = object()  # stands for a kernel compiled for the GPU
    assert runtime.triton_blocker(compiled, [fake_tensor("cuda")]) is None
    assert runtime.triton_blocker(compiled, [fake_tensor("cuda"), fake_tensor("cpu")]) == runtime.NOT_CUDA
    assert runtime.triton_blocker(None, [fake_tensor("cuda")]) == runtime.NO_TRITON
    runtime.configure(enabled=False)
    assert runtime.triton_blocker(compiled, [fake_tensor("cuda")]) == runtime.OFF


def test_interpreted_kernels_take_cpu_tensors_only_when_allowed() -> None:
    from framewire.kernels import postprocess

    if postprocess._postprocess_kernel is None or not runtime.interpreted(postprocess._postprocess_kernel):
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1)")
    assert runtime.triton_blocker(postprocess._postprocess_kernel, [fake_tensor("cpu")]) is None
    runtime.allow_cpu_interpreter(False)  # what every process outside the kernels' tests has
    assert runtime.triton_blocker(postprocess._postprocess_kernel, [fake_tensor("cpu")]) == runtime.NOT_CUDA


def test_each_fallback_is_reported_once_and_a_surprise_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A CPU engine's fallback is the only path (debug: a CPU start stays quiet)."""
    with caplog.at_level(logging.DEBUG, logger="framewire.kernels"):
        for _ in range(3):
            runtime.report_fallback("framewire::a", runtime.NOT_CUDA)
            runtime.report_fallback("framewire::a", runtime.NO_TRITON)
            runtime.report_fallback("framewire::b", runtime.NOT_CUDA)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, f"framewire::a runs its torch reference: {runtime.NOT_CUDA}"),
        (logging.WARNING, f"framewire::a runs its torch reference: {runtime.NO_TRITON}"),
        (logging.DEBUG, f"framewire::b runs its torch reference: {runtime.NOT_CUDA}"),
    ]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | env
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=environment, capture_output=True, text=True
    )


def test_every_op_works_without_triton() -> None:
    """Where Triton is not installed (macOS, Arm) the engine still runs: references, logged once each."""
    done = run_python(
        """
        import logging, sys
        sys.modules["triton"] = None  # makes `import triton` raise ImportError
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(message)s")  # a CPU fallback is debug
        import torch
        import torch.nn.functional as F
        from framewire.kernels import group_norm_silu, postprocess, preprocess

        images = [torch.randint(0, 256, (6, 5, 3), dtype=torch.uint8)]
        x = preprocess.preprocess(images, torch.empty(1, 3, 4, 4))
        assert torch.equal(x, preprocess.preprocess_reference(images, torch.empty(1, 3, 4, 4)))
        pixels = postprocess.postprocess(x, torch.empty(1, 4, 4, 3, dtype=torch.uint8))
        assert torch.equal(pixels, postprocess.postprocess_reference(x, torch.empty(1, 4, 4, 3, dtype=torch.uint8)))
        y = group_norm_silu.group_norm_silu(x, 3)
        assert torch.equal(y, F.silu(F.group_norm(x, 3)))
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert done.stderr.count("runs its torch reference") == 3, done.stderr


def test_the_runtime_imports_without_torch() -> None:
    """The server's command line configures the switch before (and without) loading torch."""
    done = run_python("import sys, framewire.kernels.runtime; assert 'torch' not in sys.modules, 'torch loaded'")
    assert done.returncode == 0, done.stderr
