"""The page's camera mode in a real headless Chromium against a real ``framewire serve``.

Chromium's fake camera (``--use-fake-device-for-media-stream``, a moving pattern) stands in
for a webcam and ``--use-fake-ui-for-media-stream`` grants it; the page signals a WebRTC
session with ``POST …/start-session`` and plays the output video. The echo app returns
each camera frame, so the output must look like the camera.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from tests.conftest import serve_process
from tests.demo_web.browser import FAKE_CAMERA_ARGS, chromium, missing_prerequisites

TIMEOUT_MS = 20_000

#: Mean R, G, B of a playing <video>, drawn into a small canvas.
MEAN_RGB_JS = """(selector) => {
  const video = document.querySelector(selector);
  if (!video.videoWidth) return null;
  const canvas = document.createElement("canvas");
  canvas.width = 64;
  canvas.height = 48;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(video, 0, 0, 64, 48);
  const data = ctx.getImageData(0, 0, 64, 48).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < data.length; i += 4) for (let c = 0; c < 3; c++) sum[c] += data[i + c];
  return sum.map((v) => v / (data.length / 4));
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problems = missing_prerequisites()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    with chromium(tuple(FAKE_CAMERA_ARGS)) as b:
        yield b


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab; the test fails on an uncaught error or a Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            problems.append(message.text)

    page.on("console", on_console)
    try:
        yield page
        assert not problems, f"the page reported: {problems}"
    finally:
        context.close()


@pytest.fixture(scope="module")
def echo_server() -> Iterator[int]:
    with serve_process("--builtin-apps", "echo") as port:
        yield port


def frames(page: Page) -> int:
    return int(page.get_attribute("#output-pane", "data-frames") or 0)


def test_camera_mode_streams_the_webcam_through_the_app_and_back(page: Page, echo_server: int) -> None:
    response = page.goto(f"http://127.0.0.1:{echo_server}/?app=framewire/echo")
    assert response is not None
    granted = response.headers["permissions-policy"]
    assert "camera=(self)" in granted and "microphone=()" in granted  # the camera for this page only
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")  # the sketch socket first
    page.click("#mode button[data-mode=camera]")
    expect(page.locator("body")).to_have_attribute("data-mode", "camera")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator("#conn-detail")).to_have_text(re.compile(r"framewire/echo · video/(VP8|H264)"))
    expect(page.locator("#ws-url")).to_have_text("/framewire/echo/start-session")
    page.wait_for_function("() => Number(document.querySelector('#output-pane').dataset.frames) > 20")
    expect(page.locator("#sketch")).to_be_hidden()
    expect(page.locator("#camera-output")).to_be_visible()

    # The output video plays, at the camera's size, and (echo) looks like the camera.
    page.wait_for_function(
        "() => { const v = document.querySelector('#camera-output'); return v.videoWidth > 0 && v.currentTime > 0.3; }"
    )
    assert page.evaluate("() => document.querySelector('#camera-output').videoWidth") == page.evaluate(
        "() => document.querySelector('#camera').videoWidth"
    )
    camera, output = page.evaluate(MEAN_RGB_JS, "#camera"), page.evaluate(MEAN_RGB_JS, "#camera-output")
    assert camera is not None and output is not None
    assert max(abs(a - b) for a, b in zip(camera, output, strict=True)) < 40, (camera, output)

    # The live panel: round trip (after the first data channel ping), fps, received, dropped.
    page.wait_for_function("() => /^\\d/.test(document.querySelector('#stat-p50').textContent)")
    for stat in ("#stat-p50", "#stat-p95", "#stat-fps"):
        expect(page.locator(stat)).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
    assert int(page.inner_text("#stat-received")) > 5
    expect(page.locator("#stat-dropped")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#output-meta")).to_have_text(re.compile(r"pts \d+ · \d+ \u00d7 \d+ · batch \d+"))
    assert "server" in page.inner_text("#server-timings")

    # Back to sketching: the camera is released and the session ends.
    page.click("#mode button[data-mode=sketch]")
    expect(page.locator("body")).to_have_attribute("data-mode", "sketch")
    assert page.evaluate("() => document.querySelector('#camera').srcObject") is None
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    seen = frames(page)
    page.wait_for_function("n => Number(document.querySelector('#output-pane').dataset.frames) > n", arg=seen)
