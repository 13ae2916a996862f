"""Kernel tests: Triton's interpreter on the CPU by default, compiled kernels on a GPU.

``TRITON_INTERPRET=1`` must be set before Triton decorates a kernel, so it is set here,
when pytest collects this folder, before any test module imports ``kernels`` (and, since the
engine imports the kernels too, by ``tests/conftest.py`` for the whole suite). On a GPU
machine, ``FRAMEWIRE_TEST_DEVICE=cuda TRITON_INTERPRET=0`` runs the same tests against the
compiled kernels.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

from collections.abc import Iterator

import pytest
import torch

from framewire.kernels import runtime

DEVICE = torch.device(os.environ.get("FRAMEWIRE_TEST_DEVICE", "cpu"))

#: Kernel vs reference, per output dtype. float32: reduction order only. float16: one unit
#: in the last place. bfloat16: one unit in the last place as well, but the interpreter
#: truncates float32 → bfloat16 where the GPU rounds to nearest, so a full 2^-7 relative.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 1e-3, "atol": 1e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}
FLOAT_DTYPES = list(TOLERANCES)


@pytest.fixture(autouse=True)
def kernels_on() -> Iterator[None]:
    """Every test starts with the switch on, interpreted kernels allowed on CPU tensors and a
    clean fallback log, whatever the environment says; other test folders see none of it."""
    before = runtime._enabled
    runtime.configure(enabled=True)
    runtime.allow_cpu_interpreter(True)
    runtime.forget_reports()
    yield
    runtime._enabled = before
    runtime.allow_cpu_interpreter(False)
    runtime.forget_reports()


def require_kernel(kernel: object) -> None:
    """Fail (never silently compare reference with reference) when ``kernel`` cannot run on DEVICE."""
    pytest.importorskip("triton")
    reason = runtime.triton_blocker(kernel, [torch.empty(0, device=DEVICE)])
    if reason is not None:
        pytest.fail(
            f"the Triton kernel cannot run on {DEVICE}: {reason}. Was a kernels module imported before "
            "TRITON_INTERPRET=1 was set (it is set by tests/kernels/conftest.py)?"
        )


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    """A buffer whose every element is a value no kernel writes, to catch unwritten elements."""
    fill = 251 if dtype == torch.uint8 else float("nan")
    out = torch.full(shape, fill, dtype=dtype, device=DEVICE)
    return out.to(memory_format=torch.channels_last) if channels_last else out
