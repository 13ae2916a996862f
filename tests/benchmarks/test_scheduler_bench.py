"""``framewire bench scheduler``: the fake engine, the report, and a short real run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from framewire.bench import fake_engine, scheduler_bench
from framewire.bench.loadgen import LoadResult, LoadSpec
from framewire.bench.stats import Tally
from tests.benchmarks.test_bench_cli import bench


def test_the_fake_device_costs_steps_and_degrades_like_the_diffusion_apps() -> None:
    assert fake_engine.batch_ms(4, 8) == 48.0 and fake_engine.batch_ms(1, 8) == 12.0
    assert fake_engine.capacity_fps(4) == pytest.approx(166.67, abs=0.01)
    app = fake_engine.LadderSteps()
    inp = fake_engine.StepsInput(num_inference_steps=4, seed=3, image_url=b"x")
    first, second = app.degrade("", inp, 1), app.degrade("", inp, 2)
    assert first is not None and first.input.num_inference_steps == 2  # type: ignore[attr-defined]
    assert second is not None and second.note == "num_inference_steps 4→1"
    assert fake_engine.FixedSteps().degradation("") == ()
    assert app.frame_identity("", inp) is not None
    assert app.frame_identity("", inp.model_copy(update={"seed": None})) is None


def test_canvas_frames_change_once_every_n_frames() -> None:
    frames = scheduler_bench.CanvasFrames({"seed": 1}, [b"a", b"b"], change_every=3)
    images = [msgpack.unpackb(frames(rid))["image_url"] for rid in range(7)]
    assert images == [b"a", b"a", b"a", b"b", b"b", b"b", b"a"]
    assert msgpack.unpackb(frames(5))["request_id"] == 5


def _result(latencies: list[float], sent: int, degraded: list[float]) -> LoadResult:
    tally = Tally(sent=sent, ok=len(latencies), dropped=sent - len(latencies))
    return LoadResult(
        spec=LoadSpec(url="ws://127.0.0.1:1/x", sessions=1),
        window_s=2.0,
        tally=tally,
        latencies_ms=latencies,
        timings={"degraded": degraded},
        batch_sizes=Counter(),
        received_in_window=len(latencies),
        send_lag_ms=[],
        skipped_ticks=0,
        session_errors=Counter(),
        error_samples={},
        connect_ms=[],
        client_cpu_s=0.1,
    )


def test_the_share_within_target_counts_dropped_frames_as_misses() -> None:
    case = scheduler_bench.cases()[1]
    counts = {"device_s": 2.0, "answered": 400.0, "skipped": 0.0}
    summary = scheduler_bench.summarize(case, _result([10.0, 50.0, 150.0], sent=4, degraded=[2.0, 2.0]), counts)
    assert summary["within_target_pct"] == 50.0  # 2 of 4 sent: one too late, one dropped
    assert summary["levels"] == {"0": 1, "2": 2}
    assert summary["device_ms_per_frame"] == 5.0


def test_the_report_block_replaces_only_its_own_part() -> None:
    results = []
    for case in scheduler_bench.cases():
        counts = {"device_s": 1.0 if "fixed" in case.name else 4.0, "answered": 100.0, "skipped": 0.0}
        counts.update(target_met=90.0, target_missed=10.0)
        results.append(scheduler_bench.summarize(case, _result([20.0] * 9, sent=10, degraded=[]), counts))
    doc = {
        "stamp": "now",
        "machine": "a test machine",
        "device": "fake",
        "command": "framewire bench scheduler",
        "capacity_fps": fake_engine.capacity_fps(),
        "change_every": 30,
        "results": results,
        "device_time_saved_pct": scheduler_bench.saved_pct(results),
    }
    assert doc["device_time_saved_pct"] == 75.0
    block = scheduler_bench.markdown(doc)
    assert "| overload 3x, ladder 4→2→1 steps | 24 x 20.8 | 3.0x | 90.0 % |" in block
    assert block.count("| 90 / 100 |") == 2  # the engine's own count, warm-up included
    assert "saved by skipping unchanged frames: **75 %**" in block
    before = "# Results\n\nkept above\n\n" + block + "\n\nkept below\n"
    again = scheduler_bench.splice(before, block.replace("75 %", "76 %"))
    assert again.startswith("# Results\n\nkept above") and again.endswith("kept below\n") and "76 %" in again
    assert scheduler_bench.splice("# Results\n", block).count(scheduler_bench.BEGIN) == 1


def test_a_short_real_run_reports_all_four_cases(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nnotes kept\n")
    done = bench(
        "scheduler", "--quick", "--window-s", "2", "--out", str(tmp_path), "--results-md", str(md), timeout_s=240.0
    )
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "scheduler.json").read_text())
    by_case = {r["case"]: r for r in doc["results"]}
    off, on = by_case["overload 3x, no ladder"], by_case["overload 3x, ladder 4→2→1 steps"]
    assert off["levels"].keys() == {"0"} and off["tally"]["dropped"] > 0
    assert int(on["levels"].get("2", 0)) > 0 and on["server"]["degraded_2"] > 0
    assert on["within_target_pct"] > off["within_target_pct"]
    idle_off = by_case["idle canvas, no seed (every frame runs)"]
    idle_on = by_case["idle canvas, fixed seed (unchanged frames skipped)"]
    assert idle_off["server"]["skipped"] == 0 and idle_on["server"]["skipped"] > 0
    assert idle_on["device_ms_per_frame"] < idle_off["device_ms_per_frame"]
    for summary in doc["results"]:
        assert not summary["tally"]["errors"] and summary["tally"]["bad_outputs"] == 0
    text = md.read_text()
    assert "notes kept" in text and scheduler_bench.BEGIN in text and "Mostly idle canvas" in text
