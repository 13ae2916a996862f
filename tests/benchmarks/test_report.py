from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from framewire.bench.loadgen import LoadResult, LoadSpec
from framewire.bench.report import (
    BEGIN,
    END,
    Run,
    ratios,
    render_block,
    result_rows,
    splice,
    summarize_runs,
    update_results_md,
)
from framewire.bench.scenario import Scenario
from framewire.bench.stats import Tally


def load_result(latencies: list[float], received: int, *, cpu_s: float = 1.0, lost: int = 0) -> LoadResult:
    return LoadResult(
        spec=LoadSpec("ws://127.0.0.1:1/x", 2),
        window_s=10.0,
        tally=Tally(sent=len(latencies) + lost, ok=len(latencies), lost=lost),
        latencies_ms=latencies,
        timings={"queue_ms": [0.1] * len(latencies)},
        batch_sizes=Counter({1: len(latencies) - 1, 2: 1}),
        received_in_window=received,
        send_lag_ms=[],
        skipped_ticks=0,
        session_errors=Counter(),
        error_samples={},
        connect_ms=[1.0, 2.0],
        client_cpu_s=cpu_s,
    )


def run(target: str, latencies: list[float], received: int, server_cpu_s: float, growth: float = 0.5) -> Run:
    server = {
        "server_cpu_s": server_cpu_s,
        "server_cpu_pct": 10 * server_cpu_s,
        "machine_cpu_pct": 150.0,
        "rss_start_mb": 50.0,
        "rss_peak_mb": 52.0,
        "rss_growth_mb": growth,
    }
    return Run(Scenario("s"), target, 0, load_result(latencies, received), server)


def test_summaries_pool_latencies_across_repeats_and_take_median_rates() -> None:
    a = run("framewire", [1.0] * 99 + [50.0], received=1000, server_cpu_s=2.0, growth=1.0)
    b = run("framewire", [3.0] * 300, received=2000, server_cpu_s=2.0, growth=4.0)
    s = summarize_runs([a, b])
    assert s["repeats"] == 2 and s["latency_ms"]["count"] == 400
    assert s["latency_ms"]["p50"] == 3.0  # pooled (a median of the repeats' medians would say 2.0)
    assert s["latency_ms"]["max"] == 50.0
    assert s["throughput_fps"] == pytest.approx(150.0)  # median of 100 and 200 frames/s
    assert s["server"]["cpu_us_per_frame"] == pytest.approx((2000.0 + 1000.0) / 2)  # median of 2000 and 1000 µs
    assert s["server"]["rss_growth_mb"] == 4.0  # the worst repeat
    assert s["tally"]["ok"] == 400
    assert s["batch_sizes"] == {"1": 398, "2": 2}
    assert s["other_cpu_pct"] == pytest.approx(150.0 - 10.0 - 20.0)


def test_ratios_compare_framewire_with_each_baseline() -> None:
    fw = summarize_runs([run("framewire", [2.0] * 10, received=500, server_cpu_s=1.0)])
    base = summarize_runs([run("starlette", [1.0] * 10, received=1000, server_cpu_s=1.0)])
    got = ratios({("s", "framewire"): fw, ("s", "starlette"): base}, "s")
    assert set(got) == {"starlette"}
    assert got["starlette"]["throughput"] == pytest.approx(0.5)
    assert got["starlette"]["p50"] == pytest.approx(2.0)
    assert got["starlette"]["cpu_per_frame"] == pytest.approx(2.0)


def test_result_rows_flag_a_saturated_generator() -> None:
    s = summarize_runs([Run(Scenario("s"), "starlette", 0, load_result([1.0], 10, cpu_s=9.7), {})])
    _, rows = result_rows([s])
    assert rows[0][-1] == "97 (saturated)"
    assert rows[0][-2] == "-"  # no server pid, no memory figure


