"""The compile backend on the CPU: each stage ahead-of-time compiled (AOTInductor), cached on disk.

On a CPU there are no CUDA graphs to replay, so what a compiled stage costs beyond its
kernels is what runs around them: ``torch.compile``'s guard checks on every parameter and
its Python wrapper, 0.2-0.4 ms per call on the tiny model, about a third of a 64x64 UNet
step. A stage compiled ahead of time is one call into generated C++ with no guards (a few
microseconds). It is also a file: a warm start loads it in milliseconds where
``torch.compile`` with frozen weights traces and lowers every graph again.

:class:`AotStage` wraps one stage module (:class:`framewire.engine.backend.StepModule`,
``DecodeModule``, ``EncodeModule``). Per input signature (shapes, strides, dtypes, which
optional inputs are None) it loads a package from ``<cache_dir>/aot/`` or builds one:
``torch.export`` (the whole stage as one graph, or an error), then AOTInductor with the
weights frozen into the package, in a child process (:func:`compile_in_child`). A package's
folder name hashes its full key (stage code, model files, dtype, inputs, compiler options,
library versions, CPU); the key is also kept beside it as ``manifest.json``, and anything
that does not match is rebuilt, never loaded.

Each package holds its own copy of the frozen weights: a large model on the CPU wants few
batch buckets.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from framewire.engine.api import EngineError

log = logging.getLogger("framewire.engine")

#: Bumped when what a package holds changes in a way its key would not see.
FORMAT = 1
#: Input signatures one stage compiles at most (each a package and a copy of the weights).
MAX_SIGNATURES = 64
#: Packages not loaded for this long are deleted when a compile backend starts (they belong
#: to old weights, code or library versions); each holds a copy of its model's weights.
UNUSED_PACKAGE_TTL_S = 30 * 24 * 3600.0
#: One package's compile; the real SDXL UNet takes minutes on a small machine.
COMPILE_TIMEOUT_S = 3600.0
#: A UNet step on latents with fewer pixels than this runs faster without oneDNN weight
#: prepacking: at 8x8 latents (64 px images) the plain convolutions ATen picks for such small
#: inputs took 0.85 ms per step against 1.55 ms prepacked; at 32x32 (256 px) prepacking wins,
#: 5.8 ms against 6.7 ms. The VAE stages work at image resolution, where it always won (decode
#: 1.29 against 1.58 ms at 64 px, 13.4 against 18.3 ms at 256 px). Tiny model, 2-core AVX-512 VM.
PREPACK_MIN_LATENT_PIXELS = 32 * 32

Signature = tuple[tuple[tuple[int, ...], tuple[int, ...], torch.dtype] | None, ...]


def signature(args: Sequence[torch.Tensor | None]) -> Signature:
    """What a compiled graph is specialised on: each input's shape, strides and dtype, or None.

    Computed on every call, so it stays cheap (no strings)."""
    return tuple(None if a is None else (a.shape, a.stride(), a.dtype) for a in args)


def inductor_options(stage: str, sig: Signature) -> dict[str, Any]:
    """Inductor settings for one stage and input signature: weights frozen (folded in as
    constants), prepacked for oneDNN except in a UNet step on small latents (see above)."""
    latent = sig[0]
    assert latent is not None
    height, width = latent[0][-2:]
    prepack = stage != "step" or height * width >= PREPACK_MIN_LATENT_PIXELS
    return {"freezing": True, "cpp.weight_prepack": prepack}


def model_files(folders: Sequence[Path]) -> list[list[Any]]:
    """Path, size and modification time of every file in the model's component ``folders``."""
    found: list[list[Any]] = []
    for folder in folders:
        for path in sorted(Path(folder).resolve().glob("*")):
            if path.is_file():
                stat = path.stat()
                found.append([str(path), stat.st_size, stat.st_mtime_ns])
    return found


class _Package:
    """A loaded package, called with its flat tensor inputs.

    ``AOTICompiledModel.__call__`` parses its input and output specs from JSON on every
    call; a stage's specs never change, so the output spec is read once here."""

    def __init__(self, compiled: Any) -> None:
        self._run = compiled.loader.boxed_run
        self._out_spec = pytree.treespec_loads(compiled.loader.get_call_spec()[1])

    def __call__(self, *args: torch.Tensor | None) -> Any:
        return pytree.tree_unflatten(self._run([a for a in args if a is not None]), self._out_spec)


def _code_digest(module: nn.Module) -> str:
    """The stage's own forward code: a change to it must not load a package built from the old one."""
    source = inspect.getsource(type(module))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


