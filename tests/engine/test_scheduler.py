from __future__ import annotations

import pytest

from framewire.engine.scheduler import BatchScheduler, Frame, FrameBuffer


def frame(name: str, t: float = 0.0, key: object = None) -> Frame:
    return Frame(inp=name, batch_key=key, enqueued_s=t, on_result=lambda r: None, tag=name)


def names(batch: list[Frame]) -> list[str]:
    return [f.inp for f in batch]


def test_buffer_drops_oldest_frame_when_full_and_counts_it() -> None:
    buf = FrameBuffer(2)
    assert buf.push(frame("a")) is None
    assert buf.push(frame("b")) is None
    dropped = buf.push(frame("c"))
    assert dropped is not None and dropped.inp == "a"
    assert [f.inp for f in buf] == ["b", "c"]
    assert buf.dropped == 1


def test_buffer_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        FrameBuffer(0)


def test_batch_closes_at_max_batch_size_across_sessions() -> None:
    s = BatchScheduler(max_batch_size=3, max_queue_delay_s=10.0)
    for sid in "abcd":
        s.open(sid, 2)
    for sid in "abcd":
        s.push(sid, frame(sid + "1", t=0.0))
    assert s.due_in(0.0) == 0.0
    assert names(s.next_batch(0.0)) == ["a1", "b1", "c1"]
    assert s.pending == 1


def test_batch_waits_for_queue_delay_when_not_full() -> None:
    s = BatchScheduler(max_batch_size=4, max_queue_delay_s=0.010)
    s.open("a", 2)
    s.push("a", frame("a1", t=1.000))
    assert s.due_in(1.004) == pytest.approx(0.006)
    assert s.next_batch(1.004) == []
    assert names(s.next_batch(1.010)) == ["a1"]
    assert s.due_in(1.010) is None


def test_zero_delay_makes_a_batch_due_at_once() -> None:
    s = BatchScheduler(max_batch_size=8)
    s.open("a", 2)
    s.push("a", frame("a1", t=5.0))
    assert s.due_in(5.0) == 0.0


def test_round_robin_is_fair_and_keeps_each_sessions_order() -> None:
    s = BatchScheduler(max_batch_size=4)
    s.open("a", 8)
    s.open("b", 8)
    for i in range(4):
        s.push("a", frame(f"a{i}"))
    s.push("b", frame("b0"))
    # One frame per session per round: a0 b0, then a's next frames in order.
    assert names(s.next_batch(0.0)) == ["a0", "b0", "a1", "a2"]
    assert names(s.next_batch(0.0)) == ["a3"]


def test_sessions_served_last_go_to_the_back_of_the_rotation() -> None:
    s = BatchScheduler(max_batch_size=1)
    for sid in "abc":
        s.open(sid, 4)
        s.push(sid, frame(sid + "0"))
        s.push(sid, frame(sid + "1"))
    served = [names(s.next_batch(0.0))[0] for _ in range(6)]
    assert served == ["a0", "b0", "c0", "a1", "b1", "c1"]


def test_frames_with_different_batch_keys_never_share_a_batch() -> None:
    s = BatchScheduler(max_batch_size=8)
    for sid, key in (("a", 512), ("b", 256), ("c", 512)):
        s.open(sid, 2)
        s.push(sid, frame(sid, key=key))
    assert names(s.next_batch(0.0)) == ["a", "c"]
    assert names(s.next_batch(0.0)) == ["b"]


def test_requests_fill_free_slots_after_realtime_frames_by_priority() -> None:
    s = BatchScheduler(max_batch_size=3)
    s.open("a", 2)
    s.push_request(frame("low"), priority=2)
    s.push_request(frame("high"), priority=0)
    s.push("a", frame("rt"))
    assert names(s.next_batch(0.0)) == ["rt", "high", "low"]


def test_request_with_other_key_waits_for_its_own_batch() -> None:
    s = BatchScheduler(max_batch_size=4)
    s.open("a", 2)
    s.push("a", frame("rt", key=1))
    s.push_request(frame("job", key=2))
    assert names(s.next_batch(0.0)) == ["rt"]
    assert names(s.next_batch(0.0)) == ["job"]


def test_closing_a_session_returns_its_pending_frames() -> None:
    s = BatchScheduler(max_batch_size=4, max_queue_delay_s=1.0)
    s.open("a", 4)
    s.push("a", frame("a0"))
    s.push("a", frame("a1"))
    assert names(s.close("a")) == ["a0", "a1"]
    assert s.pending == 0
    assert s.due_in(0.0) is None


def test_pending_counts_a_drop_as_a_replacement() -> None:
    s = BatchScheduler(max_batch_size=8, max_queue_delay_s=1.0)
    s.open("a", 1)
    s.push("a", frame("a0"))
    dropped = s.push("a", frame("a1"))
    assert dropped is not None and dropped.inp == "a0"
    assert s.pending == 1


def test_drain_empties_every_lane() -> None:
    s = BatchScheduler(max_batch_size=8, max_queue_delay_s=1.0)
    s.open("a", 2)
    s.push("a", frame("a0"))
    s.push_request(frame("r0"))
    assert sorted(names(s.drain())) == ["a0", "r0"]
    assert s.pending == 0


def test_a_session_that_idled_keeps_its_place_in_the_rotation() -> None:
    s = BatchScheduler(max_batch_size=1)
    for sid in "abc":
        s.open(sid, 4)
    s.push("a", frame("a0"))
    assert names(s.next_batch(0.0)) == ["a0"]  # a was served: it goes behind b and c
    s.push("a", frame("a1"))
    s.push("c", frame("c0"))
    s.push("b", frame("b0"))
    assert [names(s.next_batch(0.0))[0] for _ in range(3)] == ["b0", "c0", "a1"]
    assert s.next_batch(0.0) == [] and s.due_in(0.0) is None


def test_closing_a_waiting_session_takes_it_out_of_batch_formation() -> None:
    s = BatchScheduler(max_batch_size=4)
    s.open("a", 2)
    s.open("b", 2)
    s.push("a", frame("a0"))
    s.push("b", frame("b0"))
    assert names(s.close("a")) == ["a0"]
    assert names(s.next_batch(0.0)) == ["b0"] and s.pending == 0


def test_batch_cost_follows_waiting_frames_not_open_sessions() -> None:
    import time
    import timeit

    def cost(open_sessions: int) -> float:
        s = BatchScheduler(max_batch_size=16)
        for i in range(open_sessions):
            s.open(i, 2)

        def one() -> None:
            s.push(0, frame("x", t=time.perf_counter()))
            s.next_batch(time.perf_counter())

        return min(timeit.repeat(one, number=300, repeat=5))

    # Scanning 2000 idle sessions per batch would cost hundreds of times one session.
    assert cost(2000) < 5 * cost(1)