def test_splice_replaces_only_the_generated_block() -> None:
    doc = f"# Results\n\nhand-written intro\n\n{BEGIN}\nold numbers\n{END}\n\n## Analysis\nkept\n"
    new = splice(doc, f"{BEGIN}\nnew numbers\n{END}")
    assert "new numbers" in new and "old numbers" not in new
    assert new.startswith("# Results\n\nhand-written intro\n\n") and new.endswith("## Analysis\nkept\n")
    assert splice(new, f"{BEGIN}\nnewer\n{END}").count(BEGIN) == 1


def test_update_results_md_creates_or_appends_the_block(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    update_results_md(path, f"{BEGIN}\nA\n{END}")
    assert path.read_text().startswith("# Benchmark results\n") and "A" in path.read_text()
    path.write_text("# Mine\n\nnotes\n")
    update_results_md(path, f"{BEGIN}\nB\n{END}")
    assert path.read_text() == f"# Mine\n\nnotes\n\n{BEGIN}\nB\n{END}\n"


def test_rendered_block_names_the_machine_the_command_and_the_ratios() -> None:
    fw = summarize_runs([run("framewire", [2.0] * 10, received=500, server_cpu_s=1.0)])
    base = summarize_runs([run("starlette", [1.0] * 10, received=1000, server_cpu_s=1.0)])
    stamp = {
        "time_utc": "2026-11-26T12:00:00+00:00",
        "cpu": {"model": "Test CPU", "logical_cores": 2, "memory_gb": 24.0},
        "gpus": [],
        "os": "Linux",
        "versions": {k: "1" for k in ("python", "starlette", "uvicorn", "websockets", "uvloop", "msgpack", "pydantic")},
        "git": {"commit": "0123456789abcdef", "dirty": True},
        "load_average_at_start": [0.5, 0.4, 0.3],
    }
    doc = {"stamp": stamp, "results": [fw, base], "verdicts": [], "quick": True}
    block = render_block(doc, ["results/latency_cdf.png"], "framewire bench goals")
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "Test CPU (2 logical cores, 24.0 GB), no GPU" in block
    assert "framewire bench goals" in block and "0123456789 (uncommitted changes)" in block
    assert "| s | starlette | 0.50x | 2.00x | 2.00x | 2.00x |" in block
    assert "**Quick run**" in block
    assert "![latency cdf](results/latency_cdf.png)" in block


def test_the_printed_tables_fit_a_120_column_log() -> None:
    import io

    from rich.console import Console

    from framewire.bench.bench import TABLE_WIDTH, print_tables

    summaries = []
    for target in ("framewire", "starlette", "websockets"):
        s = summarize_runs([run(target, [1.0, 2.0, 30.0], received=1000, server_cpu_s=1.0)])
        s["scenario"] = "closed-loop-64-sessions-48kb-512px"
        summaries.append(s)
    out = io.StringIO()
    print_tables({"results": summaries}, Console(file=out, width=TABLE_WIDTH))
    text = out.getvalue()
    assert "p99 ms" in text and "server CPU" in text and "generator CPU" in text
    assert max(len(line) for line in text.splitlines()) <= TABLE_WIDTH
    assert "…" not in text  # folded, never cut


def test_latency_cdf_tick_labels_do_not_overlap() -> None:
    """A panel spanning less than a decade (0.4-3 ms) is where matplotlib labels minor ticks."""
    from framewire.bench.plots import _pyplot, cdf_figure

    cdf = [[0.4 + 0.026 * i, i / 100] for i in range(101)]
    summaries = [{"scenario": name, "target": "framewire", "cdf_ms": cdf} for name in ("a", "b", "c", "d")]
    fig = cdf_figure(summaries, ["a", "b", "c", "d"])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            if not ax.get_visible():
                continue
            labels = [t for t in ax.get_xticklabels(which="both") if t.get_visible() and t.get_text()]
            assert len(labels) >= 2, [t.get_text() for t in labels]
            boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
            for left, right in itertools.pairwise(boxes):
                assert left.x1 <= right.x0, "x tick labels overlap"
    finally:
        _pyplot().close(fig)
