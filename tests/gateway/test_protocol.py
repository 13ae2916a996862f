from __future__ import annotations

import json

import msgpack
import pytest
from pydantic import BaseModel, Field, ValidationError

from framewire.gateway.budget import StructureBudget
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import ErrorCode, ProtocolError

BUDGET = StructureBudget(max_items=1000)


def test_error_message_is_compact_json_text_as_fal_clients_expect() -> None:
    text = protocol.error_message(ErrorCode.TIMEOUT, protocol.TIMEOUT_REASON)
    assert text == '{"type":"x-fal-error","error":"TIMEOUT","reason":"no inputs, reconnect when needed!"}'


def test_timings_message_matches_the_sdk_shape() -> None:
    assert json.loads(protocol.timings_message(0.25)) == {"type": "x-fal-message", "action": "timings", "timing": 0.25}


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("1", 1), ("60", 60), ("2", 2)])
def test_max_buffering_accepts_1_to_60(raw: str | None, expected: int | None) -> None:
    assert protocol.parse_max_buffering(raw) == expected


@pytest.mark.parametrize("raw", ["0", "61", "-3", "two", "1.5", ""])
def test_max_buffering_refuses_other_values_with_a_reason(raw: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.parse_max_buffering(raw)
    assert err.value.code == ErrorCode.INVALID_QUERY
    assert "max_buffering" in err.value.reason and "60" in err.value.reason


def test_decode_frame_returns_the_input_map_with_bytes_kept() -> None:
    data = msgpack.packb({"prompt": "a cat", "image_url": b"\xff\xd8jpeg"}, use_bin_type=True)
    assert protocol.decode_frame(data, BUDGET) == {"prompt": "a cat", "image_url": b"\xff\xd8jpeg"}


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (b"\xc1", ErrorCode.INVALID_MSGPACK, "not valid msgpack"),
        (msgpack.packb({"a": 1}) + b"\x01", ErrorCode.INVALID_MSGPACK, "not valid msgpack"),
        (b"\x92\x01", ErrorCode.INVALID_MSGPACK, "not valid msgpack"),  # truncated array
        (msgpack.packb([1, 2]), ErrorCode.INVALID_FRAME, "got list"),
        (msgpack.packb("hello"), ErrorCode.INVALID_FRAME, "got str"),
    ],
)
def test_decode_frame_names_what_is_wrong(data: bytes, code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.decode_frame(data, BUDGET)
    assert err.value.code == code
    assert words in err.value.reason


@pytest.mark.parametrize(
    ("structure", "words"),
    [
        ([{}] * 1001, "more than 1000 items (--max-input-items)"),  # 1 byte each, ~64 bytes decoded
        ([[1] * 500, [2] * 500], "more than 1000 items"),
        ({str(i): None for i in range(1000)}, "more than 1000 items"),
        ([[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]], "deeper than 32 levels"),
    ],
)
def test_decode_frame_refuses_structures_over_the_budget_before_decoding(structure: object, words: str) -> None:
    data = msgpack.packb({"request_id": structure})
    with pytest.raises(ProtocolError) as err:
        protocol.decode_frame(data, BUDGET)
    assert err.value.code == ErrorCode.FRAME_TOO_LARGE
    assert words in err.value.reason


def test_decode_frame_keeps_what_fits_the_budget() -> None:
    fields = {
        "prompt": "x" * 70_000,
        "image_url": b"\xff" * 70_000,
        "list": [1.5, -(2**63), 2**64 - 1, None, True, [[{"k": "v"}]]] * 50,
        "ext": msgpack.ExtType(5, b"abc"),
    }
    assert protocol.decode_frame(msgpack.packb(fields), BUDGET) == fields


def test_a_timestamp_past_year_9999_is_invalid_msgpack_not_a_crash() -> None:
    timestamp96 = b"\xc7\x0c\xff" + (0).to_bytes(4, "big") + (2**62).to_bytes(8, "big")  # ext -1: nanoseconds, seconds
    data = b"\x81\xa2at" + timestamp96
    with pytest.raises(ProtocolError) as err:
        protocol.decode_frame(data, BUDGET)
    assert err.value.code == ErrorCode.INVALID_MSGPACK


@pytest.mark.parametrize("request_id", ["r1", "x" * 128, 7, -1, 2**64 - 1, None])
def test_request_id_is_a_short_string_or_an_integer(request_id: object) -> None:
    assert protocol.request_id_of({"request_id": request_id}) == request_id


@pytest.mark.parametrize("request_id", ["x" * 129, [1], {"a": 1}, b"id", 1.5, True])
def test_any_other_request_id_is_refused_without_being_echoed(request_id: object) -> None:
    with pytest.raises(ProtocolError) as err:
        protocol.request_id_of({"request_id": request_id})
    assert err.value.code == ErrorCode.INVALID_FRAME
    assert "request_id" not in err.value.extra
    assert "at most 128 characters" in err.value.reason


def test_text_frames_are_refused_and_json_is_recognised() -> None:
    assert "JSON text frame" in protocol.text_frame_error('{"prompt": "x"}').reason
    assert "got a text frame" in protocol.text_frame_error("hello").reason


class Model(BaseModel):
    prompt: str
    strength: float = Field(0.5, ge=0, le=1)


def test_validation_reason_and_detail_name_every_field() -> None:
    with pytest.raises(ValidationError) as err:
        Model.model_validate({"strength": 3})
    reason = protocol.validation_reason(err.value)
    assert "prompt: Field required" in reason and "strength: Input should be less than or equal to 1" in reason
    detail = protocol.validation_detail(err.value)
    assert {tuple(d["loc"]) for d in detail} == {("body", "prompt"), ("body", "strength")}


def test_encode_output_is_binary_msgpack_with_bin_type() -> None:
    data = protocol.encode_output({"image": b"\x00\x01", "n": 1})
    assert msgpack.unpackb(data, raw=False) == {"image": b"\x00\x01", "n": 1}