class AotStage:
    """Calls ``module`` through AOTInductor packages, one per input signature (see the module docstring).

    ``model`` identifies the weights (it goes into every key); ``codegen=False`` runs the
    exported graph itself instead of generated code, which checks the capture in seconds
    (the tests' path). Thread-safe; a package is built once even if two threads need it.
    """

    def __init__(
        self,
        module: nn.Module,
        stage: str,
        *,
        root: Path,
        model: Mapping[str, Any],
        codegen: bool = True,
        options: Callable[[str, Signature], dict[str, Any]] = inductor_options,
    ) -> None:
        self.module = module
        self.stage = stage
        self.root = Path(root)
        self.model = dict(model)
        self.codegen = codegen
        self.options = options
        self._code = _code_digest(module)
        self._loaded: dict[Signature, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self.built = self.reused = 0

    def __call__(self, *args: torch.Tensor | None) -> Any:
        sig = signature(args)
        fn = self._loaded.get(sig)
        if fn is None:
            with self._lock:
                fn = self._loaded.get(sig)
                if fn is None:
                    if len(self._loaded) >= MAX_SIGNATURES:
                        raise EngineError(
                            f"the compile backend already holds {MAX_SIGNATURES} compiled {self.stage} graphs "
                            "(one per image size and batch bucket); serve fewer image sizes, or restart"
                        )
                    fn = self._loaded[sig] = self._get(sig, args)
        return fn(*args)

    def key(self, sig: Signature) -> dict[str, Any]:
        """Everything a package depends on; a package is used only where all of it matches."""
        return {
            "format": FORMAT,
            "stage": self.stage,
            "code": self._code,
            "model": self.model,
            "inputs": [None if s is None else [list(s[0]), list(s[1]), str(s[2])] for s in sig],
            "options": self.options(self.stage, sig),
            "versions": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "diffusers": _version("diffusers"),
            },
            "cpu": {"machine": platform.machine(), "isa": torch.backends.cpu.get_cpu_capability()},
        }

    def _get(self, sig: Signature, args: Sequence[torch.Tensor | None]) -> Callable[..., Any]:
        if not self.codegen:
            return self._export(args).module()
        key = self.key(sig)
        blob = json.dumps(key, sort_keys=True, default=str)
        folder = self.root / f"{self.stage}-{hashlib.sha256(blob.encode()).hexdigest()[:24]}"
        package, manifest = folder / "model.pt2", folder / "manifest.json"
        if package.is_file() and manifest.is_file() and manifest.read_text() == blob:
            started = time.perf_counter()
            try:
                fn = _Package(torch._inductor.aoti_load_package(str(package)))
            except Exception as exc:  # a damaged package (disk, interrupted copy) is rebuilt, not fatal
                log.warning("cannot load %s (%s: %s); compiling it again", package, type(exc).__name__, exc)
            else:
                self.reused += 1
                os.utime(manifest)  # last use, for prune_unused
                log.info("%s graph for %s loaded from %s in %.2f s", self.stage, _shapes(sig), folder, _since(started))
                return fn
        log.warning("compiling the %s graph for %s (once; cached in %s)", self.stage, _shapes(sig), folder)
        started = time.perf_counter()
        exported = self._export(args)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = f"{os.getpid()}.{threading.get_ident()}.tmp"
        graph, partial = folder / f"exported.{tmp}.pt2", folder / f"model.{tmp}.pt2"
        try:
            torch.export.save(exported, graph)
            compile_in_child(graph, partial, self.options(self.stage, sig))
            os.replace(partial, package)  # whole packages only, also when processes race
        finally:
            graph.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
        manifest.write_text(blob)
        self.built += 1
        log.info("compiled the %s graph for %s in %.1f s", self.stage, _shapes(sig), _since(started))
        return _Package(torch._inductor.aoti_load_package(str(package)))

    def _export(self, args: Sequence[torch.Tensor | None]) -> torch.export.ExportedProgram:
        try:
            return torch.export.export(self.module, tuple(args))
        except Exception as exc:  # any capture failure is a start-up error that names the stage
            raise EngineError(f"the compile backend cannot capture the {self.stage} stage as one graph: {exc}") from exc


def prune_unused(root: Path, max_age_s: float = UNUSED_PACKAGE_TTL_S, now: float | None = None) -> int:
    """Delete the packages under ``root`` last built or loaded more than ``max_age_s`` ago; returns how many.

    A package's last use is its manifest's modification time; folders without one (an
    interrupted build) count from the folder's own."""
    now = time.time() if now is None else now
    removed = 0
    for folder in Path(root).glob("*-*"):
        if not folder.is_dir():
            continue
        manifest = folder / "manifest.json"
        try:
            used = (manifest if manifest.exists() else folder).stat().st_mtime
        except FileNotFoundError:  # another process pruned it first
            continue
        if now - used > max_age_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        log.info("removed %d compiled packages unused for %.0f days from %s", removed, max_age_s / 86400, root)
    return removed


def compile_in_child(graph: Path, package: Path, options: Mapping[str, Any]) -> None:
    """AOTInductor-compile the exported program saved at ``graph`` into ``package``, in a new process.

    Inductor keeps process-wide state across compiles (for one, whether frozen graphs pack
    their weights is settled by the first of them), so each package is compiled in a fresh
    interpreter with exactly its own options; the server process also keeps none of the
    compiler's memory. Raises :class:`EngineError` with the compiler's last words on failure.
    """
    root = Path(__file__).resolve().parents[2]  # the folder holding the framewire package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "framewire.engine.aot", str(graph), str(package), json.dumps(dict(options))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise EngineError(f"compiling {graph.name} failed (exit status {done.returncode}):\n{tail}")


def _main(argv: Sequence[str]) -> int:
    """``python -m framewire.engine.aot EXPORTED PACKAGE OPTIONS_JSON``: the child of :func:`compile_in_child`."""
    graph, package, options = argv
    # The custom ops a graph may call must be registered before it loads.
    import framewire.kernels.group_norm_silu
    import framewire.kernels.postprocess
    import framewire.kernels.preprocess  # noqa: F401

    exported = torch.export.load(graph)
    with torch.no_grad():  # inductor freezes weights only where no gradient is wanted
        torch._inductor.aoti_compile_and_package(exported, package_path=package, inductor_configs=json.loads(options))
    return 0


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _shapes(sig: Signature) -> str:
    return " ".join("x".join(map(str, s[0])) for s in sig if s is not None)


def _since(started: float) -> float:
    return time.perf_counter() - started


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
