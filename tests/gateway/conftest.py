"""Gateway tests: each runs in its own working directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths land in a fresh folder per test (the default data dir is one too: the
    root conftest points the user data dir at one)."""
    monkeypatch.chdir(tmp_path)
