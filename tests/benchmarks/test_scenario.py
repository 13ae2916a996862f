from __future__ import annotations

from typing import Any

import pytest

from framewire.bench.loadgen import Mode
from framewire.bench.scenario import (
    CLOSED_16,
    HOLD_256,
    OPEN_64,
    Scenario,
    evaluate,
    expand,
    goal_scenarios,
    parse_list,
    varying,
    with_inputs,
)


def test_expand_makes_every_combination_with_distinct_names() -> None:
    got = expand(Scenario(), {"sessions": [1, 16], "payload_bytes": [8_000, 48_000]})
    assert [(s.sessions, s.payload_bytes) for s in got] == [(1, 8_000), (1, 48_000), (16, 8_000), (16, 48_000)]
    assert len({s.name for s in got}) == 4
    assert varying(got) == ["sessions", "payload_bytes"]


def test_expand_runs_a_repeated_value_once() -> None:
    assert [s.sessions for s in expand(Scenario(), {"sessions": [4, 1, 4]})] == [4, 1]


def test_repeats_rotate_which_target_runs_first() -> None:
    from framewire.bench.bench import run_plan

    a, b = Scenario("a"), Scenario("b", targets=("framewire",))
    got = [(sc.name, target, rep) for sc, target, rep in run_plan([a, b], 2)]
    assert got[:6] == [
        ("a", "framewire", 0),
        ("a", "starlette", 0),
        ("a", "websockets", 0),
        ("a", "starlette", 1),
        ("a", "websockets", 1),
        ("a", "framewire", 1),
    ]
    assert got[6:] == [("b", "framewire", 0), ("b", "framewire", 1)]


def test_expand_refuses_fields_that_cannot_be_swept() -> None:
    with pytest.raises(ValueError, match="cannot sweep 'window_s'"):
        expand(Scenario(), {"window_s": [1.0]})


def test_parse_list_names_the_bad_item() -> None:
    assert parse_list("1, 4,16", int) == [1, 4, 16]
    with pytest.raises(ValueError, match="'x' is not a valid int"):
        parse_list("1,x", int)


def test_scenarios_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="unknown target 'nginx'"):
        Scenario(targets=("nginx",))
    with pytest.raises(ValueError, match="max_buffering"):
        Scenario(max_buffering=61)


def test_scenario_names_say_what_they_run() -> None:
    assert Scenario(sessions=64, mode=Mode.OPEN, fps=15).name == "echo 64 sessions x 15 fps 48KB"
    assert Scenario(sessions=2, max_batch_size=4).name == "echo 2 sessions closed loop 48KB batch<=4"


def test_input_overrides_round_trip_through_the_hashable_form() -> None:
    sc = with_inputs(Scenario(), {"num_inference_steps": 4, "image_size": {"width": 256, "height": 256}})
    assert sc.input_overrides == {"num_inference_steps": 4, "image_size": {"width": 256, "height": 256}}
    hash(sc)


def test_only_framewire_gets_app_settings() -> None:
    sc = Scenario(max_batch_size=4, max_queue_delay_ms=2.0)
    fw = sc.server_config("framewire", "echo", ["--max-frame-bytes=8388608"])
    assert fw.builtin_apps == ("echo",) and fw.max_batch_size == 4
    cmd = fw.command(9000)
    assert cmd[cmd.index("--max-batch-size") + 1] == "4" and cmd[-1] == "--max-frame-bytes=8388608"
    assert sc.server_config("starlette", "echo").max_batch_size is None


def test_goal_scenarios_match_the_goals() -> None:
    closed, open_, hold = goal_scenarios()
    assert (closed.sessions, closed.mode, closed.payload_bytes) == (16, Mode.CLOSED, 48_000)
    assert (open_.sessions, open_.mode, open_.fps) == (64, Mode.OPEN, 15.0)
    assert (hold.sessions, hold.fps, hold.window_s, hold.targets) == (256, 2.0, 60.0, ("framewire",))
    assert all(s.window_s < 60 for s in goal_scenarios(quick=True))


def summary(fps: float = 1000.0, p50: float = 1.0, p99: float = 2.0, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "throughput_fps": fps,
        "latency_ms": {"count": 100, "p50": p50, "p99": p99},
        "tally": {"sent": 100, "ok": 100, "errors": {}, "lost": 0, "bad_outputs": 0},
        "session_errors": {},
        "server": {"rss_growth_mb": 3.0},
        "client_cpu_pct": 40.0,
    }
    out.update(extra)
    return out


def test_goals_are_met_by_a_fast_server() -> None:
    verdicts = evaluate(
        {
            (CLOSED_16, "framewire"): summary(fps=800),
            (CLOSED_16, "starlette"): summary(fps=1000),
            (OPEN_64, "framewire"): summary(p50=1.2, p99=4.0),
            (OPEN_64, "starlette"): summary(p50=1.0),
            (HOLD_256, "framewire"): summary(),
        }
    )
    assert [v.passed for v in verdicts] == [True] * 6, verdicts


def test_goals_are_missed_with_the_numbers_that_miss_them() -> None:
    hold = summary(server={"rss_growth_mb": 80.0})
    hold["tally"]["lost"] = 2
    verdicts = evaluate(
        {
            (CLOSED_16, "framewire"): summary(fps=400),
            (CLOSED_16, "starlette"): summary(fps=1000, client_cpu_pct=99.0),
            (OPEN_64, "framewire"): summary(p50=2.0, p99=12.0, session_errors={"CLOSED_1011": 1}),
            (OPEN_64, "starlette"): summary(p50=1.0),
            (HOLD_256, "framewire"): hold,
        }
    )
    by_goal = {v.goal: v for v in verdicts}
    assert all(v.passed is False for v in verdicts), verdicts
    assert by_goal["closed loop, 16 sessions: frames/s vs same-stack baseline"].measured.startswith("0.40x")
    assert "bounded by the client" in by_goal["closed loop, 16 sessions: frames/s vs same-stack baseline"].note
    assert by_goal["open loop, 64 x 15 fps: p50 vs same-stack baseline"].measured.startswith("2.00x")
    assert by_goal["open loop, 64 x 15 fps: errors"].measured == "1"
    assert by_goal["256 x 2 fps held: errors"].measured == "2"
    assert by_goal["256 x 2 fps held: server RSS growth"].measured == "+80.0 MB"


def test_goals_without_data_are_not_measured_rather_than_passed() -> None:
    assert all(v.passed is None for v in evaluate({}))
