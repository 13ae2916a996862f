"""``framewire bench`` end to end: a short real run against all three servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def bench(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "framewire.cli", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_smoke_run_measures_framewire_and_both_baselines(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nnotes kept\n")
    done = bench(
        "run",
        "--sessions", "2",
        "--window-s", "2",
        "--warmup-s", "0.5",
        "--drain-s", "1",
        "--payload-kb", "8",
        "--image-px", "128",
        "--out", str(tmp_path),
        "--results-md", str(md),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["stamp"]["cpu"]["logical_cores"] >= 1 and doc["stamp"]["versions"]["uvicorn"]
    by_target = {s["target"]: s for s in doc["results"]}
    assert set(by_target) == {"framewire", "starlette", "websockets"}
    for summary in by_target.values():
        tally = summary["tally"]
        assert tally["ok"] > 0 and tally["ok"] == tally["sent"], summary
        assert not tally["errors"] and not summary["session_errors"]
        assert summary["latency_ms"]["p50"] > 0 and summary["server"]["rss_start_mb"] > 10
    assert sum(by_target["framewire"]["batch_sizes"].values()) == by_target["framewire"]["tally"]["ok"]
    fw_settings = by_target["framewire"]["server_settings"]
    assert fw_settings["builtin_apps"] == ["echo"] and fw_settings["command"][:3] == ["-m", "framewire.cli", "serve"]
    assert by_target["websockets"]["server_settings"]["command"][:3] == [
        "-m",
        "framewire.bench.baselines",
        "websockets",
    ]
    assert doc["generator"]["event_loop"] in ("uvloop", "asyncio")
    ratios = doc["ratios"][doc["results"][0]["scenario"]]
    assert set(ratios) == {"starlette", "websockets"} and ratios["starlette"]["throughput"] > 0
    assert {"latency_cdf.png", "batch_sizes.png"} <= set(doc["plots"])
    assert all((tmp_path / p).stat().st_size > 1000 for p in doc["plots"])
    text = md.read_text()
    assert text.startswith("# Results\n\nnotes kept\n") and "| framewire |" in text
    assert "framewire bench run --sessions 2" in text
    assert "frames/s" in done.stdout  # the tables


def test_plot_redraws_plots_and_markdown_from_a_results_file(tmp_path: Path) -> None:
    scenario = {"name": "s", "sessions": 1, "group": ""}
    summary = {
        "scenario": "s",
        "target": "framewire",
        "cdf_ms": [[0.5, 0.5], [1.0, 1.0]],
        "latency_ms": {"count": 2, "p99": 1.0},
        "throughput_fps": 10.0,
        "batch_sizes": {"1": 2},
    }
    summary.update(
        tally={"sent": 2, "ok": 2, "errors": {}, "dropped": 0, "lost": 0, "bad_outputs": 0},
        session_errors={},
        server={"rss_start_mb": None, "cpu_us_per_frame": None},
        client_cpu_pct=10.0,
    )
    stamp = {
        "time_utc": "2026-11-26T12:00:00+00:00",
        "cpu": {"model": "Test CPU", "logical_cores": 2, "memory_gb": 24.0},
        "gpus": [],
        "os": "Linux",
        "versions": dict.fromkeys(
            ["python", "starlette", "uvicorn", "websockets", "uvloop", "msgpack", "pydantic"], "1"
        ),
        "git": {},
        "load_average_at_start": [0.1, 0.1, 0.1],
    }
    path = tmp_path / "results.json"
    doc = {"scenarios": [scenario], "results": [summary], "stamp": stamp, "command": "framewire bench run"}
    path.write_text(json.dumps(doc))
    md = tmp_path / "RESULTS.md"
    done = bench("plot", str(path), "--results-md", str(md))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "latency_cdf.png").exists() and (tmp_path / "batch_sizes.png").exists()
    assert not (tmp_path / "sessions.png").exists()  # one session count: nothing to plot against
    assert "| s | framewire | 10 |" in md.read_text() and "![latency cdf](latency_cdf.png)" in md.read_text()


def test_unknown_target_is_a_usage_error_naming_it() -> None:
    done = bench("run", "--targets", "framewire,nginx")
    assert done.returncode == 2 and "nginx" in done.stderr


def test_a_non_loopback_server_is_refused_before_any_traffic() -> None:
    done = bench("run", "--url", "ws://10.9.8.7:8000", "--targets", "framewire")
    assert done.returncode == 1 and "loopback only" in done.stderr


def test_a_url_with_no_server_behind_it_is_reported() -> None:
    from tests.conftest import free_port

    done = bench("run", "--url", f"ws://127.0.0.1:{free_port()}", "--targets", "framewire", "--window-s", "1")
    assert done.returncode == 1 and "no server answers GET /ready" in done.stderr


def test_a_server_dying_mid_sweep_keeps_the_runs_already_done(tmp_path: Path) -> None:
    done = bench(
        "run",
        "--app", "framewire/echo,test/crash",
        "--server-arg=--app=tests.benchmarks.apps:CrashApp",
        "--targets", "framewire",
        "--sessions", "1",
        "--window-s", "1",
        "--warmup-s", "0.2",
        "--drain-s", "0.5",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 1 and "exited with code 3" in done.stderr
    partial = json.loads((tmp_path / "results.partial.json").read_text())
    assert [s["scenario"] for s in partial["results"]] == ["echo 1 sessions closed loop 48KB"]
    assert partial["results"][0]["tally"]["ok"] > 0
    assert not (tmp_path / "results.json").exists()
