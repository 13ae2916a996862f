"""The ONNX half of the TensorRT backend, checked with onnxruntime on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from framewire.engine.export import UNetForExport, export
from framewire.engine.runner import DiffusionRunner


def test_the_tiny_unet_exports_to_onnx_and_onnxruntime_matches_torch(
    lcm_runner: DiffusionRunner, tmp_path: Path
) -> None:
    module = UNetForExport(lcm_runner.unet)
    cpu = torch.device("cpu")
    path = export(
        module,
        module.example(2, 8, 8, dtype=torch.float32, device=cpu),
        module.input_names(),
        "eps",
        tmp_path / "unet.onnx",
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    for batch in (1, 3):  # one graph for every batch bucket
        args = module.example(batch, 8, 8, dtype=torch.float32, device=cpu)
        with torch.inference_mode():
            expected = module(*args).numpy()
        (got,) = session.run(None, {name: a.numpy() for name, a in zip(module.input_names(), args, strict=True)})
        assert got.shape == expected.shape == (batch, 4, 8, 8)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
