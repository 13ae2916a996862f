"""The kernels benchmark stays runnable: a smoke run on this machine (its numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_runs_every_op_against_its_reference(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    out = tmp_path / "kernels.json"
    env = os.environ | {"TRITON_INTERPRET": "1"} if os.environ.get("FRAMEWIRE_TEST_DEVICE", "cpu") == "cpu" else None
    done = subprocess.run(
        [sys.executable, "-m", "framewire.bench.kernels_bench", "--quick", "--no-compile", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    variants = {(row["case"].split()[0], row["variant"]) for row in result["rows"]}
    for op, reference in (
        ("preprocess", "reference eager"),
        ("postprocess", "reference eager"),
        ("group_norm_silu", "eager GroupNorm + SiLU"),
    ):
        assert (op, "kernel") in variants and (op, reference) in variants, variants
    assert all(row["ms"] > 0 and row["bytes"] > 0 for row in result["rows"])
    assert result["copy_gbs"] > 0 and result["environment"]["torch"]
