"""The TensorRT backend: ONNX exports of the UNet and VAE decoder built into engines.

Engines are cached under ``<cache_dir>/tensorrt/<key>/`` where the key hashes what an
engine depends on: component, model files (names, sizes, times), dtype, image size,
batch buckets, torch / onnx / TensorRT versions and the GPU. A manifest beside each
engine records the key's inputs; any change builds a new engine, never a crash.

One engine per (component, image size) covers every batch bucket through a dynamic
batch axis (profile min 1, opt and max the largest bucket, doubled for guidance).
The VAE encoder (image-to-image) stays in torch. Engines for the warm-up sizes are
built before the server reports ready; other sizes are built on first use (logged).

Needs the ``tensorrt`` package and a CUDA GPU; neither exists on CPU CI, so this module
is exercised there only up to its import guard (the ONNX export half is tested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from framewire.engine.backend import Backend, BackendUnavailable
from framewire.engine.config import DiffusionConfig
from framewire.engine.export import DecoderForExport, UNetForExport, export
from framewire.engine.imaging import to_uint8

if TYPE_CHECKING:
    from framewire.engine.runner import DiffusionRunner

log = logging.getLogger("framewire.engine")

_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT64": torch.int64,
    "INT32": torch.int32,
}


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailable(
            f"--backend tensorrt needs the tensorrt package with NVIDIA's libraries ({exc}); "
            "install it on a CUDA machine, or choose --backend compile"
        ) from None
    return tensorrt


class Engine:
    """One deserialised TensorRT engine and its execution context."""

    def __init__(self, trt: Any, plan: bytes, device: torch.device) -> None:
        self.trt = trt
        self.device = device
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialise the engine")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        for name, tensor in zip(self.inputs, tensors, strict=True):
            want = _TORCH_DTYPES[self.engine.get_tensor_dtype(name).name]
            tensor = tensor.to(want).contiguous()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        (name,) = self.outputs
        shape = tuple(self.context.get_tensor_shape(name))
        out = torch.empty(shape, dtype=_TORCH_DTYPES[self.engine.get_tensor_dtype(name).name], device=self.device)
        self.context.set_tensor_address(name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


class _TrtUNet:
    """Called like a diffusers UNet by :class:`framewire.engine.backend.StepModule`."""

    def __init__(self, backend: TensorRTBackend) -> None:
        self.backend = backend

    def __call__(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        *,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        return_dict: bool,
    ) -> tuple[torch.Tensor]:
        args = [sample, t, encoder_hidden_states]
        if timestep_cond is not None:
            args.append(timestep_cond)
        if added_cond_kwargs is not None:
            args += [added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]]
        height, width = sample.shape[-2:]
        return (self.backend.engine_for("unet", height, width)(*args),)


class TensorRTBackend(Backend):
    static_shapes = True

    def __init__(self, runner: DiffusionRunner, config: DiffusionConfig) -> None:
        if runner.device.type != "cuda":
            raise BackendUnavailable(f"--backend tensorrt needs a CUDA GPU; the device is {runner.device}")
        self.trt = _import_tensorrt()
        super().__init__(runner)
        self.runner = runner
        self.config = config
        self.root = Path(config.cache_dir) / "tensorrt"
        self.engines: dict[tuple[str, int, int], Engine] = {}
        self.step_module.unet = _TrtUNet(self)
        log.warning("tensorrt backend: the VAE encoder (image-to-image) runs in torch")

    # -- engines ---------------------------------------------------------------------------

    def _key(self, component: str, height: int, width: int) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self.runner.device)
        import onnx

        return {
            "component": component,
            "model": self.runner.weights_key,  # the UNet's and VAE's files, and fused LoRAs
            "tiny_vae": self.config.tiny_vae,
            "dtype": str(self.runner.dtype),
            "latent": [height, width],
            "buckets": list(self.config.batch_buckets),
            "versions": {
                "torch": torch.__version__,
                "tensorrt": self.trt.__version__,
                "onnx": onnx.__version__,
                "python": platform.python_version(),
            },
            "gpu": {"name": props.name, "capability": [props.major, props.minor]},
        }

    def engine_for(self, component: str, height: int, width: int) -> Engine:
        found = self.engines.get((component, height, width))
        if found is not None:
            return found
        key = self._key(component, height, width)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        folder = self.root / f"{component}-{digest}"
        plan_path, manifest = folder / "engine.plan", folder / "manifest.json"
        if plan_path.is_file() and manifest.is_file() and json.loads(manifest.read_text()) == key:
            plan = plan_path.read_bytes()
        else:
            log.warning("building the TensorRT %s engine for %dx%d latents (minutes, once)", component, height, width)
            started = time.perf_counter()
            plan = self._build(component, height, width, folder)
            plan_path.write_bytes(plan)
            manifest.write_text(json.dumps(key, indent=2, sort_keys=True))
            log.info("built %s in %.0f s", plan_path, time.perf_counter() - started)
        engine = self.engines[(component, height, width)] = Engine(self.trt, plan, self.runner.device)
        return engine

    def _build(self, component: str, height: int, width: int, folder: Path) -> bytes:
        trt = self.trt
        runner = self.runner
        max_batch = self.config.max_batch * (2 if runner.sdxl else 1)  # guidance doubles the UNet batch
        if component == "unet":
            module: Any = UNetForExport(runner.unet)
            args = module.example(max_batch, height, width, dtype=runner.dtype, device=runner.device)
            names, output = module.input_names(), "eps"
        else:
            module = DecoderForExport(runner.vae)
            args = (torch.randn(max_batch, 4, height, width, device=runner.device, dtype=runner.vae.dtype),)
            names, output = ["latents"], "pixels"
        onnx_path = export(module, args, names, output, folder / f"{component}.onnx")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # the ONNX graph's dtypes rule
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for name, example in zip(names, args, strict=True):
            rest = tuple(example.shape[1:])
            profile.set_shape(name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build the {component} engine")
        return bytes(plan)

    # -- stages ----------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        runner = self.runner
        z = (latents / runner.scale + runner.shift).to(runner.vae.dtype)
        pixels = self.engine_for("vae_decoder", *latents.shape[-2:])(z)
        return to_uint8(pixels)
