"""``framewire bench workers`` and ``bench link``: verdicts, the Markdown splice, and short real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from framewire.bench import workers_bench as wb
from tests.conftest import ROOT


def _summary(p50: float, p99: float = 1.0, cpu: float = 100.0, fps: float = 960.0, **extra: Any) -> dict[str, Any]:
    return {
        "latency_ms": {"count": 100, "p50": p50, "p99": p99},
        "server": {"cpu_us_per_frame": cpu},
        "throughput_fps": fps,
        "tally": {"errors": {}, "lost": 0, "bad_outputs": 0},
        "session_errors": {},
        **extra,
    }


def test_verdicts_compare_the_deployments_of_one_run() -> None:
    by_key = {
        (wb.OPEN_64, wb.BASELINE.name): _summary(0.2, cpu=100.0),
        (wb.OPEN_64, wb.IN_PROCESS.name): _summary(0.25, cpu=150.0),
        (wb.OPEN_64, wb.ONE_WORKER.name): _summary(0.4, p99=12.0, cpu=140.0),
        (wb.SCALE, wb.ONE_WORKER.name): _summary(80.0, fps=800.0),
        (wb.SCALE, wb.TWO_WORKERS.name): _summary(40.0, fps=1500.0),
        (wb.EDGES, wb.TWO_EDGES.name): _summary(40.0, batch_sizes={"4": 10, "12": 90}),
    }
    verdicts = {v.goal: v for v in wb.evaluate(by_key)}
    p50 = verdicts["64 x 15 fps, edge + worker: p50 vs the same-stack baseline"]
    assert not p50.passed and p50.measured.startswith("2.00x")
    assert not verdicts["64 x 15 fps, edge + worker: p99"].passed
    cpu = verdicts["64 x 15 fps: server CPU per frame, edge + worker processes, vs the baseline"]
    assert cpu.passed and cpu.measured.startswith("1.40x")
    assert verdicts["64 x 15 fps: p50 with a worker process minus p50 in-process"].passed  # +0.15 ms
    scale = verdicts["fake engine (20 ms/batch): frames/s with 2 workers vs 1, at saturation"]
    assert scale.passed and scale.measured.startswith("1.88x")
    mixed = next(v for goal, v in verdicts.items() if goal.startswith("2 edges"))
    assert mixed.passed and mixed.measured.startswith("90% of frames ran in batches of 9-12")
    alone = wb.evaluate({(wb.EDGES, wb.TWO_EDGES.name): _summary(40.0, batch_sizes={"4": 10, "8": 90})})
    assert alone[0].passed is False  # no batch larger than one edge's sessions: nothing shows mixing


def test_missing_runs_give_no_verdict_rather_than_a_wrong_one() -> None:
    assert wb.evaluate({}) == []


def test_the_generated_block_replaces_only_its_own_markers() -> None:
    doc = "# Results\n\nkept\n\n" + wb.BEGIN + "\nold\n" + wb.END + "\n\nalso kept\n"
    out = wb._splice(doc, wb.BEGIN + "\nnew\n" + wb.END)
    assert "old" not in out and "new" in out and "kept" in out and out.endswith("also kept\n")
    assert wb._splice("# Results\n", "BLOCK").endswith("BLOCK\n")


@pytest.mark.slow
def test_a_short_workers_run_reports_every_deployment(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n")
    cmd = [sys.executable, "-m", "framewire.cli", "bench", "workers", "--window-s", "1", "--warmup-s", "0.5"]
    cmd += ["--out", str(tmp_path), "--results-md", str(md)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "workers.json").read_text())
    targets = {(s["scenario"], s["target"]) for s in doc["results"]}
    assert (wb.OPEN_64, "edge + 1 worker") in targets and (wb.EDGES, "2 edges + 1 worker") in targets
    assert all(s["tally"]["ok"] > 0 and not s["tally"]["lost"] for s in doc["results"])
    worker_runs = [s for s in doc["results"] if s["target"] == "edge + 1 worker"]
    assert all(s["cpu_us_per_frame_by_role"]["worker"] > 0 for s in worker_runs)
    assert {v["goal"] for v in doc["verdicts"]} >= {
        "fake engine (20 ms/batch): frames/s with 2 workers vs 1, at saturation"
    }
    assert "#### Goals" in md.read_text()


def test_the_link_bench_measures_both_transports(tmp_path: Path) -> None:
    out = tmp_path / "link.json"
    cmd = [sys.executable, "-m", "framewire.cli", "bench", "link", "--duration-s", "0.5", "--repeats", "1"]
    cmd += ["--requesters", "1", "--payload-kb", "8", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = {row["kind"]: row for row in json.loads(out.read_text())["summary"]}
    assert set(summary) == {"tcp", "ws"}
    assert all(row["round_trips_per_s"] > 0 and row["cpu_us_per_round_trip"] > 0 for row in summary.values())
