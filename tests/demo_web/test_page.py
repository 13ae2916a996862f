"""The demo page in a real headless Chromium against a real ``framewire serve`` process.

Each test loads the page as a user would, draws with real input events and reads what
the page shows. The echo app returns the sketch, so the output must mirror it.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.conftest import free_port, serve_process
from tests.demo_web.browser import (
    PIXEL_JS,
    brightness,
    canvas_point,
    chromium,
    circle,
    draw,
    line,
    missing_prerequisites,
)

ECHO = ("--builtin-apps", "echo")
KEY = "demo:s3cret-demo-key"
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problems = missing_prerequisites()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
    with chromium() as b:
        yield b


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 900}, has_touch=True)
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A fresh tab; the test fails if the page throws an uncaught error or breaks its CSP."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def echo_server() -> Iterator[int]:
    with serve_process(*ECHO) as port:
        yield port


def frames(page: Page) -> int:
    return int(page.get_attribute("#output-pane", "data-frames") or 0)


def wait_frames_above(page: Page, count: int) -> None:
    page.wait_for_function(
        "n => Number(document.querySelector('#output-pane').dataset.frames) > n", arg=count, timeout=TIMEOUT_MS
    )


def wait_pixel(page: Page, selector: str, x: int, y: int, *, dark: bool) -> None:
    """Wait until a canvas pixel is dark (< 80) or light (> 200)."""
    test = "v < 80" if dark else "v > 200"
    page.wait_for_function(
        f"args => {{ const v = ({PIXEL_JS})(args); return {test}; }}", arg=[selector, x, y], timeout=TIMEOUT_MS
    )


def open_page(page: Page, port: int, query: str = "app=framewire/echo") -> None:
    page.goto(f"http://127.0.0.1:{port}/?{query}")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def save_screenshot(page: Page, tmp_path: Path, record_property: Callable[[str, object], None], name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    record_property("screenshot", str(path))
    print(f"screenshot: {path}")


def test_output_mirrors_the_sketch_and_follows_its_changes(
    page: Page, echo_server: int, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    open_page(page, echo_server)
    wait_frames_above(page, 0)  # the blank canvas goes out as soon as the socket opens
    assert brightness(page, "#output", 256, 256) > 200

    draw(page, line(60, 256, 452, 256))
    wait_pixel(page, "#output", 256, 256, dark=True)
    assert brightness(page, "#output", 256, 100) > 200, "only the stroke is dark"

    draw(page, line(256, 60, 256, 200))
    wait_pixel(page, "#output", 256, 120, dark=True)

    page.click("#undo")
    wait_pixel(page, "#output", 256, 120, dark=False)
    assert brightness(page, "#output", 256, 256) < 80, "undo removed only the last stroke"

    page.click("#clear")
    wait_pixel(page, "#output", 256, 256, dark=False)
    expect(page.locator("#sketch-hint")).not_to_have_class(re.compile("hidden"))
    save_screenshot(page, tmp_path, record_property, "demo-echo.png")


def test_latency_panel_shows_numbers_from_the_stream(page: Page, echo_server: int) -> None:
    open_page(page, echo_server)
    draw(page, circle(256, 256, 120))
    wait_frames_above(page, 3)
    page.wait_for_timeout(300)  # one panel refresh
    for stat in ("#stat-p50", "#stat-p95", "#stat-fps"):
        expect(page.locator(stat)).to_have_text(re.compile(r"^\d+(\.\d+)?$"))
    sent = int(page.inner_text("#stat-sent"))
    received = int(page.inner_text("#stat-received"))
    assert sent >= received >= 3
    expect(page.locator("#stat-window")).to_have_text(re.compile(r"last \d+ frames"))
    timings = page.inner_text("#server-timings")
    assert "queue" in timings and "inference" in timings and "batch" in timings
    expect(page.locator("#output-latency")).to_have_text(re.compile(r"^\d+(\.\d+)? ms$"))


def test_typing_a_prompt_streams_throttled_frames_without_drawing(page: Page, echo_server: int) -> None:
    open_page(page, echo_server)
    wait_frames_above(page, 0)
    page.fill("#prompt", "")
    page.wait_for_timeout(300)
    sent_before = int(page.inner_text("#stat-sent"))
    text = "a lighthouse at night, stormy sea"
    started = time.monotonic()
    page.locator("#prompt").press_sequentially(text, delay=25)
    page.wait_for_timeout(400)  # the last keystroke's frame, then a panel refresh
    elapsed_ms = (time.monotonic() - started) * 1000
    sent = int(page.inner_text("#stat-sent")) - sent_before
    interval_ms = int(page.input_value("#interval"))
    assert sent >= 2, "typing alone streams frames"
    assert sent <= elapsed_ms / interval_ms + 2, f"{sent} frames in {elapsed_ms:.0f} ms: not throttled"
    assert sent < len(text), "keystrokes inside one interval merge into one frame"
    expect(page.locator("#stat-received")).to_have_text(str(int(page.inner_text("#stat-sent"))))


def test_pen_and_touch_input_draw_like_the_mouse(page: Page, context: BrowserContext, echo_server: int) -> None:
    open_page(page, echo_server)
    cdp = context.new_cdp_session(page)
    x0, y = canvas_point(page, "#sketch", 80, 150)
    x1, _ = canvas_point(page, "#sketch", 430, 150)
    for kind, event in (("mousePressed", x0), *(("mouseMoved", x0 + (x1 - x0) * i / 10) for i in range(1, 11))):
        cdp.send(
            "Input.dispatchMouseEvent",
            {
                "type": kind,
                "x": event,
                "y": y,
                "button": "left",
                "buttons": 1,
                "clickCount": 1,
                "pointerType": "pen",
                "force": 0.8,
            },
        )
    cdp.send(
        "Input.dispatchMouseEvent",
        {"type": "mouseReleased", "x": x1, "y": y, "button": "left", "clickCount": 1, "pointerType": "pen"},
    )
    wait_pixel(page, "#output", 256, 150, dark=True)

    tx0, ty = canvas_point(page, "#sketch", 80, 380)
    tx1, _ = canvas_point(page, "#sketch", 430, 380)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": tx0, "y": ty}]})
    for i in range(1, 11):
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchMove", "touchPoints": [{"x": tx0 + (tx1 - tx0) * i / 10, "y": ty}]},
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    wait_pixel(page, "#output", 256, 380, dark=True)


def test_an_app_the_server_lacks_is_reported_in_words(page: Page, echo_server: int) -> None:
    page.goto(f"http://127.0.0.1:{echo_server}/?app=framewire/lcm")
    expect(page.locator("#conn")).to_have_attribute("data-state", "stopped")
    overlay = page.locator("#output-overlay")
    expect(overlay).to_contain_text("framewire/lcm is not loaded on this server")
    expect(overlay).to_contain_text("--builtin-apps lcm")
    expect(page.locator('.app[data-app="framewire/lcm"]')).to_have_class(re.compile("unavailable"))
    page.click('.app[data-app="framewire/echo"]')
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    wait_frames_above(page, 0)


def test_the_default_app_gives_way_when_the_server_lacks_it(page: Page, echo_server: int) -> None:
    page.goto(f"http://127.0.0.1:{echo_server}/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    expect(page.locator(".app.active")).to_have_attribute("data-app", "framewire/echo")
    expect(page.locator("#log")).to_contain_text("not loaded on this server; showing")


def test_with_auth_on_the_page_asks_for_a_key_and_connects_with_a_token(page: Page) -> None:
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    with serve_process(*ECHO, "--auth", "--api-key", KEY) as port:
        page.goto(f"http://127.0.0.1:{port}/?app=framewire/echo")
        expect(page.locator("#conn")).to_have_attribute("data-state", "stopped")
        expect(page.locator("#output-overlay")).to_contain_text("requires an API key")
        expect(page.locator("#key-panel")).to_be_visible()

        page.fill("#key-input", "demo:wrong")
        page.click("#key-form button[type=submit]")
        expect(page.locator("#conn-detail")).to_have_text("API key needed")
        expect(page.locator("#log")).to_contain_text("invalid API key")

        page.fill("#key-input", KEY)
        page.click("#key-form button[type=submit]")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        draw(page, line(60, 256, 452, 256))
        wait_pixel(page, "#output", 256, 256, dark=True)
    assert sockets[0].endswith("/framewire/echo/realtime?max_buffering=2"), "first try without a token"
    assert re.search(r"[?&]fal_jwt_token=[\w-]+\.[\w-]+\.[\w-]+$", sockets[-1]), sockets[-1]
    assert KEY.split(":")[1] not in "".join(sockets), "the key itself never goes on the socket URL"


def test_the_page_reconnects_after_the_server_restarts(page: Page) -> None:
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    port = free_port()
    # Auth on with a fresh random token secret per process: the token cached before the
    # restart is refused after it, so this also covers fetching a new one.
    with serve_process(*ECHO, "--auth", "--api-key", KEY, port=port):
        page.goto(f"http://127.0.0.1:{port}/?app=framewire/echo")
        # Refused without a key first: a key stored before this page connects would get a token of its own.
        expect(page.locator("#conn")).to_have_attribute("data-state", "stopped")
        page.evaluate("key => sessionStorage.setItem('framewire.apiKey', key)", KEY)
        page.reload()
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        draw(page, line(60, 256, 452, 256))
        wait_pixel(page, "#output", 256, 256, dark=True)
    expect(page.locator("#conn")).to_have_attribute("data-state", "retrying")
    expect(page.locator("#output-overlay")).to_contain_text("reconnecting")

    with serve_process(*ECHO, "--auth", "--api-key", KEY, port=port):
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#log")).to_contain_text("reconnected to framewire/echo")
        expect(page.locator("#stat-reconnects")).to_have_text("1")
        expect(page.locator("#live-state")).to_have_text("live · framewire/echo")
        before = frames(page)
        draw(page, line(256, 60, 256, 200))
        wait_pixel(page, "#output", 256, 120, dark=True)
        assert frames(page) > before
    tokens = [m.group(1) for url in sockets if (m := re.search(r"fal_jwt_token=([^&]+)", url))]
    assert len(tokens) >= 3, sockets
    assert tokens[0] == tokens[1] != tokens[-1], "the old token was tried, refused, and replaced"


def test_a_slow_diffusion_app_gets_every_field_and_bounded_frames_in_flight(page: Page) -> None:
    with serve_process(*ECHO, "--app", "tests.demo_web.fake_diffusion:FakeDiffusionApp") as port:
        open_page(page, port, "app=framewire/lcm")
        wait_frames_above(page, 0)
        expect(page.locator("#output-meta")).to_contain_text("seed 42")
        in_flight = []
        for i in range(8):  # keep drawing for about 2 s against a 250 ms app
            draw(page, line(40 + i * 50, 60, 60 + i * 50, 460, n=6), step_ms=20)
            text = page.inner_text("#stat-inflight")
            in_flight.append(int(text.split("/")[0]))
            sent = int(page.inner_text("#stat-sent"))
            received = int(page.inner_text("#stat-received"))
            # sent is read first: a panel refresh in between can only shrink the difference.
            assert sent - received <= 2, f"sent {sent}, received {received}: too many frames in flight"
        assert max(in_flight) <= 2
        wait_pixel(page, "#output", 40 + 7 * 50 + 10, 260, dark=True)  # the last stroke came back

        page.evaluate(
            "() => { const s = document.querySelector('#seed'); s.value = '1234';"
            " s.dispatchEvent(new Event('input', { bubbles: true })); }"
        )
        expect(page.locator("#output-meta")).to_contain_text("seed 1234")
        expect(page.locator("#server-timings")).to_contain_text("denoise")
        expect(page.locator("#log")).not_to_contain_text("VALIDATION_ERROR")


def test_the_page_has_a_content_security_policy_and_refuses_to_be_framed(page: Page, echo_server: int) -> None:
    response = page.goto(f"http://127.0.0.1:{echo_server}/?app=framewire/echo")
    assert response is not None
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in headers["content-security-policy"]  # the import map, by its hash
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")  # the policy lets the page work
    framed = page.context.new_page()
    blocked: list[str] = []
    framed.on("console", lambda m: blocked.append(m.text) if "frame-ancestors" in m.text else None)
    framed.set_content(f'<iframe src="http://127.0.0.1:{echo_server}/" width="400" height="300"></iframe>')
    framed.wait_for_timeout(1000)
    inner = framed.frames[1] if len(framed.frames) > 1 else None
    assert inner is None or inner.query_selector("#conn") is None
    assert blocked, "the browser did not report the refused framing"


def test_random_weights_are_explained_on_the_page_and_the_first_look_is_not_noise(
    page: Page, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """No network and nothing cached: the diffusion apps fall back to random weights, /models
    says so, the page puts a banner naming the fix on top and opens on echo (a mirror)."""
    env = {k: v for k, v in os.environ.items() if k != "FRAMEWIRE_WEIGHTS"}
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens: the Hub cannot be reached
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=unreachable, HF_HUB_CACHE=str(tmp_path / "hub"))
    with serve_process("--builtin-apps", "echo,lcm,sdxl-turbo", env=env) as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models") as response:
            models = {m["id"]: m for m in json.load(response)["models"]}
        assert models["framewire/lcm"]["weights"] == "random" and models["framewire/sdxl-turbo"]["weights"] == "random"
        assert unreachable in models["framewire/lcm"]["weights_info"]["reason"]
        assert "weights" not in models["framewire/echo"]

        page.goto(f"http://127.0.0.1:{port}/")
        banner = page.locator("#weights-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("framewire/lcm and framewire/sdxl-turbo run on tiny random weights")
        expect(banner).to_contain_text("SimianLuo/LCM_Dreamshaper_v7 could not be had")
        expect(banner.locator("code", has_text="framewire pull lcm")).to_be_visible()
        expect(banner.locator("code", has_text="framewire pull sdxl-turbo")).to_be_visible()
        expect(page.locator(".app.active")).to_have_attribute("data-app", "framewire/echo")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator("#log")).to_contain_text("showing framewire/echo first")
        expect(page.locator('.app[data-app="framewire/lcm"]')).to_have_class(re.compile("random"))
        save_screenshot(page, tmp_path, record_property, "demo-random-weights.png")

        page.click('.app[data-app="framewire/lcm"]')
        expect(page.locator("#output-title")).to_have_text("Output · random weights (noise)")
        # It still runs (the noise is explained, not hidden): a 512 px frame on a busy CPU can be slow.
        page.wait_for_function(
            "() => Number(document.querySelector('#output-pane').dataset.frames) > 0", timeout=90_000
        )


def test_with_real_weights_there_is_no_banner_and_the_diffusion_app_comes_first(page: Page, tmp_path: Path) -> None:
    from tests.engine import hub_layouts

    folder = hub_layouts.write_repo("SimianLuo/LCM_Dreamshaper_v7", tmp_path / "lcm")
    with serve_process("--builtin-apps", "echo,lcm", "--weights", f"lcm={folder}", "--warmup-sizes", "512x512") as port:
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        expect(page.locator(".app.active")).to_have_attribute("data-app", "framewire/lcm")
        expect(page.locator("#output-title")).to_have_text("Output")
        expect(page.locator("#weights-banner")).to_be_hidden()
        expect(page.locator('.app[data-app="framewire/lcm"]')).not_to_have_class(re.compile("random"))
