"""Take the README's screenshot: the page mid-use against the echo app.

``python -m tests.demo_web.screenshot docs/demo.png`` (``make screenshot``) starts
``framewire serve --builtin-apps echo``, draws a small landscape with the mouse, types a
prompt and captures the page while frames stream. Echo returns the sketch, so the output
pane shows the sketch as it came back over the socket, not a generated image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from playwright.sync_api import Page

from tests.conftest import serve_process
from tests.demo_web.browser import chromium, circle, draw, line, missing_prerequisites


def set_brush(page: Page, colour: str, size: int) -> None:
    page.evaluate(
        """([colour, size]) => {
          const input = document.querySelector('#colour');
          input.value = colour;
          input.dispatchEvent(new Event('input', { bubbles: true }));
          const slider = document.querySelector('#size');
          slider.value = String(size);
          slider.dispatchEvent(new Event('input', { bubbles: true }));
        }""",
        [colour, size],
    )


def wave(x0: float, x1: float, y: float, amp: float, n: int = 16) -> list[tuple[float, float]]:
    return [(x0 + (x1 - x0) * i / n, y + amp * (1 if i % 2 else -1)) for i in range(n + 1)]


def sketch_landscape(page: Page) -> None:
    set_brush(page, "#f5a524", 18)
    for r in (8, 22, 36):
        draw(page, circle(376, 128, r, n=24), step_ms=8)
    set_brush(page, "#8e4ec6", 9)
    draw(page, [(16, 330), (96, 230), (150, 290), (236, 196), (300, 270), (352, 236), (496, 330)], step_ms=14)
    set_brush(page, "#1f2a44", 12)
    draw(page, [(16, 360), (120, 262), (176, 318), (262, 222), (340, 316), (410, 266), (496, 352)], step_ms=14)
    set_brush(page, "#0091ff", 7)
    for y in (404, 436, 468):
        draw(page, wave(40, 472, y, 5), step_ms=8)
    set_brush(page, "#30a46c", 8)
    for x in range(36, 480, 44):
        draw(page, line(x, 500, x + 10, 470, n=4), step_ms=6)
    set_brush(page, "#111111", 4)
    for cx, cy in ((132, 112), (170, 92), (208, 126)):
        draw(page, [(cx - 14, cy - 6), (cx, cy + 4), (cx + 14, cy - 6)], step_ms=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="device pixel ratio")
    args = parser.parse_args(argv)
    problems = missing_prerequisites()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    with serve_process("--builtin-apps", "echo") as port, chromium() as browser:
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=args.scale)
        page.goto(f"http://127.0.0.1:{port}/?app=framewire/echo")
        page.wait_for_selector("#conn[data-state=live]")
        page.fill("#prompt", "")
        page.locator("#prompt").press_sequentially("a watercolor landscape, mountains at dusk, birds over a lake")
        sketch_landscape(page)
        page.wait_for_timeout(600)  # the last frames land and the panel refreshes
        page.mouse.move(0, 0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
