"""``framewire bench video``: both paths measured on one real server, in one short run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framewire.bench import bench


def test_the_video_scenario_measures_webrtc_beside_the_websocket_path(tmp_path: Path) -> None:
    out = tmp_path / "video.json"
    argv = ["video", "--sessions", "2", "--fps", "15", "--warmup-s", "0.5", "--window-s", "1.5", "--out", str(out)]
    assert bench.main(argv) == 0
    rows = {row["path"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"video", "websocket"}
    for row in rows.values():
        assert row["sessions"] == 2 and row["frames_sent"] > 0
        assert 0 < row["frames_delivered"] <= row["frames_sent"]
        assert row["p50_ms"] is not None and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["server_cpu_ms_per_frame"] is not None and row["server_cpu_ms_per_frame"] > 0
    assert rows["video"]["engine_p50_ms"] is not None


def test_an_app_the_benchmark_cannot_start_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["video", "--app", "someone/else", "--sessions", "1"]) == 1
    assert "someone/else" in capsys.readouterr().err
