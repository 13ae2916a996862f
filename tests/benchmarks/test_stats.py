from __future__ import annotations

import itertools

import pytest

from framewire.bench.stats import (
    SessionLedger,
    Tally,
    Window,
    cdf_points,
    numeric_timings,
    percentile,
    ratio,
    summarize,
)


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 2.7: 3 + 0.7 * (4 - 3)
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_empty_input_and_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summarize_reports_tail_percentiles_of_unsorted_values() -> None:
    values = [float(v) for v in range(1000, 0, -1)]  # 1000 .. 1, reversed on purpose
    s = summarize(values)
    assert s["count"] == 1000 and s["min"] == 1.0 and s["max"] == 1000.0
    assert s["p50"] == pytest.approx(500.5)
    assert s["p99"] == pytest.approx(990.01)
    assert s["p99.9"] == pytest.approx(999.001)
    assert s["mean"] == pytest.approx(500.5)
    assert summarize([]) == {"count": 0}


def test_cdf_points_are_thinned_but_keep_both_ends() -> None:
    points = cdf_points([float(v) for v in range(10_000)], max_points=50)
    assert len(points) <= 50
    assert points[0] == (0.0, 1 / 10_000) and points[-1] == (9999.0, 1.0)
    assert all(a[0] <= b[0] and a[1] < b[1] for a, b in itertools.pairwise(points))
    assert cdf_points([]) == []


def test_window_separates_warm_up_measurement_and_the_end() -> None:
    w = Window.after(100.0, warmup_s=2.0, window_s=10.0)
    assert (w.start_s, w.end_s, w.duration_s) == (102.0, 112.0, 10.0)
    assert not w.measured(101.9) and w.measured(102.0) and w.measured(111.9) and not w.measured(112.0)
    assert w.sending(111.99) and not w.sending(112.0)
    with pytest.raises(ValueError):
        Window.after(0.0, warmup_s=1.0, window_s=0.0)


def ledger() -> SessionLedger:
    return SessionLedger(Window.after(0.0, warmup_s=1.0, window_s=10.0))


def test_ledger_measures_latency_of_answered_frames() -> None:
    led = ledger()
    led.sent(1, 2.0)
    answer = led.answered(1, 2.004)
    assert answer is not None and answer.latency_s == pytest.approx(0.004) and answer.measured
    assert answer.dropped_before == 0
    assert led.finish().as_dict() == {
        "sent": 1,
        "ok": 1,
        "errors": {},
        "dropped": 0,
        "lost": 0,
        "bad_outputs": 0,
    }


def test_ledger_counts_skipped_frames_as_dropped_when_a_later_one_is_answered() -> None:
    led = ledger()
    for rid in (1, 2, 3, 4):
        led.sent(rid, 2.0 + rid / 100)
    answer = led.answered(4, 2.1)  # the server's latest-frame-wins buffer discarded 1-3
    assert answer is not None and answer.dropped_before == 3
    tally = led.finish()
    assert (tally.ok, tally.dropped, tally.lost) == (1, 3, 0) and tally.balanced()


def test_ledger_error_does_not_settle_earlier_frames_still_in_the_engine() -> None:
    led = ledger()
    led.sent(1, 2.0)
    led.sent(2, 2.01)
    assert led.failed(2, "VALIDATION_ERROR")  # a bad frame is refused before frame 1 is done
    assert led.in_flight == 1
    assert led.answered(1, 2.02) is not None
    tally = led.finish()
    assert tally.ok == 1 and tally.errors == {"VALIDATION_ERROR": 1} and tally.dropped == 0 and tally.balanced()


def test_ledger_counts_unanswered_frames_as_lost_at_the_end() -> None:
    led = ledger()
    led.sent(1, 2.0)
    led.sent(2, 2.1)
    led.answered(1, 2.05)
    tally = led.finish()
    assert (tally.ok, tally.lost, tally.dropped) == (1, 1, 0) and tally.balanced()


def test_ledger_ignores_duplicate_and_unknown_answers() -> None:
    led = ledger()
    led.sent(1, 2.0)
    assert led.answered(1, 2.1) is not None
    assert led.answered(1, 2.2) is None  # duplicate
    assert led.answered(7, 2.2) is None  # never sent
    assert not led.failed(9, "X")
    assert led.finish().ok == 1


def test_ledger_leaves_warm_up_frames_out_of_the_tally() -> None:
    led = ledger()
    led.sent(1, 0.5)  # warm-up
    led.sent(2, 0.6)  # warm-up, will be dropped
    led.sent(3, 1.5)  # measured
    first = led.answered(1, 0.55)
    assert first is not None and not first.measured
    led.answered(3, 1.6)
    tally = led.finish()
    assert (tally.sent, tally.ok, tally.dropped) == (1, 1, 0)


def test_ledger_refuses_request_ids_that_do_not_increase() -> None:
    led = ledger()
    led.sent(5, 2.0)
    with pytest.raises(ValueError, match="increase"):
        led.sent(5, 2.1)


def test_ledger_records_invalid_outputs_separately() -> None:
    led = ledger()
    led.sent(1, 2.0)
    led.answered(1, 2.1, valid=False)
    tally = led.finish()
    assert (tally.ok, tally.bad_outputs) == (0, 1) and tally.balanced()


def test_tallies_add_up_across_sessions() -> None:
    a, b = Tally(sent=3, ok=2, dropped=1), Tally(sent=2, ok=1, lost=1)
    a.add(b)
    assert (a.sent, a.ok, a.dropped, a.lost) == (5, 3, 1, 1) and a.balanced()


def test_numeric_timings_keeps_numbers_only() -> None:
    output = {"timings": {"queue_ms": 1.5, "batch_size": 4, "note": "x", "flag": True}}
    assert numeric_timings(output) == {"queue_ms": 1.5, "batch_size": 4.0}
    assert numeric_timings({"timings": None}) == {}
    assert numeric_timings({}) == {}


def test_ratio_is_none_when_a_side_is_missing_or_zero() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None and ratio(1.0, 0.0) is None
