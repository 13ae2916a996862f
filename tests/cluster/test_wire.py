from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framewire.cluster import wire
from framewire.cluster.wire import Decoder, Encoder, Kind, LinkCorrupt, Violation, WorkerLoad, WorkerState
from framewire.engine.api import (
    AppError,
    AppRegistry,
    EngineError,
    EngineFault,
    EngineUnavailable,
    InputError,
    StartTimeout,
)
from tests.cluster.apps import OtherSleepApp, SleepApp, SleepIn


def test_messages_split_across_reads_come_out_whole() -> None:
    enc = Encoder()
    data = b"".join(enc.pack([Kind.FRAME, 1, n, {"image": bytes(1000)}]) for n in range(5))
    dec = Decoder()
    out = []
    for i in range(0, len(data), 7):  # worst case: 7 bytes per read
        out += dec.feed(data[i : i + 7])
    assert [m[2] for m in out] == [0, 1, 2, 3, 4]
    assert out[0][3]["image"] == bytes(1000)


def test_a_message_over_the_limit_ends_the_link() -> None:
    dec = Decoder(max_message_bytes=10_000)
    with pytest.raises(LinkCorrupt, match="limit"):
        dec.feed(Encoder().pack([Kind.FRAME, 1, 1, {"image": bytes(20_000)}]))


def test_bytes_that_are_not_a_message_end_the_link() -> None:
    with pytest.raises(LinkCorrupt):
        Decoder().feed(b"\xc1")  # never used in msgpack
    with pytest.raises(LinkCorrupt, match="not \\[type"):
        Decoder().feed(msgpack.packb({"a": 1}))
    with pytest.raises(LinkCorrupt):
        Decoder().feed(msgpack.packb(["FRAME", 1]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_link_corrupt(data: bytes) -> None:
    try:
        Decoder(max_message_bytes=1000).feed(data)
    except LinkCorrupt:
        pass


def test_field_count_names_the_message() -> None:
    wire.field_count([Kind.CLOSE, 1], 1)
    with pytest.raises(Violation, match="type 12 needs 1 fields, got 2"):
        wire.field_count([Kind.CLOSE, 1, 2], 1)


@pytest.mark.parametrize(
    "error",
    [
        AppError("bad", code="CUSTOM_CODE", field="prompt"),
        InputError("undecodable image", field="image_url"),
        EngineError("crashed"),
        EngineFault("device error"),
        EngineUnavailable("draining"),
    ],
)
def test_errors_cross_the_link_with_their_class_code_and_field(error: AppError) -> None:
    back = wire.decode_error(msgpack.unpackb(msgpack.packb(wire.encode_error(error))))
    assert type(back) is type(error)
    assert (back.code, back.reason, back.field, back.status) == (error.code, error.reason, error.field, error.status)


def test_a_custom_status_survives_and_a_start_timeout_stays_one() -> None:
    error = AppError("too big", code="PAYLOAD")
    error.status = 413
    assert wire.decode_error(wire.encode_error(error)).status == 413  # type: ignore[union-attr]
    back = wire.decode_error(wire.encode_error(StartTimeout(2.5)))
    assert isinstance(back, StartTimeout) and back.timeout_s == 2.5
    for bad in ("x", {"kind": "nope"}, {"kind": "app", "code": 1, "reason": "r"}, {"kind": "start_timeout"}):
        with pytest.raises(Violation):
            wire.decode_error(bad)


def test_the_handshake_proofs_need_the_same_secret_and_nonces() -> None:
    secret, other = b"a" * 32, b"b" * 32
    wn, en = wire.new_nonce(), wire.new_nonce()
    assert wire.proof_ok(wire.edge_proof(secret, wn, en), wire.edge_proof(secret, wn, en))
    assert not wire.proof_ok(wire.edge_proof(secret, wn, en), wire.edge_proof(other, wn, en))
    assert not wire.proof_ok(wire.edge_proof(secret, wn, en), wire.edge_proof(secret, wire.new_nonce(), en))
    # The two directions differ, so a worker cannot replay the edge's proof.
    assert wire.edge_proof(secret, wn, en) != wire.worker_proof(secret, wn, en)
    assert not wire.proof_ok(b"x", "not bytes")
    assert wire.nonce_ok(wn) and not wire.nonce_ok(b"short") and not wire.nonce_ok(None)


def test_short_secrets_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes; make one with"):
        wire.parse_secret("short")
    assert wire.parse_secret("  " + "k" * 40 + "\n") == b"k" * 40
    assert len(wire.new_secret()) >= 32


def test_apps_compare_equal_only_with_the_same_models() -> None:
    ours = AppRegistry([SleepApp()])
    same, problems = wire.compare_apps(ours, wire.describe_apps(AppRegistry([SleepApp()])))
    assert (same, problems) == (["test/sleep"], [])
    same, problems = wire.compare_apps(ours, wire.describe_apps(AppRegistry([OtherSleepApp()])))
    assert same == [] and "differ" in problems[0]
    same, problems = wire.compare_apps(AppRegistry([]), wire.describe_apps(ours))
    assert same == [] and "not loaded here" in problems[0]
    with pytest.raises(Violation):
        wire.compare_apps(ours, [{"no": "id"}])


def test_a_model_round_trips_through_dump_and_msgpack() -> None:
    inp = SleepIn(n=3, sleep_ms=1.5, origin="e1", image=b"\xff\xd8jpeg")
    back = SleepIn.model_validate(msgpack.unpackb(Encoder().pack([wire.dump(inp)]))[0])
    assert back == inp


def test_load_reports_round_trip_and_refuse_garbage() -> None:
    load = WorkerLoad(WorkerState.DRAINING, sessions=3, calls=1, edges=2)
    load.endpoints["test/sleep/realtime"] = wire.EndpointLoad(0.5, 4.0, 1.25, 10)
    back = WorkerLoad.from_wire(msgpack.unpackb(msgpack.packb(load.to_wire())))
    assert back == load
    for bad in (None, {"state": "bogus", "sessions": 1, "calls": 0, "edges": 0}, {"state": "ready"}):
        with pytest.raises(Violation):
            WorkerLoad.from_wire(bad)


def test_stream_options_and_result_details_cross_the_link() -> None:
    from framewire.engine.api import FrameResult

    assert wire.parse_stream_options(wire.stream_options(80.0, 0.05)) == (80.0, 0.05)
    assert wire.parse_stream_options({}) == (None, 0.0)
    for bad in ({"target_latency_ms": 0}, {"similarity_threshold": 0.9}, {"target_latency_ms": "x"}, []):
        with pytest.raises(Violation):
            wire.parse_stream_options(bad)
    result = FrameResult(None, None, 1.0, 2.0, 3, latency_ms=4.0, target_latency_ms=5.0, degraded=1, degradation="4→2")
    details = msgpack.unpackb(msgpack.packb(wire.result_details(result)))
    assert FrameResult(None, None, 1.0, 2.0, 3, **wire.parse_result_details(details)) == result
    assert wire.result_details(FrameResult(None, None, 1.0, 2.0, 3)) is None
    assert wire.parse_result_details(None) == {}
    for bad in ("x", {"latency_ms": "slow"}, {"degraded": 1.5}, {"skipped": 3}):
        with pytest.raises(Violation):
            wire.parse_result_details(bad)
