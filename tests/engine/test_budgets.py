"""Limits the diffusion apps enforce when an input arrives, before any work: compute per
input, pixels to decode per image and per batch. Torch-free: no model is loaded."""

from __future__ import annotations

import io
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from framewire.engine.api import AppError
from framewire.engine.apps.diffusion import PixelBudget
from framewire.engine.apps.lcm import LcmApp, LcmInput
from framewire.engine.apps.sdxl_turbo import SdxlTurboApp, TurboInput
from framewire.engine.config import DiffusionConfig
from framewire.engine.imaging import decode_image
from framewire.engine.media import decoded_pixels


def png_head(width: int, height: int) -> bytes:
    """The first bytes of a PNG of that size (all the size sniffing reads)."""
    return (
        b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", width, height) + b"\x08\x02\x00\x00\x00" * 4
    )


def jpeg_head(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHH", 17, 8, height, width) + b"\x03" + b"\x00" * 9
    return b"\xff\xd8" + sof + b"\x00" * 16


@pytest.fixture
def lcm() -> LcmApp:
    return LcmApp(DiffusionConfig(max_megapixel_steps=64, max_decode_megapixels=16))


def refusal(app: object, inp: object) -> AppError:
    with pytest.raises(AppError) as err:
        app.admit("", inp)  # type: ignore[attr-defined]
    assert err.value.code == "OVER_BUDGET"
    return err.value


def test_one_input_may_ask_for_at_most_the_compute_budget(lcm: LcmApp) -> None:
    heavy = LcmInput(prompt="x", image_size={"width": 2048, "height": 2048}, num_images=4, num_inference_steps=8)
    reason = refusal(lcm, heavy).reason
    assert "134.2 megapixel-steps" in reason and "the limit is 64 (--max-megapixel-steps)" in reason
    lcm.batch_key(
        "", LcmInput(prompt="x", image_size={"width": 1024, "height": 1024}, num_images=4, num_inference_steps=8)
    )


def test_guidance_counts_twice() -> None:
    turbo = SdxlTurboApp(DiffusionConfig(max_megapixel_steps=20))
    size = {"width": 1024, "height": 1024}
    turbo.admit("", TurboInput(prompt="x", image_size=size, num_inference_steps=4, num_images=4))  # 16.8
    assert (
        "x 2 for guidance"
        in refusal(
            turbo, TurboInput(prompt="x", image_size=size, num_inference_steps=4, num_images=4, guidance_scale=2.0)
        ).reason
    )


def test_an_image_too_costly_to_decode_is_refused_on_arrival(lcm: LcmApp) -> None:
    common = {"prompt": "x", "strength": 0.5, "image_size": {"width": 512, "height": 512}}
    err = refusal(lcm, LcmInput(**common, image_url=png_head(5000, 4000)))  # 20 MP, every pixel decoded
    assert err.field == "image_url" and "20.0 megapixels" in err.reason and "--max-decode-megapixels" in err.reason
    lcm.admit("", LcmInput(**common, image_url=jpeg_head(6000, 4000)))  # a JPEG decodes at 1/8: 0.4 MP
    lcm.admit("", LcmInput(**common, image_url=png_head(4000, 4000)))  # exactly 16 MP
    lcm.admit("", LcmInput(prompt="x", image_url=png_head(5000, 4000), strength=1.0))  # text-to-image: unused


def test_a_url_never_reaches_the_engine(lcm: LcmApp) -> None:
    with pytest.raises(AppError) as err:
        lcm.admit("", LcmInput(prompt="x", strength=0.5, image_url="http://example.com/a.png"))
    assert "fetched by the server" in err.value.reason


def test_jpegs_count_at_the_scale_they_decode_at() -> None:
    assert decoded_pixels(jpeg_head(8000, 5000), 8000, 5000, (512, 512)) == 1000 * 625
    assert decoded_pixels(jpeg_head(1000, 1000), 1000, 1000, (512, 512)) == 1000 * 1000  # under 2x: full scale
    assert decoded_pixels(png_head(8000, 5000), 8000, 5000, (512, 512)) == 40_000_000


def test_decoding_checks_the_budget_from_the_real_header_too() -> None:
    """Formats the sniffer does not know (here BMP) are checked when opened, still before decoding."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(buffer, format="BMP")
    with pytest.raises(AppError) as err:
        decode_image(buffer.getvalue(), 64, 64, max_decode_pixels=100_000)
    assert err.value.code == "OVER_BUDGET" and "400x400" in err.value.reason
    assert decode_image(buffer.getvalue(), 64, 64, max_decode_pixels=160_000).shape == (64, 64, 3)


def test_images_decode_within_the_budget_however_many_arrive_at_once() -> None:
    """Eight threads asking for 9 MP each, with 16 MP to spend: one large image decodes at a time."""
    budget = PixelBudget(16_000_000)
    lock = threading.Lock()
    spending = peak = 0

    def decode(pixels: int) -> None:
        nonlocal spending, peak
        held = 0 if pixels <= budget.small else min(pixels, budget.total)  # small ones hold nothing
        with budget.spend(pixels):
            with lock:
                spending += held
                peak = max(peak, spending)
            time.sleep(0.01)
            with lock:
                spending -= held

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode, [9_000_000] * 8 + [1_000_000] * 16 + [40_000_000]))  # the last: capped, alone
    assert 0 < peak <= 16_000_000


def test_an_image_smaller_than_its_target_costs_its_own_pixels() -> None:
    assert decoded_pixels(jpeg_head(80, 48), 80, 48, (64, 64)) == 80 * 48
