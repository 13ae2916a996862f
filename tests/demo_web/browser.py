"""Headless Chromium for the page's tests and the README screenshot.

Playwright drives Debian's ``chromium`` (``CHROMIUM`` below): Playwright's own browser
download is not used. ``make test`` installs the package when it is missing.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("FRAMEWIRE_TEST_CHROMIUM", "/usr/bin/chromium")
NODE_MSGPACK = ROOT / "demo_web" / "node_modules" / "@msgpack" / "msgpack" / "dist.esm" / "index.mjs"

# Without the networking switches Chromium keeps dialling Google's hosts, which a closed
# network refuses; --no-sandbox because tests may run as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing_prerequisites() -> list[str]:
    """What the page's browser tests need and this machine lacks, as fixes to apply."""
    problems = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        problems.append(f"no Chromium at {CHROMIUM}: run `make test` (installs Debian's chromium)")
    if not NODE_MSGPACK.is_file():
        problems.append("demo_web/node_modules is missing: run `make test` (runs npm ci in demo_web/)")
    return problems


#: Chromium's built-in camera (a moving test pattern) in place of a webcam, granted without asking.
FAKE_CAMERA_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


@contextlib.contextmanager
def chromium(extra_args: tuple[str, ...] = ()) -> Iterator[Browser]:
    """A headless Chromium with a fresh profile, closed on exit."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


def canvas_point(page: Page, selector: str, x: float, y: float) -> tuple[float, float]:
    """Page coordinates of canvas pixel (x, y) of the canvas at ``selector``."""
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not visible"
    size = page.eval_on_selector(selector, "c => [c.width, c.height]")
    return box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1]


def draw(page: Page, points: list[tuple[float, float]], *, selector: str = "#sketch", step_ms: float = 12) -> None:
    """Drag the mouse through canvas pixels ``points`` on the sketch."""
    first = canvas_point(page, selector, *points[0])
    page.mouse.move(*first)
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*canvas_point(page, selector, x, y), steps=2)
        page.wait_for_timeout(step_ms)
    page.mouse.up()


def line(x0: float, y0: float, x1: float, y1: float, n: int = 12) -> list[tuple[float, float]]:
    return [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n + 1)]


def circle(cx: float, cy: float, r: float, n: int = 28) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n)) for i in range(n + 1)]


PIXEL_JS = """([selector, x, y]) => {
  const canvas = document.querySelector(selector);
  const [r, g, b] = canvas.getContext("2d").getImageData(x, y, 1, 1).data;
  return Math.round((r + g + b) / 3);
}"""


def brightness(page: Page, selector: str, x: int, y: int) -> int:
    """Mean of R, G, B (0-255) of one pixel of a canvas."""
    return int(page.evaluate(PIXEL_JS, [selector, x, y]))
