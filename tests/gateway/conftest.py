"""Gateway tests: each runs in its own working directory."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (the default ``./var`` data dir) land in a fresh folder per test."""
    monkeypatch.chdir(tmp_path)
