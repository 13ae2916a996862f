"""The page's JavaScript modules under Node's own test runner (fakes for sockets and clocks)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.demo_web.browser import NODE_MSGPACK

HERE = Path(__file__).resolve().parent


def test_page_modules_pass_their_node_unit_tests() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make test` (installs nodejs and npm)", pytrace=False)
    if not NODE_MSGPACK.is_file():
        pytest.fail("demo_web/node_modules is missing: run `make test` (runs npm ci in demo_web/)", pytrace=False)
    files = sorted(str(p) for p in (HERE / "js").glob("*.test.mjs"))
    assert len(files) >= 5, files
    run = subprocess.run([node, "--test", *files], capture_output=True, text=True, timeout=120, check=False)
    summary = [line for line in run.stdout.splitlines() if line.startswith(("# pass", "# fail", "not ok"))]
    assert run.returncode == 0, "\n".join([*summary, run.stdout[-4000:], run.stderr[-2000:]])
    assert "# fail 0" in run.stdout, summary
