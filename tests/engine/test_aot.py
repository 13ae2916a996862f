"""Ahead-of-time compiled stages on the CPU (framewire.engine.aot): build, reuse, rebuild, fail clearly.

A real AOTInductor compile of a small module (a convolution and a GroupNorm, as the UNet's
blocks) in a child process: a few seconds, unlike the tiny UNet's minutes."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from framewire.engine.aot import AotStage, compile_in_child, prune_unused, signature
from framewire.engine.api import EngineError

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="AOTInductor needs a C compiler"
)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor, scale: torch.Tensor, extra: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        y = torch.nn.functional.silu(self.norm(self.conv(x))) * scale
        return (y, y.mean()) if extra is None else (y + extra, y.mean())


def _block() -> Block:
    torch.manual_seed(0)
    return Block().eval().requires_grad_(False)


def _stage(root: Path, model: str = "weights-a", module: nn.Module | None = None) -> AotStage:
    return AotStage(module or _block(), "block", root=root, model={"files": model})


def test_a_compiled_stage_matches_eager_is_reused_from_disk_and_rebuilt_when_its_key_differs(tmp_path: Path) -> None:
    x, scale = torch.randn(2, 4, 8, 8), torch.tensor(0.5)
    expected = _block()(x, scale, None)

    stage = _stage(tmp_path)
    got = stage(x, scale, None)
    assert stage.built == 1 and stage.reused == 0
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-5)
    stage(torch.randn(2, 4, 8, 8), scale, None)  # same signature: the loaded package, no new build
    assert stage.built == 1

    packages = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(packages) == 1
    os.utime(packages[0] / "manifest.json", (1.0, 1.0))
    again = _stage(tmp_path)  # a restart: loaded from the cache, not compiled
    torch.testing.assert_close(again(x, scale, None)[0], expected[0], rtol=1e-4, atol=1e-5)
    assert (again.built, again.reused) == (0, 1)
    assert time.time() - (packages[0] / "manifest.json").stat().st_mtime < 60  # its last use, for pruning
    manifest = json.loads((packages[0] / "manifest.json").read_text())
    assert manifest["stage"] == "block" and manifest["inputs"][2] is None

    (packages[0] / "model.pt2").write_bytes(b"damaged")  # a package that cannot load is rebuilt
    repaired = _stage(tmp_path)
    torch.testing.assert_close(repaired(x, scale, None)[0], expected[0], rtol=1e-4, atol=1e-5)
    assert (repaired.built, repaired.reused) == (1, 0)

    manifest_file = packages[0] / "manifest.json"  # a package whose key does not match is rebuilt
    manifest_file.write_text(manifest_file.read_text().replace('"block"', '"tampered"'))
    rebuilt = _stage(tmp_path)
    torch.testing.assert_close(rebuilt(x, scale, None)[0], expected[0], rtol=1e-4, atol=1e-5)
    assert (rebuilt.built, rebuilt.reused) == (1, 0)

    other = _stage(tmp_path, model="weights-b")  # other weights: never the old package
    torch.testing.assert_close(other(x, scale, None)[0], expected[0], rtol=1e-4, atol=1e-5)
    assert (other.built, other.reused) == (1, 0)

    extra = torch.randn(2, 8, 8, 8)  # an optional input now given: another signature, another graph
    torch.testing.assert_close(stage(x, scale, extra)[0], expected[0] + extra, rtol=1e-4, atol=1e-5)
    assert stage.built == 2


def test_a_stage_that_cannot_be_one_graph_fails_at_start_up_naming_it(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if bool(x.sum() > 0) else x  # control flow on values: no single graph

    stage = AotStage(DataDependent(), "decode", root=tmp_path, model={})
    with pytest.raises(EngineError, match="cannot capture the decode stage"):
        stage(torch.ones(1, 4))


def test_a_failing_compile_reports_the_compilers_words(tmp_path: Path) -> None:
    graph = tmp_path / "exported.pt2"
    graph.write_bytes(b"not an exported program")
    with pytest.raises(EngineError, match=r"compiling exported\.pt2 failed"):
        compile_in_child(graph, tmp_path / "model.pt2", {})
    assert not (tmp_path / "model.pt2").exists()


def test_the_signature_tells_shapes_strides_dtypes_and_absent_inputs_apart() -> None:
    x = torch.zeros(2, 4, 8, 8)
    assert signature([x, None]) == signature([torch.ones(2, 4, 8, 8), None])
    assert signature([x, None]) != signature([x, x])
    assert signature([x]) != signature([x.half()])
    assert signature([x]) != signature([x.to(memory_format=torch.channels_last)])
    assert signature([x]) != signature([torch.zeros(1, 4, 8, 8)])


def test_packages_unused_for_a_month_are_pruned(tmp_path: Path) -> None:
    now = time.time()
    for name, age_days in (("step-old", 45), ("step-recent", 2), ("decode-old", 31)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt2").write_bytes(b"x")
        (folder / "manifest.json").write_text("{}")
        os.utime(folder / "manifest.json", (now - age_days * 86400, now - age_days * 86400))
    interrupted = tmp_path / "encode-partial"  # no manifest: its folder's own time counts
    interrupted.mkdir()
    os.utime(interrupted, (now - 40 * 86400, now - 40 * 86400))
    assert prune_unused(tmp_path, now=now) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-recent"]
    assert prune_unused(tmp_path / "missing", now=now) == 0
