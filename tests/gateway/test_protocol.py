from __future__ import annotations

import json

import msgpack
import pytest
from pydantic import BaseModel, Field, ValidationError

from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import ErrorCode, ProtocolError


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
    assert protocol.decode_frame(data) == {"prompt": "a cat", "image_url": b"\xff\xd8jpeg"}


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
        protocol.decode_frame(data)
    assert err.value.code == code
    assert words in err.value.reason


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
