from __future__ import annotations

import io

import msgpack
import pytest
from PIL import Image

from framewire.bench.payload import (
    FrameMaker,
    _pad_with_comments,
    jpeg_dimensions,
    make_jpeg,
    parse_override,
    session_inputs,
    workload_for,
)


@pytest.mark.parametrize(("size", "px"), [(48_000, 512), (8_000, 256), (150_000, 128), (48_004, 512)])
def test_make_jpeg_is_a_decodable_jpeg_of_exactly_the_size_asked(size: int, px: int) -> None:
    data = make_jpeg(size, px)
    assert len(data) == size
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "JPEG" and image.size == (px, px)
    assert jpeg_dimensions(data) == (px, px)


def test_make_jpeg_refuses_a_size_that_cannot_hold_the_image() -> None:
    with pytest.raises(ValueError, match="larger payload or a smaller image"):
        make_jpeg(400, 512)


@pytest.mark.parametrize("extra", [4, 5, 7, 65_537, 65_538, 65_539, 65_540, 200_003])
def test_comment_padding_adds_exact_bytes_and_keeps_the_image(extra: int) -> None:
    base = make_jpeg(6_000, 64)
    padded = _pad_with_comments(base, extra)
    assert len(padded) == len(base) + extra
    assert Image.open(io.BytesIO(padded)).tobytes() == Image.open(io.BytesIO(base)).tobytes()


def test_comment_padding_cannot_add_fewer_than_a_segment() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        _pad_with_comments(make_jpeg(6_000, 64), 3)


def test_jpeg_dimensions_rejects_other_bytes() -> None:
    with pytest.raises(ValueError, match="not a JPEG"):
        jpeg_dimensions(b"\x89PNG....")


def test_frame_maker_numbers_frames_and_keeps_the_input() -> None:
    make = FrameMaker({"image_url": b"\xff\xd8abc", "prompt": "p"})
    first, second = msgpack.unpackb(make(1)), msgpack.unpackb(make(2))
    assert first == {"image_url": b"\xff\xd8abc", "prompt": "p", "request_id": 1}
    assert second["request_id"] == 2
    with pytest.raises(ValueError, match="request_id"):
        FrameMaker({"request_id": 3})


def test_echo_workload_checks_the_image_came_back_whole() -> None:
    echo = workload_for("framewire/echo")
    assert echo.builtin == "echo" and echo.ws_path == "/framewire/echo/realtime"
    assert echo.check is not None
    assert echo.check({"image": b"abcd", "size_bytes": 4}) is None
    assert "size_bytes" in (echo.check({"image": b"abc", "size_bytes": 4}) or "")
    assert "no image" in (echo.check({"size_bytes": 4}) or "")


def test_diffusion_workload_sends_fal_image_fields_and_checks_jpeg_output() -> None:
    lcm = workload_for("framewire/lcm")
    jpeg = make_jpeg(20_000, 256)
    inputs = session_inputs(lcm, jpeg, 2, {"num_inference_steps": 4})
    assert inputs[0]["image_url"] is jpeg and inputs[0]["image_size"] == {"width": 256, "height": 256}
    assert inputs[0]["num_inference_steps"] == 4 and inputs[0]["sync_mode"] is True
    assert inputs[0]["seed"] != inputs[1]["seed"]
    assert lcm.check is not None
    assert lcm.check({"images": [{"content": jpeg}]}) is None
    assert lcm.check({"images": [{"content": b"png"}]}) is not None
    assert lcm.check({"images": []}) is not None


def test_unknown_apps_get_a_generic_workload_without_output_check() -> None:
    other = workload_for("me/shout")
    assert other.builtin is None and other.check is None
    assert set(other.make_input(b"\xff\xd8", 0)) == {"image_url", "prompt"}


def test_input_overrides_parse_json_values_and_fall_back_to_strings() -> None:
    assert parse_override("steps=4") == ("steps", 4)
    assert parse_override('image_size={"width": 256}') == ("image_size", {"width": 256})
    assert parse_override("prompt=a cat") == ("prompt", "a cat")
    with pytest.raises(ValueError, match="field=value"):
        parse_override("nothing")
